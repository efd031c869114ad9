"""Writes for pricing: announcing price changes so the events they govern are priced again."""

from __future__ import annotations

from django.db import transaction

from billing.models.prices import ModelPrice

from . import price_changed
from .book import forget_price_book


def reprice_after_change(*, provider: str, model: str, effective_from, daily: bool = False) -> None:
    """Announce (in this transaction) that the events in the window this price row governs, or
    governed, may cost something else now; metrics reprices them (see `metrics.repricing`).
    A row with a daily window governs its hours from its start on, whatever rows start later."""
    end = None if daily else (
        ModelPrice.objects.filter(provider=provider, model=model, effective_from__gt=effective_from)
        .order_by("effective_from")
        .values_list("effective_from", flat=True)
        .first()
    )
    forget_price_book()  # this process prices its next event with the change...
    transaction.on_commit(forget_price_book)  # ...and not with a book reloaded before the commit
    price_changed.send(
        sender=ModelPrice, provider=provider, model=model, start=effective_from, end=end, organization_id=None,
        reason=f"platform price {provider}/{model} changed",
    )
