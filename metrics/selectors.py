"""Reads for metrics. Every function takes an `AccessScope` from teams.access and reads through it.

Totals over a range come from three sources that never overlap: daily rollups for whole UTC
days whose rollups are current, hourly rollups for other whole hours whose rollups are current,
and raw events for everything else (the partial hours at either end of the range and any hour
with events not yet rolled up, such as the open one). So a 30-day view reads a few hundred
rollup rows whatever the event count, and its totals always equal a sum over raw events.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import reduce
from operator import or_

from django.db import connection
from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import TruncHour

from teams.access import AccessScope

from . import sketch
from .models import DailyRollup, DirtyDay, DirtyHour, HourlyRollup, UsageEvent
from .rollups import DAY, HOUR, day_of, hour_of

PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class EventFilter:
    start: datetime
    end: datetime
    team_alias: str | None = None
    model: str | None = None
    user_id: str | None = None


# --- which source serves which part of a range ---------------------------------------------------


def _ceil(moment: datetime, floor, step: timedelta) -> datetime:
    floored = floor(moment)
    return floored if floored == moment else floored + step


def _ranges(moments: Iterable[datetime], step: timedelta) -> list[tuple[datetime, datetime]]:
    """Consecutive bucket starts merged into [start, end) ranges."""
    ranges: list[list[datetime]] = []
    for moment in sorted(moments):
        if ranges and ranges[-1][1] == moment:
            ranges[-1][1] = moment + step
        else:
            ranges.append([moment, moment + step])
    return [(a, b) for a, b in ranges]


@dataclass
class SourcePlan:
    days: list[tuple[datetime, datetime]] = field(default_factory=list)
    hours: list[tuple[datetime, datetime]] = field(default_factory=list)
    raw: list[tuple[datetime, datetime]] = field(default_factory=list)


def plan_sources(*, organization_id: int, start: datetime, end: datetime) -> SourcePlan:
    plan = SourcePlan()
    first_hour, last_hour = _ceil(start, hour_of, HOUR), hour_of(end)
    if first_hour >= last_hour:
        plan.raw.append((start, end))
        return plan
    if start < first_hour:
        plan.raw.append((start, first_hour))
    if last_hour < end:
        plan.raw.append((last_hour, end))
    dirty_hours = set(
        DirtyHour.objects.filter(organization_id=organization_id, hour__gte=first_hour, hour__lt=last_hour).values_list(
            "hour", flat=True
        )
    )
    dirty_days = {day_of(hour) for hour in dirty_hours} | set(
        DirtyDay.objects.filter(
            organization_id=organization_id, day__gte=day_of(first_hour), day__lt=last_hour
        ).values_list("day", flat=True)
    )
    first_day, last_day = _ceil(first_hour, day_of, DAY), day_of(last_hour)
    clean_days = []
    day = first_day
    while day < last_day:
        if day not in dirty_days:
            clean_days.append(day)
        day += DAY
    clean_day_set = set(clean_days)
    hours = []
    hour = first_hour
    while hour < last_hour:
        if day_of(hour) in clean_day_set:
            hour = day_of(hour) + DAY  # the whole day is served by its daily rows
            continue
        if hour not in dirty_hours:
            hours.append(hour)
        hour += HOUR
    plan.days = _ranges(clean_days, DAY)
    plan.hours = _ranges(hours, HOUR)
    plan.raw += _ranges(dirty_hours, HOUR)
    return plan


def _within(ranges: list[tuple[datetime, datetime]], column: str) -> Q | None:
    if not ranges:
        return None
    return reduce(or_, (Q(**{f"{column}__gte": a, f"{column}__lt": b}) for a, b in ranges))


@dataclass
class _Sources:
    """The three querysets for one scope, range and filter set."""

    plan: SourcePlan
    daily: QuerySet | None
    hourly: QuerySet | None
    raw: QuerySet | None

    @property
    def rollups(self) -> list[QuerySet]:
        return [qs for qs in (self.daily, self.hourly) if qs is not None]


def _filtered(
    scope: AccessScope, queryset: QuerySet, filters: EventFilter, *, rollup: bool, per_user: bool = False
) -> QuerySet:
    queryset = scope.filter(queryset)
    if filters.team_alias:
        queryset = queryset.filter(team=scope.team(filters.team_alias))
    if filters.model:
        # The seed's model_filter matches a family ("gpt-4" finds gpt-4 and gpt-4o).
        queryset = queryset.filter(model__icontains=filters.model)
    if rollup:
        # Team-total rows answer unless the question is about users.
        queryset = queryset.filter(is_team_total=not (per_user or filters.user_id is not None))
    if filters.user_id is not None:
        queryset = queryset.filter(user_id=filters.user_id)
    return queryset


def _sources(scope: AccessScope, filters: EventFilter, *, per_user: bool = False) -> _Sources:
    plan = plan_sources(organization_id=scope.organization.pk, start=filters.start, end=filters.end)
    days, hours, raw = _within(plan.days, "start"), _within(plan.hours, "start"), _within(plan.raw, "timestamp")

    def source(queryset: QuerySet, within: Q | None, *, rollup: bool) -> QuerySet | None:
        if within is None:
            return None
        return _filtered(scope, queryset.filter(within), filters, rollup=rollup, per_user=per_user)

    return _Sources(
        plan=plan,
        daily=source(DailyRollup.objects.all(), days, rollup=True),
        hourly=source(HourlyRollup.objects.all(), hours, rollup=True),
        raw=source(UsageEvent.objects.all(), raw, rollup=False),
    )


# --- aggregation ---------------------------------------------------------------------------------

_ROLLUP_SUMS = {
    name: Sum(name)
    for name in ("requests", "total_tokens", "cost", "errors", "cache_hits", "unpriced", "latency_sum_ms")
}
_RAW_SUMS = {
    "requests": Count("id"),
    "total_tokens": Sum("total_tokens"),
    "cost": Sum("cost"),
    "errors": Count("id", filter=Q(status=UsageEvent.Status.ERROR)),
    "cache_hits": Count("id", filter=Q(cache_hit=True)),
    "unpriced": Count("id", filter=Q(is_priced=False)),
    "latency_sum_ms": Sum("latency_ms"),
}


def _add(into: dict, row: dict) -> None:
    for name in _RAW_SUMS:
        into[name] = into.get(name, 0) + (row[name] or 0)


def _by_model(sources: _Sources) -> dict[str, dict]:
    models: dict[str, dict] = {}
    for queryset in sources.rollups:
        for row in queryset.values("model").annotate(**_ROLLUP_SUMS).order_by():
            _add(models.setdefault(row["model"], {}), row)
    if sources.raw is not None:
        for row in sources.raw.values("model").annotate(**_RAW_SUMS).order_by():
            _add(models.setdefault(row["model"], {}), row)
    return models


def _hourly_trend(scope: AccessScope, filters: EventFilter, sources: _Sources) -> dict[datetime, dict]:
    """Cost and count per hour. Whole clean days are read from their hourly rows here."""
    trend: dict[datetime, dict] = {}
    hours = _within(sources.plan.hours + sources.plan.days, "start")
    if hours is not None:
        hourly = _filtered(scope, HourlyRollup.objects.filter(hours), filters, rollup=True)
        for row in hourly.values("start").annotate(cost=Sum("cost"), count=Sum("requests")).order_by():
            bucket = trend.setdefault(row["start"], {"cost": Decimal(0), "count": 0})
            bucket["cost"] += row["cost"] or 0
            bucket["count"] += row["count"] or 0
    if sources.raw is not None:
        per_hour = sources.raw.annotate(hour=TruncHour("timestamp", tzinfo=UTC)).values("hour")
        for row in per_hour.annotate(cost=Sum("cost"), count=Count("id")).order_by():
            bucket = trend.setdefault(row["hour"], {"cost": Decimal(0), "count": 0})
            bucket["cost"] += row["cost"] or 0
            bucket["count"] += row["count"]
    return dict(sorted(trend.items()))


def _rollup_sketch(queryset: QuerySet) -> dict[int, int]:
    """Merge the latency sketches of many rollup rows inside the database."""
    sql, params = queryset.values("latency_sketch").query.sql_with_params()
    if connection.vendor == "postgresql":
        merge_sql = (
            f"SELECT e.key::int, SUM(e.value::bigint) FROM ({sql}) AS s "  # noqa: S608 -- built by the ORM
            "CROSS JOIN LATERAL jsonb_each_text(s.latency_sketch) AS e GROUP BY 1"
        )
    elif connection.vendor == "sqlite":
        merge_sql = (
            f"SELECT CAST(e.key AS INTEGER), SUM(e.value) FROM ({sql}) AS s, "  # noqa: S608 -- built by the ORM
            "json_each(s.latency_sketch) AS e GROUP BY 1"
        )
    else:  # pragma: no cover - other databases merge in Python
        return sketch.merge(queryset.values_list("latency_sketch", flat=True))
    with connection.cursor() as cursor:
        cursor.execute(merge_sql, params)
        return {int(index): int(count) for index, count in cursor.fetchall()}


def _latency_sketch(sources: _Sources) -> dict[int, int]:
    parts = [_rollup_sketch(qs) for qs in sources.rollups]
    if sources.raw is not None:
        raw = sources.raw.values(bucket=sketch.bucket_expression()).annotate(n=Count("id")).order_by()
        parts.append({row["bucket"]: row["n"] for row in raw})
    return sketch.merge(parts)


def dashboard_metrics(*, scope: AccessScope, filters: EventFilter) -> dict:
    """The seed's dashboard shape, plus latency percentiles, for one scope and range."""
    sources = _sources(scope, filters)
    models = _by_model(sources)
    totals: dict = {}
    for row in models.values():
        _add(totals, row)
    requests = totals.get("requests", 0)
    trend = _hourly_trend(scope, filters, sources)
    return {
        "total_cost": totals.get("cost", Decimal(0)),
        "total_tokens": totals.get("total_tokens", 0),
        "total_requests": requests,
        "avg_latency_ms": round(totals["latency_sum_ms"] / requests, 3) if requests else 0.0,
        "cache_hit_rate": round(100 * totals["cache_hits"] / requests, 2) if requests else 0.0,
        "error_rate": round(100 * totals["errors"] / requests, 2) if requests else 0.0,
        "unpriced_requests": totals.get("unpriced", 0),
        "latency_percentiles_ms": sketch.quantiles(_latency_sketch(sources), PERCENTILES),
        "model_usage": {
            model: {"count": row["requests"], "tokens": row["total_tokens"], "cost": row["cost"]}
            for model, row in sorted(models.items(), key=lambda item: (-item[1]["cost"], item[0]))
        },
        "hourly_trend": {
            hour.strftime("%Y-%m-%d %H:00"): {"cost": bucket["cost"], "count": bucket["count"]}
            for hour, bucket in trend.items()
        },
        "start": filters.start,
        "end": filters.end,
    }


