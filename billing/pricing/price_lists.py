"""Writes for an organization's own price list: overrides and discounts.

Each write is validated (`full_clean`: Decimal rates within bounds, `effective_until` after
`effective_from`, a percent between -1000 and 100) and announced with `price_changed` in its
transaction, for that organization only and for the window the entry covers before and after
the write, so metrics reprices exactly those events (see `metrics.repricing`).
A `ValidationError` names the field at fault; nothing is written then.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from billing.models.prices import OrganizationDiscount, OrganizationPrice
from teams.models import Organization

from . import price_changed
from .book import forget_price_book

RATE_FIELDS = ("input_per_mtok", "output_per_mtok", "cache_read_per_mtok", "cache_write_per_mtok")
OVERRIDE_FIELDS = (
    "provider", "model", *RATE_FIELDS, "extra_prices", "effective_from", "effective_until", "note",
)  # fmt: skip
DISCOUNT_FIELDS = ("percent", "provider", "model", "effective_from", "effective_until", "note")
Entry = OrganizationPrice | OrganizationDiscount


@dataclass(frozen=True)
class Coverage:
    """What an entry prices: whose events, of which provider and model ("" = any), and when."""

    organization_id: int
    provider: str
    model: str
    start: datetime
    end: datetime | None

    @classmethod
    def of(cls, entry: Entry) -> Coverage:
        return cls(entry.organization_id, entry.provider, entry.model.lower(), entry.effective_from,
                   entry.effective_until)  # fmt: skip


def _describe(entry: Entry) -> str:
    scope = "/".join(part for part in (entry.provider, entry.model) if part) or "everything"
    if isinstance(entry, OrganizationDiscount):
        return f"discount {entry.percent.normalize():f}% on {scope}"
    return f"override {scope}"


def _announce(coverages: list[Coverage], reason: str) -> None:
    """Announce the union of what the entry covered and covers: one window per (provider, model)."""
    merged: dict[tuple[int, str, str], Coverage] = {}
    for coverage in coverages:
        key = (coverage.organization_id, coverage.provider, coverage.model)
        seen = merged.get(key)
        if seen is None:
            merged[key] = coverage
            continue
        end = None if seen.end is None or coverage.end is None else max(seen.end, coverage.end)
        merged[key] = Coverage(*key, min(seen.start, coverage.start), end)
    forget_price_book()  # this process prices its next event with the change...
    transaction.on_commit(forget_price_book)  # ...and not with a book reloaded before the commit
    for coverage in merged.values():
        price_changed.send(
            sender=OrganizationPrice, provider=coverage.provider, model=coverage.model, start=coverage.start,
            end=coverage.end, organization_id=coverage.organization_id, reason=reason,
        )  # fmt: skip


def _decimal(value: Any, field: str) -> Decimal | None:
    if value is None or value == "":
        return None
    if isinstance(value, float):  # a float's binary digits are not the price someone typed
        value = repr(value)
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValidationError({field: f"{value!r} is not a number."}) from None
    if not number.is_finite():
        raise ValidationError({field: f"{value!r} is not a number."})
    return number


def _aware(value: datetime | None, field: str) -> datetime | None:
    if value is not None and timezone.is_naive(value):
        raise ValidationError({field: "Give a time zone (e.g. 2026-01-01T00:00Z)."})
    return value


def _normalised(values: dict[str, Any]) -> dict[str, Any]:
    cleaned = dict(values)
    for name in ("provider", "model", "note"):
        if name in cleaned:
            cleaned[name] = (cleaned[name] or "").strip()
    if "provider" in cleaned:
        cleaned["provider"] = cleaned["provider"].lower()  # provider ids are lowercase, as prices'
    for name in (*RATE_FIELDS, "percent"):
        if name in cleaned:
            cleaned[name] = _decimal(cleaned[name], name)
    for name in ("effective_from", "effective_until"):
        if name in cleaned:
            cleaned[name] = _aware(cleaned[name], name)
    if cleaned.get("effective_from", "") is None:
        cleaned["effective_from"] = timezone.now()
    if "extra_prices" in cleaned and cleaned["extra_prices"] is None:
        cleaned["extra_prices"] = {}
    return cleaned


def _save(entry: Entry, before: Coverage | None, reason: str) -> Entry:
    entry.full_clean()
    with transaction.atomic():
        entry.save()
        _announce([c for c in (before, Coverage.of(entry)) if c is not None], reason)
    return entry


def _change(entry: Entry, allowed: tuple[str, ...], changes: dict[str, Any]) -> Entry:
    unknown = set(changes) - set(allowed)
    if unknown:
        raise TypeError(f"cannot change {sorted(unknown)}")
    before = Coverage.of(entry)
    for name, value in _normalised(changes).items():
        setattr(entry, name, value)
    return _save(entry, before, f"{_describe(entry)} changed")


def _end(entry: Entry, at: datetime | None) -> Entry:
    at = _aware(at, "effective_until") or timezone.now()
    before = Coverage.of(entry)
    entry.effective_until = at
    return _save(entry, before, f"{_describe(entry)} ended")


def price_list_entry_saved(*, entry: Entry, before: Coverage | None) -> None:
    """Announce an entry saved elsewhere (Django admin), in its transaction; `before` is what it
    covered before the save (None: a new entry)."""
    verb = "created" if before is None else "changed"
    _announce([c for c in (before, Coverage.of(entry)) if c is not None], f"{_describe(entry)} {verb}")


def price_list_entry_deleted(*, entry: Entry) -> None:
    """Announce an entry deleted elsewhere (Django admin), in its transaction."""
    _announce([Coverage.of(entry)], f"{_describe(entry)} deleted")


def _delete(entry: Entry) -> None:
    before = Coverage.of(entry)
    reason = f"{_describe(entry)} deleted"
    with transaction.atomic():
        entry.delete()
        _announce([before], reason)


# --- overrides --------------------------------------------------------------------------------


def override_create(
    *,
    organization: Organization,
    provider: str,
    model: str,
    input_per_mtok: Decimal | str | None,
    output_per_mtok: Decimal | str | None,
    cache_read_per_mtok: Decimal | str | None = None,
    cache_write_per_mtok: Decimal | str | None = None,
    extra_prices: dict | None = None,
    effective_from: datetime | None = None,
    effective_until: datetime | None = None,
    note: str = "",
) -> OrganizationPrice:
    """The organization's own price for a model (USD per million tokens), replacing the platform's."""
    values = _normalised({
        "provider": provider, "model": model, "input_per_mtok": input_per_mtok, "output_per_mtok": output_per_mtok,
        "cache_read_per_mtok": cache_read_per_mtok, "cache_write_per_mtok": cache_write_per_mtok,
        "extra_prices": extra_prices, "effective_from": effective_from, "effective_until": effective_until,
        "note": note,
    })  # fmt: skip
    override = OrganizationPrice(organization=organization, **values)
    _save(override, None, f"{_describe(override)} created")
    return override


def override_change(*, override: OrganizationPrice, **changes: Any) -> OrganizationPrice:
    """Change any of OVERRIDE_FIELDS; the old and the new window are both repriced."""
    return _change(override, OVERRIDE_FIELDS, changes)  # type: ignore[return-value]


def override_end(*, override: OrganizationPrice, at: datetime | None = None) -> OrganizationPrice:
    """Stop the override at `at` (now by default): the platform's price applies after it."""
    return _end(override, at)  # type: ignore[return-value]


