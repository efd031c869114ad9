"""Reads for pricing: the platform's current prices and what an organization pays for them.

What an organization pays is answered by `PriceBook` itself (its override, else the platform's
price less its most specific discount), from a book holding that organization's price list as
just read, so a page shows a change at once whatever this process's cached book holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import OuterRef, Q, QuerySet, Subquery

from billing.models.prices import ModelPrice, OrganizationDiscount, OrganizationPrice

from .book import RATE_FIELDS, Discount, Override, Price, PriceBook
from .calculate import HUNDRED


def current_platform_prices(*, when: datetime, search: str = "") -> QuerySet[ModelPrice]:
    """The platform's price row in force at `when` for each (provider, model) (all-day rows: daily
    off-peak rows are shown with the admin), optionally those whose provider or model contains `search`."""
    all_day = ModelPrice.objects.filter(daily_from__isnull=True, effective_from__lte=when)
    latest = all_day.filter(provider=OuterRef("provider"), model=OuterRef("model")).order_by("-effective_from")
    rows = all_day.filter(pk=Subquery(latest.values("pk")[:1]))
    if search:
        rows = rows.filter(Q(provider__icontains=search) | Q(model__icontains=search))
    return rows.order_by("provider", "model")


def organization_overrides(*, organization_id: int) -> QuerySet[OrganizationPrice]:
    return OrganizationPrice.objects.filter(organization_id=organization_id).order_by(
        "provider", "model", "-effective_from"
    )


def organization_discounts(*, organization_id: int) -> QuerySet[OrganizationDiscount]:
    return OrganizationDiscount.objects.filter(organization_id=organization_id).order_by(
        "provider", "model", "-effective_from"
    )


def price_list_book(
    *, organization_id: int, overrides: list[OrganizationPrice], discounts: list[OrganizationDiscount]
) -> PriceBook:
    """A book of one organization's price list alone (no platform prices: callers have the row)."""
    return PriceBook(
        prices=(),
        overrides=[(organization_id, Override(_as_price(row), row.effective_until)) for row in overrides],
        discounts=[
            (organization_id, Discount(row.percent, row.provider, row.model.lower(), row.effective_from,
                                       row.effective_until, row.id))
            for row in discounts
        ],
    )  # fmt: skip


def _as_price(row: OrganizationPrice) -> Price:
    return Price.of(
        id=row.pk, provider=row.provider, model=row.model, effective_from=row.effective_from,
        **{name: getattr(row, name) for name in RATE_FIELDS},
    )  # fmt: skip


@dataclass(frozen=True)
class EffectivePrice:
    """What the organization pays for a platform price at a moment (USD per million tokens)."""

    source: str  # "catalog", "override" or "discount"
    input: Decimal
    output: Decimal
    cache_read: Decimal | None
    cache_write: Decimal | None
    percent: Decimal | None = None  # the discount's (negative: a markup)
    entry_id: int | None = None  # the override's or discount's


def effective_price(book: PriceBook, *, organization_id: int, row: ModelPrice, when: datetime) -> EffectivePrice:
    override = book.override_at(organization_id, row.provider, row.model, when)
    if override is not None:
        return EffectivePrice("override", override.input_per_mtok, override.output_per_mtok,
                              _base_or_none(override.cache_read), _base_or_none(override.cache_write),
                              entry_id=override.id)  # fmt: skip
    discount = book.discount_at(organization_id, (row.provider, row.model), when)
    if discount is None:
        return EffectivePrice("catalog", row.input_per_mtok, row.output_per_mtok, row.cache_read_per_mtok,
                              row.cache_write_per_mtok)  # fmt: skip
    factor = (HUNDRED - discount.percent) / HUNDRED

    def scaled(rate: Decimal | None) -> Decimal | None:
        return None if rate is None else (rate * factor).normalize()

    return EffectivePrice(
        "discount", scaled(row.input_per_mtok) or Decimal(0), scaled(row.output_per_mtok) or Decimal(0),
        scaled(row.cache_read_per_mtok), scaled(row.cache_write_per_mtok), percent=discount.percent,
        entry_id=discount.id,
    )  # fmt: skip


def _base_or_none(rate) -> Decimal | None:
    if rate is None:
        return None
    return rate.base if hasattr(rate, "base") else rate