def usage_cost(*, scope: AccessScope, filters: EventFilter) -> Decimal:
    """Spend for a scope and range (budgets use it)."""
    sources = _sources(scope, filters)
    total = Decimal(0)
    for queryset in sources.rollups:
        total += queryset.aggregate(cost=Sum("cost"))["cost"] or 0
    if sources.raw is not None:
        total += sources.raw.aggregate(cost=Sum("cost"))["cost"] or 0
    return total


# --- raw event listings --------------------------------------------------------------------------


def scoped_events(*, scope: AccessScope, filters: EventFilter) -> QuerySet[UsageEvent]:
    events = _filtered(
        scope,
        UsageEvent.objects.filter(timestamp__gte=filters.start, timestamp__lt=filters.end),
        filters,
        rollup=False,
    )
    return events


RECENT_FIELDS = (
    "request_id",
    "timestamp",
    "model",
    "model_requested",
    "provider",
    "prompt_tokens",
    "output_tokens",
    "total_tokens",
    "cached_tokens",
    "prompt_cost",
    "output_cost",
    "cost",
    "is_priced",
    "latency_ms",
    "time_to_first_token_ms",
    "cache_hit",
    "cache_similarity_score",
    "is_batched",
    "batch_id",
    "batch_size",
    "user_id",
    "end_user",
    "query_type",
    "status",
    "error_message",
    "team__alias",
)


