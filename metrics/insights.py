"""Savings insights: what the same calls would cost on another model (`what_if`), and what prompt
caching, the client's own response cache and batching saved, and what failed calls cost (`savings`).

Both read raw events (`UsageEvent`), so they see only what raw retention keeps
(`RAW_EVENT_RETENTION_DAYS`). Every price comes from the ledger, `billing.pricing.calculate.price_event`,
with the organization's own price list (overrides, discounts) applied as it applies them, per call and at
the call's own moment (tiers are per call: summed tokens are never priced). Events are read in chunks of
only the columns needed, so memory stays bounded however many events a range holds. Money is Decimal
end to end: per-event costs at the stored precision (1e-10 USD), averages and rates quantized to it once
per model.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal

from django.db.models import Count, Q, QuerySet

from billing.pricing.book import COST_QUANTUM, PriceBook, price_book
from billing.pricing.calculate import PricedEvent, Usage, UsageError, price_event
from llmcost_project.db import Sum
from teams.access import AccessScope

from .models import UsageEvent
from .selectors import IS_ERROR, EventFilter, scoped_events
from .services import event_usage

CHUNK_SIZE = 2000
PERCENT_QUANTUM = Decimal("0.01")
HUNDRED = Decimal(100)
ZERO = Decimal(0)

# The columns an event's usage is rebuilt from (`event_usage`), in this order at the end of each row.
USAGE_COLUMNS = ("prompt_tokens", "output_tokens", "cached_tokens", "cache_write_tokens", "usage")

METHODS = {
    "prompt_cache_saved": (
        "Per event with cached tokens: its usage priced by the ledger with the cached tokens counted as plain "
        "input, minus the same usage priced with them at the cache-read price (same price list, same moment)."
    ),
    "response_cache_saved": (
        "Per model: calls answered from the client's own cache (cache_hit) times the model's average cost per "
        "non-cache-hit call in the range, less what those cache hits were recorded as costing; a model with no "
        "paid call in the range counts 0."
    ),
    "batch_saved": (
        "Per model, over non-cache-hit calls: (unbatched cost per 1k tokens - batched cost per 1k tokens) x "
        "batched tokens / 1000, floored at 0 per model (a batch that cost more saved nothing); a model without "
        "both batched and unbatched tokens counts 0."
    ),
    "error_spend": "The recorded cost of calls whose status is error.",
}


@dataclass(frozen=True)
class InsightFilters:
    """Which events an insight reads: the caller's scope narrowed by these (None: no narrowing)."""

    start: datetime
    end: datetime
    team_alias: str | None = None
    query_type: str | None = None


class UnpricedAlternative(ValueError):
    """The alternative model has no price (platform or the organization's own) to compare with."""


def insight_events(*, scope: AccessScope, filters: InsightFilters) -> QuerySet[UsageEvent]:
    """The events an insight reads. A team_alias the caller cannot see is a 404, as on the dashboard."""
    events = scoped_events(
        scope=scope, filters=EventFilter(start=filters.start, end=filters.end, team_alias=filters.team_alias)
    )
    if filters.query_type is not None:
        events = events.filter(query_type=filters.query_type)
    return events


def _usage(row: tuple) -> Usage:
    """The ledger's usage of a row whose last columns are USAGE_COLUMNS."""
    prompt, output, cached, written, extra = row[-len(USAGE_COLUMNS):]
    return event_usage(prompt_tokens=prompt, output_tokens=output, cached_tokens=cached,
                       cache_write_tokens=written, extra=extra)  # fmt: skip


def _priced(book: PriceBook, organization_id: int, model: str, provider: str | None, when: datetime,
            usage: Usage) -> PricedEvent | None:  # fmt: skip
    """The ledger's price of `usage` at `model`, or None when no price applies or the usage cannot be
    decomposed under it (no client cost is offered: a what-if is never the client's figure)."""
    try:
        priced = price_event(book, organization_id=organization_id, model=model, provider=provider, when=when,
                             usage=usage)  # fmt: skip
    except UsageError:
        return None
    return priced if priced.is_priced else None


def _percent(part: Decimal, whole: Decimal) -> Decimal | None:
    if whole == 0:
        return None
    return (part / whole * HUNDRED).quantize(PERCENT_QUANTUM, ROUND_HALF_EVEN)


# --- what-if ---------------------------------------------------------------------------------------


def what_if(*, scope: AccessScope, filters: InsightFilters, model: str, alternative: str) -> dict:
    """The calls of `model` (the events' stored, normalised name) in range, priced again at `alternative`.

    Each call is priced by the ledger at its own moment with the organization's price list. A call the
    alternative had no price for at its moment (or whose usage its price cannot decompose) is left out
    of every figure and counted in `unpriced_requests`. Raises UnpricedAlternative when `alternative`
    has no price at the end of the range.
    """
    return what_ifs(scope=scope, filters=filters, model=model, alternatives=[alternative])[alternative]


