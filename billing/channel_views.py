"""The Notifications page: an organization's channels, adding, pausing, deleting and testing them,
and their delivery history. Owners and admins who see the whole organization only: a channel
receives every team's alerts unless limited, so a manager of some teams may not set one up."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from teams.access import AccessScope
from teams.web import org_page

from .channel_forms import ChannelForm
from .models import NotificationChannel, NotificationDelivery
from .notifications import channel_create, channel_test

HISTORY_ROWS = 100


def _require_whole_organization(scope: AccessScope) -> None:
    if not scope.manages_whole_organization:
        raise PermissionDenied("Only owners and admins of the whole organization manage notifications.")


def _channels(scope: AccessScope):
    return NotificationChannel.objects.filter(organization=scope.organization)


@org_page(manage=True)
@require_http_methods(["GET", "POST"])
def notifications(request, scope):
    _require_whole_organization(scope)
    form = ChannelForm(scope, request.POST or None)
    created = None
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            channel, secret = channel_create(
                organization=scope.organization, kind=data["kind"], url=data["url"], emails=data["emails"],
                teams=data["teams"], event_types=data["event_types"], name=data["name"],
            )  # fmt: skip
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                form.add_error(field if field in form.fields else None, errors)
        else:
            created = {"channel": channel, "secret": secret}
            form = ChannelForm(scope)
    channels = list(_channels(scope).prefetch_related("teams").order_by("created_at", "id"))
    history = list(
        NotificationDelivery.objects.filter(organization=scope.organization)
        .select_related("channel")
        .order_by("-created_at", "-id")[:HISTORY_ROWS]
    )
    context = {
        "scope": scope,
        "nav": "notifications",
        "form": form,
        "channels": channels,
        "history": history,
        "created": created,
        "retry_hours": settings.NOTIFICATION_RETRY_HOURS,
    }
    response = render(request, "billing/notifications.html", context, status=400 if form.errors else 200)
    if created:
        # The signing secret is in this response only: no cache may keep it.
        response["Cache-Control"] = "no-store"
    return response


@org_page(manage=True)
@require_POST
def channel_toggle(request, scope, channel_id: int):
    _require_whole_organization(scope)
    channel = get_object_or_404(_channels(scope), pk=channel_id)
    channel.is_active = not channel.is_active
    channel.save(update_fields=["is_active"])
    messages.success(request, f"“{channel.label}” {'enabled' if channel.is_active else 'paused'}.")
    return redirect("notifications", org_slug=scope.organization.slug)


@org_page(manage=True)
@require_POST
def channel_delete(request, scope, channel_id: int):
    _require_whole_organization(scope)
    channel = get_object_or_404(_channels(scope), pk=channel_id)
    label = channel.label
    channel.delete()
    messages.success(request, f"“{label}” deleted, with its delivery history.")
    return redirect("notifications", org_slug=scope.organization.slug)


@org_page(manage=True)
@require_POST
def channel_send_test(request, scope, channel_id: int):
    _require_whole_organization(scope)
    channel = get_object_or_404(_channels(scope), pk=channel_id)
    if not channel.is_active:
        messages.warning(request, f"“{channel.label}” is paused: enable it to send a test.")
        return redirect("notifications", org_slug=scope.organization.slug)
    delivery = channel_test(channel)
    if delivery.status == NotificationDelivery.Status.DELIVERED:
        messages.success(request, f"Test delivered to “{channel.label}”.")
    else:
        messages.error(request, f"Test to “{channel.label}” failed: {delivery.last_error}")
    return redirect("notifications", org_slug=scope.organization.slug)
