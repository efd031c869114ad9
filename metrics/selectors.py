"""Reads for metrics. Every function takes an `AccessScope` from teams.access and reads through it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import TruncHour

from teams.access import AccessScope

from .models import UsageEvent

PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class EventFilter:
    start: datetime
    end: datetime
    team_alias: str | None = None
    model: str | None = None


def scoped_events(*, scope: AccessScope, filters: EventFilter) -> QuerySet[UsageEvent]:
    events = scope.filter(UsageEvent.objects.all()).filter(
        timestamp__gte=filters.start, timestamp__lt=filters.end
    )
    if filters.team_alias:
        events = events.filter(team=scope.team(filters.team_alias))
    if filters.model:
        # The seed's model_filter matches a family ("gpt-4" finds gpt-4 and gpt-4o).
        events = events.filter(model__icontains=filters.model)
    return events


def _percentiles(events: QuerySet[UsageEvent], count: int) -> dict[str, float | None]:
    """Nearest-rank percentiles of latency."""
    result: dict[str, float | None] = {}
    ordered = events.order_by("latency_ms").values_list("latency_ms", flat=True)
    for p in PERCENTILES:
        rank = max(1, math.ceil(p / 100 * count)) if count else 0
        result[f"p{p}"] = ordered[rank - 1] if rank else None
    return result


def dashboard_metrics(*, scope: AccessScope, filters: EventFilter) -> dict:
    """The seed's dashboard shape (plus latency percentiles) for one scope and range."""
    events = scoped_events(scope=scope, filters=filters)
    totals = events.aggregate(
        requests=Count("id"),
        cost=Sum("cost"),
        tokens=Sum("total_tokens"),
        latency=Sum("latency_ms"),
        errors=Count("id", filter=Q(status=UsageEvent.Status.ERROR)),
        cache_hits=Count("id", filter=Q(cache_hit=True)),
        unpriced=Count("id", filter=Q(is_priced=False)),
    )
    requests = totals["requests"]
    by_model = (
        events.values("model")
        .annotate(count=Count("id"), tokens=Sum("total_tokens"), cost=Sum("cost"))
        .order_by("-cost", "model")
    )
    by_hour = (
        events.annotate(hour=TruncHour("timestamp", tzinfo=UTC))
        .values("hour")
        .annotate(count=Count("id"), cost=Sum("cost"))
        .order_by("hour")
    )
    return {
        "total_cost": totals["cost"] or Decimal(0),
        "total_tokens": totals["tokens"] or 0,
        "total_requests": requests,
        "avg_latency_ms": round(totals["latency"] / requests, 3) if requests else 0.0,
        "cache_hit_rate": round(100 * totals["cache_hits"] / requests, 2) if requests else 0.0,
        "error_rate": round(100 * totals["errors"] / requests, 2) if requests else 0.0,
        "unpriced_requests": totals["unpriced"],
        "latency_percentiles_ms": _percentiles(events, requests),
        "model_usage": {
            row["model"]: {"count": row["count"], "tokens": row["tokens"] or 0, "cost": row["cost"] or Decimal(0)}
            for row in by_model
        },
        "hourly_trend": {
            row["hour"].strftime("%Y-%m-%d %H:00"): {"cost": row["cost"] or Decimal(0), "count": row["count"]}
            for row in by_hour
        },
        "start": filters.start,
        "end": filters.end,
    }


RECENT_FIELDS = (
    "request_id", "timestamp", "model", "model_requested", "provider", "prompt_tokens", "output_tokens",
    "total_tokens", "cached_tokens", "prompt_cost", "output_cost", "cost", "is_priced", "latency_ms",
    "time_to_first_token_ms", "cache_hit", "cache_similarity_score", "is_batched", "batch_id",
    "batch_size", "user_id", "end_user", "query_type", "status", "error_message", "team__alias",
)


def recent_requests(*, events: QuerySet[UsageEvent], limit: int) -> list[dict]:
    rows = list(events.order_by("-timestamp", "-id").values(*RECENT_FIELDS)[:limit])
    for row in rows:
        row["team_alias"] = row.pop("team__alias")
        row["response_cost"] = row["cost"]  # the seed's name for the same figure
    return list(rows)
