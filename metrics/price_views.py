"""The Prices page: the platform's prices beside what the organization pays, its price list
(overrides and discounts) and the repricing runs its changes caused.

Every member of the organization reads it; owners and admins who see every team add, change, end
and delete entries (a price list changes every team's figures); outsiders get 404 from `org_page`.
Writes go through `billing.pricing.price_lists`, which reprices the organization's events in the
window a change covers, in the background. Times are read and shown in the organization's zone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from functools import wraps
from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.http import urlencode
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from billing.models.prices import OrganizationDiscount, OrganizationPrice
from billing.pricing import price_lists
from billing.pricing.selectors import (
    current_platform_prices,
    effective_price,
    organization_discounts,
    organization_overrides,
    price_list_book,
)
from teams.access import AccessScope
from teams.web import org_page

from .price_forms import DiscountForm, EndForm, OverrideForm, PriceSearchForm
from .selectors import reprice_runs

PAGE_SIZE = 25
RECENT_RUNS = 10
KINDS: dict[str, Any] = {
    "override": (OrganizationPrice, OverrideForm, price_lists.override_create, price_lists.override_change,
                 price_lists.override_end, price_lists.override_delete),
    "discount": (OrganizationDiscount, DiscountForm, price_lists.discount_create, price_lists.discount_change,
                 price_lists.discount_end, price_lists.discount_delete),
}  # fmt: skip


def price_list_manager(view):
    """Owners and admins who see every team; the rest of the organization gets 403 (they may read the
    list, not change it), outsiders 404 (from org_page). Times in the organization's zone."""

    @org_page
    @wraps(view)
    def wrapper(request, scope: AccessScope, kind: str, *args, **kwargs):
        if not scope.manages_whole_organization:
            raise PermissionDenied("Only owners and admins who see every team change the price list.")
        with timezone.override(scope.organization.time_zone):
            return view(request, scope, kind, *args, **kwargs)

    return wrapper


def _extras(extra: dict) -> str:
    """`extra_prices` in a few words: "input tiers from 200k; cache_write_1h 6"."""
    parts = []
    for key, value in sorted(extra.items()):
        name = key.removesuffix("_mtok")
        if isinstance(value, dict):
            starts = ", ".join(f"{int(tier['start']) // 1000}k" for tier in value.get("tiers", []))
            parts.append(f"{name} tiers from {starts}")
        else:
            parts.append(f"{name} {value}")
    return "; ".join(parts)


@org_page
@require_safe
def prices(request, scope: AccessScope):
    organization = scope.organization
    search = PriceSearchForm(request.GET)
    query, page_number = "", 1
    if search.is_valid():
        query = search.cleaned_data["q"].strip()
        page_number = search.cleaned_data["page"] or 1
    now = datetime.now(UTC)
    overrides = list(organization_overrides(organization_id=organization.pk))
    discounts = list(organization_discounts(organization_id=organization.pk))
    book = price_list_book(organization_id=organization.pk, overrides=overrides, discounts=discounts)
    page = Paginator(current_platform_prices(when=now, search=query), PAGE_SIZE).get_page(page_number)
    rows = []
    for row in page.object_list:
        effective = effective_price(book, organization_id=organization.pk, row=row, when=now)
        rows.append(
            {"price": row, "extras": _extras(row.extra_prices or {}), "effective": effective, "why": _why(effective)}
        )

    def page_query(number: int) -> str:
        params: dict[str, str | int] = {"q": query} if query else {}
        return urlencode({**params, "page": number})

    context = {
        "scope": scope,
        "nav": "prices",
        "search": search,
        "query": query,
        "rows": rows,
        "page": page,
        "previous_query": page_query(page.previous_page_number()) if page.has_previous() else None,
        "next_query": page_query(page.next_page_number()) if page.has_next() else None,
        "overrides": [(entry, _state(entry, now)) for entry in overrides],
        "discounts": [(entry, _state(entry, now)) for entry in discounts],
        "runs": reprice_runs(scope=scope, limit=RECENT_RUNS),
        "sees_runs": scope.sees_whole_organization,
        "can_edit": scope.manages_whole_organization,
    }
    return render(request, "metrics/prices.html", context)


def _why(effective) -> str:
    if effective.percent is None:
        return effective.source
    amount = effective.percent.normalize()
    return f"{amount:f} % off" if amount >= 0 else f"{-amount:f} % markup"


def _state(entry, now: datetime) -> str:
    if entry.effective_from > now:
        return "scheduled"
    if entry.effective_until is not None and entry.effective_until <= now:
        return "ended"
    return "in force"


def _entry(scope: AccessScope, kind: str, entry_id: int):
    return get_object_or_404(KINDS[kind][0].objects.filter(organization=scope.organization), pk=entry_id)


def _form_page(request, scope, kind: str, form, *, entry=None, action: str = "edit"):
    context = {"scope": scope, "nav": "prices", "kind": kind, "form": form, "entry": entry, "action": action,
               "time_zone": scope.organization.time_zone}  # fmt: skip
    return render(request, "metrics/price_form.html", context)


def _saved(request, scope, text: str):
    messages.success(request, f"{text} The organization's events in its window are being repriced.")
    return redirect("prices", org_slug=scope.organization.slug)


@price_list_manager
@require_http_methods(["GET", "POST"])
def entry_new(request, scope: AccessScope, kind: str):
    form_class, create = KINDS[kind][1], KINDS[kind][2]
    form = form_class(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            entry = create(organization=scope.organization, **form.values())
        except ValidationError as error:
            form.refuse(error)
        else:
            return _saved(request, scope, f"{entry.__class__._meta.verbose_name.capitalize()} added: {_label(entry)}.")
    return _form_page(request, scope, kind, form, action="new")


@price_list_manager
@require_http_methods(["GET", "POST"])
def entry_edit(request, scope: AccessScope, kind: str, entry_id: int):
    entry = _entry(scope, kind, entry_id)
    form_class, change = KINDS[kind][1], KINDS[kind][3]
    form = form_class(request.POST or None, initial=form_class.initial_of(entry))
    if request.method == "POST" and form.is_valid():
        try:
            change(**{kind: entry}, **form.values())
        except ValidationError as error:
            entry.refresh_from_db()
            form.refuse(error)
        else:
            return _saved(request, scope, f"Saved {_label(entry)}.")
    return _form_page(request, scope, kind, form, entry=entry)


@price_list_manager
@require_http_methods(["GET", "POST"])
def entry_end(request, scope: AccessScope, kind: str, entry_id: int):
    entry = _entry(scope, kind, entry_id)
    form = EndForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            KINDS[kind][4](**{kind: entry}, at=form.cleaned_data["effective_until"])
        except ValidationError as error:
            entry.refresh_from_db()
            form.refuse(error)
        else:
            return _saved(request, scope, f"Ended {_label(entry)}.")
    return _form_page(request, scope, kind, form, entry=entry, action="end")


@price_list_manager
@require_POST
def entry_delete(request, scope: AccessScope, kind: str, entry_id: int):
    entry = _entry(scope, kind, entry_id)
    label = _label(entry)
    KINDS[kind][5](**{kind: entry})
    return _saved(request, scope, f"Deleted {label}.")


def _label(entry) -> str:
    scope = "/".join(part for part in (entry.provider, entry.model) if part) or "every model"
    if isinstance(entry, OrganizationDiscount):
        amount = entry.percent.normalize()
        return f"{amount:f} % off {scope}" if amount >= Decimal(0) else f"{-amount:f} % markup on {scope}"
    return f"override of {scope}"