def override_delete(*, override: OrganizationPrice) -> None:
    """Remove the override as if it never was: its events get the platform's price again."""
    _delete(override)


# --- discounts --------------------------------------------------------------------------------


def discount_create(
    *,
    organization: Organization,
    percent: Decimal | str | None,
    provider: str = "",
    model: str = "",
    effective_from: datetime | None = None,
    effective_until: datetime | None = None,
    note: str = "",
) -> OrganizationDiscount:
    """A percentage off the platform's prices (negative: a markup) for a provider, a model, or all."""
    values = _normalised({
        "percent": percent, "provider": provider, "model": model, "effective_from": effective_from,
        "effective_until": effective_until, "note": note,
    })  # fmt: skip
    if values["percent"] is None:
        raise ValidationError({"percent": "Give a percentage, e.g. 10 (off) or -5 (a markup)."})
    discount = OrganizationDiscount(organization=organization, **values)
    _save(discount, None, f"{_describe(discount)} created")
    return discount


def discount_change(*, discount: OrganizationDiscount, **changes: Any) -> OrganizationDiscount:
    """Change any of DISCOUNT_FIELDS; the old and the new window are both repriced."""
    if "percent" in changes and _decimal(changes["percent"], "percent") is None:
        raise ValidationError({"percent": "Give a percentage, e.g. 10 (off) or -5 (a markup)."})
    return _change(discount, DISCOUNT_FIELDS, changes)  # type: ignore[return-value]


def discount_end(*, discount: OrganizationDiscount, at: datetime | None = None) -> OrganizationDiscount:
    """Stop the discount at `at` (now by default)."""
    return _end(discount, at)  # type: ignore[return-value]


def discount_delete(*, discount: OrganizationDiscount) -> None:
    _delete(discount)
