"""Pages for tenancy: tokens and members (owners and admins), declared dimensions (every member reads
them; owners and admins who see every team change them). The teams pages show spend against budgets,
so they live with the budgets' pages (billing.views)."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.tokens import default_token_generator
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import F
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from .access import AccessScope
from .forms import LAST_OWNER, DimensionForm, MemberAddForm, MemberEditForm, TokenForm, edit_refusal, is_last_owner
from .models import ApiToken, DeclaredDimension, Membership, Role
from .services import dimension_declare, dimension_remove, member_add, token_create, token_revoke
from .web import org_page

ROLE_ORDER = {Role.OWNER: 0, Role.ADMIN: 1, Role.MEMBER: 2, Role.VIEWER: 3}


# --- tokens -------------------------------------------------------------------------------------


@org_page(manage=True)
@require_http_methods(["GET", "POST"])
def tokens(request, scope):
    form = TokenForm(scope, request.POST or None)
    created = None
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        token, raw = token_create(
            organization=scope.organization, team=data["team"], can_ingest=data["can_ingest"],
            can_read=data["can_read"], name=data["name"], created_by=request.user,
        )
        created = {"token": token, "secret": raw}
        form = TokenForm(scope)
    token_list = (
        scope.filter(ApiToken.objects.select_related("team", "created_by"))
        .order_by(F("revoked_at").desc(nulls_first=True), "-created_at", "-id")
    )
    context = {
        "scope": scope, "nav": "tokens", "form": form, "tokens": list(token_list), "created": created,
        "api_base": request.build_absolute_uri("/api/v1/").rstrip("/"),
    }
    response = render(request, "teams/tokens.html", context)
    if created:
        # The secret is in this response only: it is not stored, and no cache may keep it.
        response["Cache-Control"] = "no-store"
    return response


@org_page(manage=True)
@require_POST
def token_revoke_view(request, scope, token_id: int):
    token = get_object_or_404(scope.filter(ApiToken.objects), pk=token_id)
    if token.revoked_at is None:
        token_revoke(token=token)
        messages.success(request, f"Token {token.display_prefix}… ({token.name or 'unnamed'}) revoked.")
    else:
        messages.info(request, f"Token {token.display_prefix}… was already revoked.")
    return redirect("tokens", org_slug=scope.organization.slug)


# --- members ------------------------------------------------------------------------------------


def _memberships(scope: AccessScope):
    return Membership.objects.filter(organization=scope.organization)


def _invite(request, membership: Membership) -> bool:
    """Email a new member a link to choose their first password. False when sending failed."""
    user = membership.user
    context = {
        "organization": membership.organization,
        "inviter": request.user,
        "user": user,
        "set_password_url": request.build_absolute_uri(
            reverse(
                "password_reset_confirm",
                kwargs={"uidb64": urlsafe_base64_encode(force_bytes(user.pk)),
                        "token": default_token_generator.make_token(user)},
            )
        ),
        "login_url": request.build_absolute_uri(reverse("login")),
        "expiry_days": max(1, settings.PASSWORD_RESET_TIMEOUT // 86400),
    }
    subject = render_to_string("registration/invitation_subject.txt", context).strip()
    body = render_to_string("registration/invitation_email.txt", context)
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [user.email])
    except Exception:  # the member is added either way; the page says to use password reset
        return False
    return True


@org_page(manage=True)
@require_http_methods(["GET", "POST"])
def members(request, scope):
    form = MemberAddForm(scope, request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        is_new_user = not get_user_model().objects.filter(email__iexact=data["email"]).exists()
        membership = member_add(
            organization=scope.organization, email=data["email"], role=data["role"], teams=list(data["teams"])
        )
        if is_new_user:
            sent = _invite(request, membership)
            note = (
                "We emailed them a password reset link to choose one" if sent
                else "The email with a link to choose one could not be sent"
            )
            messages.success(
                request,
                f"Added {data['email']} as {membership.get_role_display().lower()}. They have no password yet. "
                f"{note}; if it expires, send a new one from their page in this list.",
            )
        else:
            messages.success(
                request, f"Added {data['email']} as {membership.get_role_display().lower()}; "
                "they log in with their existing password.",
            )
        return redirect("members", org_slug=scope.organization.slug)
    rows = sorted(
        _memberships(scope).select_related("user").prefetch_related("teams"),
        key=lambda m: (ROLE_ORDER.get(m.role, 9), m.user.email.lower()),
    )
    members_list = [{"membership": m, "refusal": edit_refusal(scope, m)} for m in rows]
    context = {
        "scope": scope, "nav": "members", "form": form, "members": members_list,
        "owner_count": sum(1 for m in rows if m.role == Role.OWNER),
    }
    return render(request, "teams/members.html", context)


def _editable(scope: AccessScope, member_id: int) -> Membership:
    membership = get_object_or_404(
        _memberships(scope).select_related("user").prefetch_related("teams"), pk=member_id
    )
    refusal = edit_refusal(scope, membership)
    if refusal:
        raise PermissionDenied(refusal)
    return membership


@org_page(manage=True)
@require_http_methods(["GET", "POST"])
def member_edit(request, scope, member_id: int):
    membership = _editable(scope, member_id)
    form = MemberEditForm(scope, membership, request.POST or None)
    if request.method == "POST":
        with transaction.atomic():
            # Lock the owners so two managers demoting the last two owners at once cannot both succeed.
            list(Membership.objects.select_for_update().filter(organization=scope.organization, role=Role.OWNER))
            if form.is_valid():
                membership.role = form.cleaned_data["role"]
                membership.save(update_fields=["role"])
                membership.teams.set(form.cleaned_data["teams"])
                messages.success(request, f"Saved {membership.user.email}: {membership.get_role_display().lower()}.")
                return redirect("members", org_slug=scope.organization.slug)
    context = {
        "scope": scope, "nav": "members", "form": form, "membership": membership,
        "last_owner": is_last_owner(membership),
    }
    return render(request, "teams/member_edit.html", context)


@org_page(manage=True)
@require_POST
def member_remove(request, scope, member_id: int):
    with transaction.atomic():
        list(Membership.objects.select_for_update().filter(organization=scope.organization, role=Role.OWNER))
        membership = _editable(scope, member_id)
        if membership.role == Role.OWNER and not _memberships(scope).filter(role=Role.OWNER).exclude(
            pk=membership.pk
        ).exists():
            messages.error(request, LAST_OWNER)
            return redirect("members", org_slug=scope.organization.slug)
        email = membership.user.email
        membership.delete()
    if membership.user_id == request.user.pk:
        messages.success(request, f"You left {scope.organization.name}.")
        return redirect("home")
    messages.success(request, f"Removed {email} from {scope.organization.name}.")
    return redirect("members", org_slug=scope.organization.slug)


@org_page(manage=True)
@require_POST
def member_invite(request, scope, member_id: int):
    membership = _editable(scope, member_id)
    if membership.user.has_usable_password():
        messages.info(request, f"{membership.user.email} already has a password.")
    elif _invite(request, membership):
        messages.success(request, f"Sent {membership.user.email} a new link to choose a password.")
    else:
        messages.error(request, "The invitation email could not be sent; check the email settings.")
    return redirect("members", org_slug=scope.organization.slug)


# --- declared dimensions ------------------------------------------------------------------------


def _dimensions_page(request, scope: AccessScope, form: DimensionForm):
    context = {
        "scope": scope, "nav": "dimensions", "form": form, "limit": DeclaredDimension.LIMIT,
        "dimensions": list(DeclaredDimension.objects.filter(organization=scope.organization).order_by("key")),
        "can_edit": scope.manages_whole_organization,
    }
    return render(request, "teams/dimensions.html", context)


def _refuse_unless_whole_organization_manager(scope: AccessScope) -> None:
    # Declared dimensions are an organization-wide setting: a team-limited admin reads them only.
    if not scope.manages_whole_organization:
        raise PermissionDenied("Only owners and admins who see every team change the declared dimensions.")


@org_page
@require_safe
def dimensions(request, scope: AccessScope):
    return _dimensions_page(request, scope, DimensionForm())


@org_page
@require_POST
def dimension_add(request, scope: AccessScope):
    _refuse_unless_whole_organization_manager(scope)
    form = DimensionForm(request.POST)
    if form.is_valid():
        key = form.cleaned_data["key"]
        try:
            dimension_declare(organization=scope.organization, key=key)
        except ValidationError as error:
            form.refuse(error)
        else:
            messages.success(request, f"Declared metadata.{key}: reports can group by it.")
            return redirect("dimensions", org_slug=scope.organization.slug)
    return _dimensions_page(request, scope, form)


@org_page
@require_POST
def dimension_remove_view(request, scope: AccessScope, key: str):
    _refuse_unless_whole_organization_manager(scope)
    if not dimension_remove(organization=scope.organization, key=key):
        raise Http404("No such dimension.")
    messages.success(request, f"Removed metadata.{key} from the declared dimensions.")
    return redirect("dimensions", org_slug=scope.organization.slug)