def recent_requests(*, events: QuerySet[UsageEvent], limit: int) -> list[dict]:
    rows = list(events.order_by("-timestamp", "-id").values(*RECENT_FIELDS)[:limit])
    for row in rows:
        row["team_alias"] = row.pop("team__alias")
        row["response_cost"] = row["cost"]  # the seed's name for the same figure
    return rows


def top_usage(*, scope: AccessScope, filters: EventFilter, dimension: str, limit: int = 5) -> list[dict]:
    """The biggest spenders by `model` or `user_id` for a range: [{name, cost, requests}], costliest first."""
    if dimension not in ("model", "user_id"):
        raise ValueError(dimension)
    sources = _sources(scope, filters, per_user=dimension == "user_id")
    totals: dict[str, dict] = {}
    for queryset in sources.rollups:
        for row in queryset.values(dimension).annotate(cost=Sum("cost"), requests=Sum("requests")).order_by():
            entry = totals.setdefault(row[dimension], {"cost": Decimal(0), "requests": 0})
            entry["cost"] += row["cost"] or 0
            entry["requests"] += row["requests"] or 0
    if sources.raw is not None:
        for row in sources.raw.values(dimension).annotate(cost=Sum("cost"), requests=Count("id")).order_by():
            entry = totals.setdefault(row[dimension], {"cost": Decimal(0), "requests": 0})
            entry["cost"] += row["cost"] or 0
            entry["requests"] += row["requests"]
    ranked = sorted(totals.items(), key=lambda item: (-item[1]["cost"], item[0]))[:limit]
    return [{"name": name, **values} for name, values in ranked]