def what_ifs(*, scope: AccessScope, filters: InsightFilters, model: str, alternatives: list[str]) -> dict[str, dict]:
    """`what_if` at several alternatives, reading the calls once: the answer of each, by alternative.
    Raises UnpricedAlternative naming the first alternative that has no price at the end of the range."""
    book = price_book()
    organization_id = scope.organization.pk
    for alternative in alternatives:
        if _priced(book, organization_id, alternative, None, filters.end, Usage()) is None:
            raise UnpricedAlternative(alternative)
    rows = (
        insight_events(scope=scope, filters=filters)
        .filter(model=model)
        .order_by()
        .values_list("timestamp", "cost", *USAGE_COLUMNS)
        .iterator(chunk_size=CHUNK_SIZE)
    )
    counts = {alternative: [0, 0] for alternative in alternatives}  # requests, unpriced
    sums = {alternative: [ZERO, ZERO] for alternative in alternatives}  # actual, at the alternative
    for row in rows:
        usage = _usage(row)
        for alternative in alternatives:
            priced = _priced(book, organization_id, alternative, None, row[0], usage)
            if priced is None:
                counts[alternative][1] += 1
                continue
            counts[alternative][0] += 1
            sums[alternative][0] += row[1]
            sums[alternative][1] += priced.cost
    answers = {}
    for alternative in alternatives:
        (requests, unpriced), (actual, alternative_cost) = counts[alternative], sums[alternative]
        savings = actual - alternative_cost
        answers[alternative] = {
            "model": model,
            "alternative": alternative,
            "requests": requests,
            "actual_cost": actual,
            "alternative_cost": alternative_cost,
            "savings": savings,
            "savings_percent": _percent(savings, actual),
            "unpriced_requests": unpriced,
            "start": filters.start,
            "end": filters.end,
        }
    return answers


# --- savings so far --------------------------------------------------------------------------------


def _prompt_cache_saved(events: QuerySet[UsageEvent], book: PriceBook, organization_id: int) -> Decimal:
    rows = (
        events.filter(cached_tokens__gt=0)
        .order_by()
        .values_list("model_requested", "provider_requested", "timestamp", *USAGE_COLUMNS)
        .iterator(chunk_size=CHUNK_SIZE)
    )
    saved = ZERO
    for row in rows:
        requested, hint, when = row[0], row[1] or None, row[2]  # re-priced as repricing prices it
        usage = _usage(row)
        as_input = _usage(row)
        as_input.cached_tokens = 0
        with_cache = _priced(book, organization_id, requested, hint, when, usage)
        without = _priced(book, organization_id, requested, hint, when, as_input)
        if with_cache is not None and without is not None:
            saved += without.cost - with_cache.cost
    return saved


def _quantized(value: Decimal) -> Decimal:
    return value.quantize(COST_QUANTUM, ROUND_HALF_EVEN)


def _per_model_savings(events: QuerySet[UsageEvent]) -> tuple[Decimal, Decimal, Decimal]:
    """(response_cache_saved, batch_saved, error_spend) from one GROUP BY model."""
    paid, batched, unbatched = Q(cache_hit=False), Q(cache_hit=False, is_batched=True), Q(
        cache_hit=False, is_batched=False
    )
    rows = (
        events.order_by()
        .values("model")
        .annotate(
            paid_calls=Count("id", filter=paid),
            paid_cost=Sum("cost", filter=paid),
            hits=Count("id", filter=Q(cache_hit=True)),
            hit_cost=Sum("cost", filter=Q(cache_hit=True)),
            batched_cost=Sum("cost", filter=batched),
            batched_tokens=Sum("total_tokens", filter=batched),
            unbatched_cost=Sum("cost", filter=unbatched),
            unbatched_tokens=Sum("total_tokens", filter=unbatched),
            error_cost=Sum("cost", filter=IS_ERROR),
        )
    )
    response_saved = batch_saved = error_spend = ZERO
    for row in rows:
        error_spend += row["error_cost"] or ZERO
        if row["hits"] and row["paid_calls"]:
            average = (row["paid_cost"] or ZERO) / row["paid_calls"]
            response_saved += _quantized(average * row["hits"]) - (row["hit_cost"] or ZERO)
        if row["batched_tokens"] and row["unbatched_tokens"]:
            unbatched_rate = (row["unbatched_cost"] or ZERO) / row["unbatched_tokens"]
            saved = unbatched_rate * row["batched_tokens"] - (row["batched_cost"] or ZERO)
            batch_saved += max(ZERO, _quantized(saved))
    return response_saved, batch_saved, error_spend


def savings(*, scope: AccessScope, filters: InsightFilters) -> dict:
    """What prompt caching, the client's response cache and batching saved in range, and what failed
    calls cost; `method` says how each figure is reached (see METHODS)."""
    events = insight_events(scope=scope, filters=filters)
    prompt_saved = _prompt_cache_saved(events, price_book(), scope.organization.pk)
    response_saved, batch_saved, error_spend = _per_model_savings(events)
    return {
        "prompt_cache_saved": prompt_saved,
        "response_cache_saved": response_saved,
        "batch_saved": batch_saved,
        "error_spend": error_spend,
        "method": dict(METHODS),
        "start": filters.start,
        "end": filters.end,
    }
