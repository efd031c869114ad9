"""Reads for metrics. Every function takes an `AccessScope` from teams.access and reads through it.

Totals over a range come from three sources that never overlap: daily rollups for whole UTC
days whose rollups are current, hourly rollups for other whole hours whose rollups are current,
and raw events for everything else (the partial hours at either end of the range and any hour
with events not yet rolled up, such as the open one). So a 30-day view reads a few hundred
rollup rows whatever the event count, and its totals always equal a sum over raw events.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import reduce
from operator import or_
from typing import Any

from django.core.cache import cache
from django.db import connection
from django.db.models import Aggregate, Avg, Count, F, FloatField, Max, Q, QuerySet
from django.db.models.functions import TruncDay, TruncHour

from billing.pricing.money import from_units
from llmcost_project.db import Sum
from teams.access import AccessScope

from . import sketch
from .models import (
    BatchRun,
    CacheStat,
    DailyRollup,
    DailyTeamTotal,
    DirtyDay,
    DirtyHour,
    HourlyRollup,
    HourlyTeamTotal,
    RepriceRequest,
    SpendAnomaly,
    UsageEvent,
)
from .rollups import DAY, HOUR, SUM_FIELDS, bucket_ranges, ceil_to, day_of, hour_of

PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class EventFilter:
    start: datetime
    end: datetime
    team_alias: str | None = None
    model: str | None = None
    user_id: str | None = None
    # The team named by team_alias, when the caller already resolved it through the scope (saves
    # a lookup per source); the scope still restricts every query, so it cannot widen one.
    team_id: int | None = None


# --- which source serves which part of a range ---------------------------------------------------


@dataclass
class SourcePlan:
    days: list[tuple[datetime, datetime]] = field(default_factory=list)
    hours: list[tuple[datetime, datetime]] = field(default_factory=list)
    raw: list[tuple[datetime, datetime]] = field(default_factory=list)


def plan_sources(*, organization_id: int, start: datetime, end: datetime) -> SourcePlan:
    plan = SourcePlan()
    first_hour, last_hour = ceil_to(start, hour_of, HOUR), hour_of(end)
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
    first_day, last_day = ceil_to(first_hour, day_of, DAY), day_of(last_hour)
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
    plan.days = bucket_ranges(clean_days, DAY)
    plan.hours = bucket_ranges(hours, HOUR)
    plan.raw += bucket_ranges(dirty_hours, HOUR)
    return plan


def _within(ranges: list[tuple[datetime, datetime]], column: str) -> Q | None:
    if not ranges:
        return None
    return reduce(or_, (Q(**{f"{column}__gte": a, f"{column}__lt": b}) for a, b in ranges))


@dataclass
class _Sources:
    """The querysets for one scope, range and filter set.

    `daily` and `hourly` are `Rollup` rows (team-total rows; per-user rows when the question is
    about users); `totals` are the same buckets' `TeamTotal` rows (one per team and
    bucket), set when no model or user filter applies: every figure that is not broken down by
    model or user reads those.
    """

    plan: SourcePlan
    daily: QuerySet | None
    hourly: QuerySet | None
    raw: QuerySet | None
    daily_totals: QuerySet | None = None
    hourly_totals: QuerySet | None = None

    @property
    def rollups(self) -> list[QuerySet]:
        return [qs for qs in (self.daily, self.hourly) if qs is not None]

    @property
    def by_team(self) -> bool:
        return self.daily_totals is not None or self.hourly_totals is not None or not self.rollups

    @property
    def totals(self) -> list[QuerySet]:
        """The rollup side at team resolution when available, else the rollup rows themselves."""
        if not self.by_team:
            return self.rollups
        return [qs for qs in (self.daily_totals, self.hourly_totals) if qs is not None]


def _filtered(
    scope: AccessScope,
    queryset: QuerySet,
    filters: EventFilter,
    *,
    rollup: bool,
    per_user: bool = False,
    team_totals: bool = False,
) -> QuerySet:
    queryset = scope.filter(queryset)
    if filters.team_id is not None:
        queryset = queryset.filter(team_id=filters.team_id)
    elif filters.team_alias:
        queryset = queryset.filter(team=scope.team(filters.team_alias))
    if team_totals:  # TeamTotal rows know teams only; they are used when no other filter applies
        return queryset
    queryset = _of_model_family(queryset, filters)
    if rollup:
        # Team-total rows answer unless the question is about users.
        queryset = queryset.filter(is_team_total=not (per_user or filters.user_id is not None))
    if filters.user_id is not None:
        queryset = queryset.filter(user_id=filters.user_id)
    return queryset


def _of_model_family(queryset: QuerySet, filters: EventFilter) -> QuerySet:
    """The seed's model_filter matches a family ("gpt-4" finds gpt-4 and gpt-4o)."""
    return queryset.filter(model__icontains=filters.model) if filters.model else queryset


def _about_users(filters: EventFilter, per_user: bool) -> bool:
    return per_user or filters.user_id is not None


def _sources(
    scope: AccessScope,
    filters: EventFilter,
    *,
    per_user: bool = False,
    by_model: bool = False,
    plan: SourcePlan | None = None,
) -> _Sources:
    """The sources of a question: `per_user` if it is broken down by user, `by_model` if by model
    or latency (a question about users that is also about models or latency reads raw events:
    per-user rows keep neither)."""
    if plan is None:
        plan = plan_sources(organization_id=scope.organization.pk, start=filters.start, end=filters.end)
    raw_ranges, hour_ranges, day_ranges = plan.raw, plan.hours, plan.days
    if _about_users(filters, per_user):
        # Per-user rows live in daily rollups only: the other whole hours are read from raw events.
        raw_ranges, hour_ranges = _ranges_merged(plan.raw + plan.hours), []
        if by_model or filters.model:
            raw_ranges, day_ranges = _ranges_merged(raw_ranges + plan.days), []
    days, hours = _within(day_ranges, "start"), _within(hour_ranges, "start")
    raw = _within(raw_ranges, "timestamp")

    def source(queryset: QuerySet, within: Q | None, *, rollup: bool, team_totals: bool = False) -> QuerySet | None:
        if within is None:
            return None
        return _filtered(
            scope, queryset.filter(within), filters, rollup=rollup, per_user=per_user, team_totals=team_totals
        )

    sources = _Sources(
        plan=plan,
        daily=source(DailyRollup.objects.all(), days, rollup=True),
        hourly=source(HourlyRollup.objects.all(), hours, rollup=True),
        raw=source(UsageEvent.objects.all(), raw, rollup=False),
    )
    if not filters.model and not _about_users(filters, per_user):
        sources.daily_totals = source(DailyTeamTotal.objects.all(), days, rollup=True, team_totals=True)
        sources.hourly_totals = source(HourlyTeamTotal.objects.all(), hours, rollup=True, team_totals=True)
    return sources


def _ranges_merged(ranges: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    merged: list[list[datetime]] = []
    for start, end in sorted(ranges):
        if merged and merged[-1][1] >= start:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


# --- aggregation ---------------------------------------------------------------------------------

_ROLLUP_SUMS = {
    name: Sum(name)
    for name in ("requests", "total_tokens", "cost", "errors", "cache_hits", "unpriced", "latency_sum_ms")
}
# What counts as a failed call, for every read of raw events (the rollups' SQL counts the same status).
IS_ERROR = Q(status=UsageEvent.Status.ERROR)

_RAW_SUMS = {
    "requests": Count("id"),
    "total_tokens": Sum("total_tokens"),
    "cost": Sum("cost"),
    "errors": Count("id", filter=IS_ERROR),
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
    series_rollups, series_raw = _series_sources(scope, filters, sources, "hour")
    for hourly in series_rollups:
        for row in hourly.values("start").annotate(cost=Sum("cost"), count=Sum("requests")).order_by():
            bucket = trend.setdefault(row["start"], {"cost": Decimal(0), "count": 0})
            bucket["cost"] += row["cost"] or 0
            bucket["count"] += row["count"] or 0
    if series_raw is not None:
        per_hour = series_raw.annotate(hour=TruncHour("timestamp", tzinfo=UTC)).values("hour")
        for row in per_hour.annotate(cost=Sum("cost"), count=Count("id")).order_by():
            bucket = trend.setdefault(row["hour"], {"cost": Decimal(0), "count": 0})
            bucket["cost"] += row["cost"] or 0
            bucket["count"] += row["count"]
    return dict(sorted(trend.items()))


def _series_sources(
    scope: AccessScope, filters: EventFilter, sources: _Sources, granularity: str
) -> tuple[list[QuerySet], QuerySet | None]:
    """(rollup querysets, raw events) whose rows, bucketed per hour or day, make a time series.

    Per hour, whole clean days are read from their hourly rows (they are kept): one row per team and
    hour unless a model filter applies. A user's rows are daily only, so a per-hour series of one
    user is read from raw events (such series span at most a week).
    """
    if granularity != "hour":
        return sources.totals, sources.raw
    if filters.user_id is not None:
        return [], scoped_events(scope=scope, filters=filters)
    hours = _within(sources.plan.hours + sources.plan.days, "start")
    if hours is None:
        return [], sources.raw
    if filters.model:
        hourly = _filtered(scope, HourlyRollup.objects.filter(hours), filters, rollup=True)
    else:
        hourly = _filtered(scope, HourlyTeamTotal.objects.filter(hours), filters, rollup=True, team_totals=True)
    return [hourly], sources.raw


def _rollup_sketch(queryset: QuerySet) -> dict[int, int]:
    """Merge the latency sketches of many rollup rows inside the database."""
    return _rollup_sketches_by_start(queryset, by_start=False).get(None, {})


# Merging sketches is the costliest part of a long-range read, and whole clean days' rows rarely
# change: merged sketches are cached under the query and a fingerprint of the rows it reads.
SKETCH_CACHE_SECONDS = 600


def _rollup_sketches_by_start(queryset: QuerySet, *, by_start: bool = True) -> dict[datetime | None, dict[int, int]]:
    """Merged latency sketches per rollup `start` (or all under None), merged inside the database.

    The cache key holds the SQL (so the organization, teams and range) and the rows' count, highest
    id, summed requests and latency: a recomputed bucket's rows are new rows with higher ids, so any
    change to the rows read gives a new key.
    """
    columns = ("start", "latency_sketch") if by_start else ("latency_sketch",)
    sql, params = queryset.values(*columns).query.sql_with_params()
    fingerprint = queryset.order_by().aggregate(
        rows=Count("id"), last=Max("id"), requests=Sum("requests"), latency=Sum("latency_sum_ms")
    )
    if not fingerprint["rows"]:
        return {}
    key = "rollup-sketch:" + hashlib.sha256(repr((by_start, sql, params, fingerprint)).encode()).hexdigest()
    merged = cache.get(key)
    if merged is None:
        merged = _merged_sketches(sql, params, by_start=by_start)
        cache.set(key, merged, SKETCH_CACHE_SECONDS)
    return merged


def _merged_sketches(sql: str, params, *, by_start: bool) -> dict[datetime | None, dict[int, int]]:
    start, group_by = ("s.start, ", "1, 2") if by_start else ("", "1")
    if connection.vendor == "postgresql":
        merge_sql = (
            f"SELECT {start}e.key::int, SUM(e.value::bigint) FROM ({sql}) AS s "  # noqa: S608 -- built by the ORM
            f"CROSS JOIN LATERAL jsonb_each_text(s.latency_sketch) AS e GROUP BY {group_by}"
        )
    else:  # SQLite
        merge_sql = (
            f"SELECT {start}CAST(e.key AS INTEGER), SUM(e.value) FROM ({sql}) AS s, "  # noqa: S608 -- built by the ORM
            f"json_each(s.latency_sketch) AS e GROUP BY {group_by}"
        )
    merged: dict[datetime | None, dict[int, int]] = {}
    with connection.cursor() as cursor:
        cursor.execute(merge_sql, params)
        for row in cursor.fetchall():
            bucket = merged.setdefault(_as_utc(row[0]) if by_start else None, {})
            bucket[int(row[-2])] = int(row[-1])
    return merged


def _user_model_shares(queryset: QuerySet, model_names: list[str]) -> list[dict]:
    """Requests, tokens and cost per user of these models, summed from per-user rows' `by_model`
    inside the database."""
    if not model_names:
        return []
    sql, params = queryset.values("user_id", "by_model").query.sql_with_params()
    match_params: list[Any]
    # Sums of integers that cannot overflow (see llmcost_project.db): numeric on PostgreSQL, the
    # exact aggregate on SQLite (where a cost share beyond 64 bits is kept as decimal text).
    if connection.vendor == "postgresql":
        share, total, each = "(m.value->>{})::numeric", "SUM", "CROSS JOIN LATERAL jsonb_each(s.by_model) AS m"
        match, match_params = "m.key = ANY(%s)", [model_names]  # one array parameter
    else:  # SQLite
        share, total, each = "json_extract(m.value, '$[{}]')", "EXACT_SUM", ", json_each(s.by_model) AS m"
        match, match_params = f"m.key IN ({', '.join(['%s'] * len(model_names))})", model_names
    shares_sql = (
        f"SELECT s.user_id, {total}({share.format(0)}), {total}({share.format(1)}), {total}({share.format(2)}) "  # noqa: S608
        f"FROM ({sql}) AS s {each} WHERE {match} GROUP BY 1"
    )
    with connection.cursor() as cursor:
        cursor.execute(shares_sql, [*params, *match_params])
        return [
            {"user_id": user, "requests": int(n), "total_tokens": int(tokens), "cost": from_units(cost)}
            for user, n, tokens, cost in cursor.fetchall()
        ]


def _as_utc(value) -> datetime:
    """A datetime read through a raw cursor (SQLite hands back text) as an aware UTC datetime."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _latency_sketch(sources: _Sources) -> dict[int, int]:
    parts = [_rollup_sketch(qs) for qs in sources.totals]
    if sources.raw is not None:
        raw = sources.raw.values(bucket=sketch.bucket_expression()).annotate(n=Count("id")).order_by()
        parts.append({row["bucket"]: row["n"] for row in raw})
    return sketch.merge(parts)


UNPRICED_MODELS_SHOWN = 20


def unpriced_models(models: dict[str, dict], *, limit: int = UNPRICED_MODELS_SHOWN) -> dict[str, int]:
    """Unpriced requests per model, most first, from per-model sums (team-total rollup rows keep
    the model and its unpriced count, so no raw read is needed): the models a price is missing for."""
    counts = [(model, sums["unpriced"]) for model, sums in models.items() if sums.get("unpriced")]
    return dict(sorted(counts, key=lambda item: (-item[1], item[0]))[:limit])


def dashboard_metrics(*, scope: AccessScope, filters: EventFilter) -> dict:
    """The seed's dashboard shape, plus latency percentiles, for one scope and range."""
    sources = _sources(scope, filters, by_model=True)
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
        "unpriced_models": unpriced_models(models),
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
    for queryset in sources.totals:
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
    "provider_requested",
    "prompt_tokens",
    "output_tokens",
    "total_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "prompt_cost",
    "output_cost",
    "cost",
    "is_priced",
    "cost_source",
    "list_cost",
    "usage",
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


def usage_by(
    *, scope: AccessScope, filters: EventFilter, fields: tuple[str, ...], user_ids: set[str] | None = None
) -> dict[tuple, dict]:
    """Cost and requests grouped by `fields` (e.g. ("team",), ("model",), ("team", "user_id")).

    One grouped query per source (daily rows, hourly rows, raw tail), never one per group. Grouping
    by user reads the per-user rollup rows; `user_ids` narrows the answer to those users.
    """
    sources = _sources(
        scope, filters, per_user="user_id" in fields or user_ids is not None, by_model="model" in fields
    )
    rollups = sources.rollups if "model" in fields else sources.totals
    parts: list[tuple[QuerySet, Aggregate]] = [(queryset, Sum("requests")) for queryset in rollups]
    if sources.raw is not None:
        parts.append((sources.raw, Count("id")))
    totals: dict[tuple, dict] = {}
    for queryset, requests in parts:
        if user_ids is not None:
            queryset = queryset.filter(user_id__in=user_ids)
        for row in queryset.values(*fields).annotate(cost=Sum("cost"), requests=requests).order_by():
            entry = totals.setdefault(tuple(row[name] for name in fields), {"cost": Decimal(0), "requests": 0})
            entry["cost"] += row["cost"] or 0
            entry["requests"] += row["requests"] or 0
    return totals


def top_usage(*, scope: AccessScope, filters: EventFilter, dimension: str, limit: int = 5) -> list[dict]:
    """The biggest spenders by `model` or `user_id` for a range: [{name, cost, requests}], costliest first."""
    if dimension not in ("model", "user_id"):
        raise ValueError(dimension)
    totals = usage_by(scope=scope, filters=filters, fields=(dimension,))
    ranked = sorted(totals.items(), key=lambda item: (-item[1]["cost"], item[0]))[:limit]
    return [{"name": key[0], **values} for key, values in ranked]


# --- the dashboard page ----------------------------------------------------------------------------
#
# One pass over the same three sources gives every breakdown the page shows: the rollup rows
# grouped by (team, model, query type) in the database, then split in Python into per-model,
# per-team and per-query-type figures whose totals are the page's KPIs. Nothing here runs a query
# per row, team or model.

HOURLY_UP_TO = timedelta(days=7)  # ranges up to this are charted per hour, longer ones per UTC day
BATCH_SPLIT_UP_TO = timedelta(days=7)  # the batched/unbatched split reads raw events: short ranges only

_PANEL_FIELDS = SUM_FIELDS  # every figure a rollup row keeps
_ROLLUP_PANEL_SUMS = {name: Sum(name) for name in _PANEL_FIELDS}
_RAW_PANEL_SUMS = {
    **_RAW_SUMS,
    "prompt_tokens": Sum("prompt_tokens"),
    "output_tokens": Sum("output_tokens"),
    "cached_tokens": Sum("cached_tokens"),
    "cache_write_tokens": Sum("cache_write_tokens"),
    "ttft_sum_ms": Sum("time_to_first_token_ms"),
    "ttft_count": Count("time_to_first_token_ms"),
}
_USER_PANEL_FIELDS = ("requests", "total_tokens", "cost")
LATENCY_EDGES_MS = (100, 250, 500, 1000, 2000, 5000, 10000)


def _zero() -> dict:
    return {**dict.fromkeys(_PANEL_FIELDS, 0), "cost": Decimal(0), "latency_sum_ms": 0.0, "ttft_sum_ms": 0.0}


def _accumulate(into: dict, row: dict) -> dict:
    for name in _PANEL_FIELDS:
        into[name] += row[name] or 0
    return into


def kpi_figures(sums: dict) -> dict:
    """The six headline figures from summed fields (same rounding as `dashboard_metrics`)."""
    requests = sums["requests"]
    return {
        "total_cost": sums["cost"],
        "total_tokens": sums["total_tokens"],
        "total_requests": requests,
        "avg_latency_ms": round(sums["latency_sum_ms"] / requests, 3) if requests else None,
        "cache_hit_rate": round(100 * sums["cache_hits"] / requests, 2) if requests else None,
        "error_rate": round(100 * sums["errors"] / requests, 2) if requests else None,
        "unpriced_requests": sums["unpriced"],
    }


def with_team(scope: AccessScope, filters: EventFilter) -> EventFilter:
    """Resolve the filter's team alias once through the scope (404 for a team the user cannot see)."""
    if not filters.team_alias or filters.team_id is not None:
        return filters
    return EventFilter(
        start=filters.start,
        end=filters.end,
        team_alias=filters.team_alias,
        model=filters.model,
        user_id=filters.user_id,
        team_id=scope.team(filters.team_alias).pk,
    )


def granularity_for(filters: EventFilter) -> str:
    return "hour" if filters.end - filters.start <= HOURLY_UP_TO else "day"


def bucket_starts(start: datetime, end: datetime, granularity: str) -> list[datetime]:
    floor, step = (hour_of, HOUR) if granularity == "hour" else (day_of, DAY)
    moment, starts = floor(start), []
    while moment < end:
        starts.append(moment)
        moment += step
    return starts


def latency_histogram(merged: dict[int, int]) -> list[dict]:
    """Counts per human-sized latency bucket, from a merged sketch (each value within 1 %)."""
    counts = [0] * (len(LATENCY_EDGES_MS) + 1)
    for index, count in merged.items():
        value = sketch.bucket_value(index)
        position = sum(1 for edge in LATENCY_EDGES_MS if value >= edge)
        counts[position] += count
    bounds = [None, *LATENCY_EDGES_MS, None]
    return [{"from_ms": bounds[i], "to_ms": bounds[i + 1], "count": counts[i]} for i in range(len(counts))]


def period_totals(*, scope: AccessScope, filters: EventFilter) -> dict:
    """Summed fields for a range (the previous period's KPIs): at most a few queries."""
    sources = _sources(scope, filters)
    totals = _zero()
    for queryset in sources.totals:
        _accumulate(totals, queryset.aggregate(**_ROLLUP_PANEL_SUMS))
    if sources.raw is not None:
        _accumulate(totals, sources.raw.aggregate(**_RAW_PANEL_SUMS))
    return totals


def dashboard_panels(*, scope: AccessScope, filters: EventFilter) -> dict:
    """Everything the dashboard charts for one scope, range and filter set, from rollups plus the raw tail.

    Returns totals; per model, team and query type sums; a time series (per hour up to 7 days, else
    per UTC day) with cost, tokens, requests, TTFT sums and P50/P95/P99 from the bucket's merged
    latency sketch; the whole range's merged sketch and its percentiles; requests, tokens and cost per user.
    """
    filters = with_team(scope, filters)
    granularity = granularity_for(filters)
    plan = plan_sources(organization_id=scope.organization.pk, start=filters.start, end=filters.end)
    sources = _sources(scope, filters, by_model=True, plan=plan)

    # 1. (team, model, query type) groups. Hourly rows keep no query type (None here): the query
    #    types of their hours are read from those hours' raw events, for that panel alone.
    groups: dict[tuple, dict] = {}
    keys = ("team_id", "model", "query_type")
    grouped: list[tuple[QuerySet, tuple[str, ...], dict]] = []
    if sources.daily is not None:
        grouped.append((sources.daily, keys, _ROLLUP_PANEL_SUMS))
    if sources.hourly is not None:
        grouped.append((sources.hourly, keys[:2], _ROLLUP_PANEL_SUMS))
    if sources.raw is not None:
        grouped.append((sources.raw, keys, _RAW_PANEL_SUMS))
    for queryset, grouped_by, sums in grouped:
        for row in queryset.values(*grouped_by).annotate(**sums).order_by():
            _accumulate(groups.setdefault(tuple(row.get(k) for k in keys), _zero()), row)
    query_types: dict[str, dict] = {}
    if sources.hourly is not None:
        hours_raw = _filtered(
            scope, UsageEvent.objects.filter(_within(plan.hours, "timestamp")), filters, rollup=False
        )
        for row in hours_raw.values("query_type").annotate(**_RAW_PANEL_SUMS).order_by():
            _accumulate(query_types.setdefault(row["query_type"], _zero()), row)
    totals = _zero()
    models: dict[str, dict] = {}
    teams: dict[int, dict] = {}
    for (team_id, model, query_type), sums in groups.items():
        _accumulate(totals, sums)
        _accumulate(models.setdefault(model, _zero()), sums)
        _accumulate(teams.setdefault(team_id, _zero()), sums)
        if query_type is not None:
            _accumulate(query_types.setdefault(query_type, _zero()), sums)

    # 2. The time series. Hourly charts read hourly rows for whole clean days too (they are kept).
    floor = hour_of if granularity == "hour" else day_of
    series_rollups, series_raw = _series_sources(scope, filters, sources, granularity)
    series = {start: _zero() for start in bucket_starts(filters.start, filters.end, granularity)}
    sketches: dict[datetime, dict[int, int]] = {start: {} for start in series}
    for queryset in series_rollups:
        for row in queryset.values("start").annotate(**_ROLLUP_PANEL_SUMS).order_by():
            _accumulate(series.setdefault(floor(row["start"]), _zero()), row)
        for start, part in _rollup_sketches_by_start(queryset).items():
            assert start is not None  # grouped by start
            sketches[floor(start)] = sketch.merge([sketches.get(floor(start), {}), part])
    if series_raw is not None:
        per_hour = series_raw.annotate(hour=TruncHour("timestamp", tzinfo=UTC))
        for row in per_hour.values("hour").annotate(**_RAW_PANEL_SUMS).order_by():
            _accumulate(series.setdefault(floor(row["hour"]), _zero()), row)
        buckets = per_hour.values("hour", bucket=sketch.bucket_expression()).annotate(n=Count("id")).order_by()
        for row in buckets:
            part = sketches.setdefault(floor(row["hour"]), {})
            part[row["bucket"]] = part.get(row["bucket"], 0) + row["n"]
    merged = sketch.merge(sketches.values())

    # 3. Who spends: users from the per-user rows (the same plan, so no second look at dirty marks);
    #    with a model filter, those rows' shares of the models it matched (the models above).
    #    Only what the users table shows is summed: these are the most numerous rows the page reads.
    # Per-user rows keep no model: the model filter applies to their shares and to the raw part.
    user_sources = _sources(scope, replace(filters, model=None), per_user=True, plan=plan)
    user_sums: dict[str, Aggregate] = {name: Sum(name) for name in _USER_PANEL_FIELDS}
    user_rows: list[Iterable[dict]] = [
        _user_model_shares(queryset, list(models))
        if filters.model
        else queryset.values("user_id").annotate(**user_sums).order_by()
        for queryset in user_sources.rollups
    ]
    if user_sources.raw is not None:
        raw_users = _of_model_family(user_sources.raw, filters)
        raw_sums = {name: _RAW_PANEL_SUMS[name] for name in _USER_PANEL_FIELDS}
        user_rows.append(raw_users.values("user_id").annotate(**raw_sums).order_by())
    users: dict[str, dict] = {}
    for rows in user_rows:
        for row in rows:
            entry = users.setdefault(row["user_id"], {"requests": 0, "total_tokens": 0, "cost": Decimal(0)})
            for name in _USER_PANEL_FIELDS:
                entry[name] += row[name] or 0

    def costliest(items: dict) -> dict:
        return dict(sorted(items.items(), key=lambda item: (-item[1]["cost"], str(item[0]))))

    return {
        "start": filters.start,
        "end": filters.end,
        "granularity": granularity,
        "totals": totals,
        "kpis": kpi_figures(totals),
        "models": costliest(models),
        "unpriced_models": unpriced_models(models),
        "teams": costliest(teams),
        "query_types": costliest(query_types),
        "users": costliest(users),
        "series": [
            {
                "start": start,
                **sums,
                "percentiles": sketch.quantiles(sketches.get(start, {}), PERCENTILES),
            }
            for start, sums in sorted(series.items())
        ],
        "latency_percentiles_ms": sketch.quantiles(merged, PERCENTILES),
        "latency_histogram": latency_histogram(merged),
    }


def cache_report(*, scope: AccessScope, filters: EventFilter, granularity: str) -> dict:
    """Clients' own cache reports (CacheStat) per bucket: hits, misses and lookup time. One query.

    Reports carry a team but no model or user, so only the range and team filters apply. The
    lookup time of a bucket is the reports' average weighted by their lookups (hits + misses).
    """
    filters = with_team(scope, filters)
    stats = scope.filter(CacheStat.objects.filter(timestamp__gte=filters.start, timestamp__lt=filters.end))
    if filters.team_id is not None:
        stats = stats.filter(team_id=filters.team_id)
    trunc = (TruncHour if granularity == "hour" else TruncDay)("timestamp", tzinfo=UTC)
    rows = (
        stats.annotate(bucket=trunc)
        .values("bucket")
        .annotate(
            hits=Sum("cache_hit"),
            misses=Sum("cache_miss"),
            weighted_ms=Sum(
                F("avg_cache_lookup_time_ms") * (F("cache_hit") + F("cache_miss")), output_field=FloatField()
            ),
            plain_ms=Sum("avg_cache_lookup_time_ms"),
            reports=Count("id"),
        )
        .order_by()
    )

    def lookup_ms(row: dict) -> float | None:
        lookups = row["hits"] + row["misses"]
        if lookups:
            return row["weighted_ms"] / lookups
        return row["plain_ms"] / row["reports"] if row["reports"] else None

    total = {"hits": 0, "misses": 0, "weighted_ms": 0.0, "plain_ms": 0.0, "reports": 0}
    series = {}
    for row in rows:
        sums = {key: row[key] or 0 for key in total}
        for key in total:
            total[key] += sums[key]
        series[row["bucket"]] = {"hits": sums["hits"], "misses": sums["misses"], "lookup_ms": lookup_ms(sums)}
    return {
        "reports": total["reports"],
        "hits": total["hits"],
        "misses": total["misses"],
        "lookup_ms": lookup_ms(total),
        "series": series,
    }


def batch_report(*, scope: AccessScope, filters: EventFilter, totals: dict) -> dict:
    """Batching: BatchRun records for the range and team, and (for ranges up to 7 days) the split of
    the events flagged `is_batched` against the rest.

    `totals` are the range's summed event fields (from `dashboard_panels`), so the unbatched side
    is exact without a second pass. The split reads raw events (rollups do not keep the flag),
    which is why it is limited to short ranges.
    """
    filters = with_team(scope, filters)
    runs = scope.filter(BatchRun.objects.filter(timestamp__gte=filters.start, timestamp__lt=filters.end))
    if filters.team_id is not None:
        runs = runs.filter(team_id=filters.team_id)
    records = runs.aggregate(
        batches=Count("id"),
        batched_requests=Sum("batch_size"),
        tokens=Sum("total_tokens"),
        cost=Sum("batch_cost"),
        avg_size=Avg("batch_size"),
        avg_latency_ms=Avg("batch_latency_ms"),
    )
    report: dict = {
        "records": {key: value or 0 for key, value in records.items()},
        "events": None,
    }
    if filters.end - filters.start <= BATCH_SPLIT_UP_TO:
        batched = (
            scoped_events(scope=scope, filters=filters)
            .filter(is_batched=True)
            .aggregate(requests=Count("id"), tokens=Sum("total_tokens"), cost=Sum("cost"), avg_size=Avg("batch_size"))
        )
        batched = {
            "requests": batched["requests"],
            "tokens": batched["tokens"] or 0,
            "cost": batched["cost"] or Decimal(0),
            "avg_size": batched["avg_size"],
        }
        report["events"] = {
            "batched": batched,
            "unbatched": {
                "requests": totals["requests"] - batched["requests"],
                "tokens": totals["total_tokens"] - batched["tokens"],
                "cost": totals["cost"] - batched["cost"],
            },
        }
    return report


def has_events(scope: AccessScope) -> bool:
    return scope.filter(UsageEvent.objects.all()).exists()


# --- the requests table -----------------------------------------------------------------------------

# ?sort= name -> column. Nothing else reaches order_by.
REQUEST_SORTS = {
    "time": "timestamp",
    "request_id": "request_id",
    "team": "team__alias",
    "user": "user_id",
    "model": "model",
    "query_type": "query_type",
    "status": "status",
    "prompt_tokens": "prompt_tokens",
    "output_tokens": "output_tokens",
    "total_tokens": "total_tokens",
    "cost": "cost",
    "latency": "latency_ms",
    "ttft": "time_to_first_token_ms",
    "cache": "cache_hit",
    "batched": "is_batched",
}
DEFAULT_REQUEST_SORT = "-time"


def request_ordering(sort: str) -> list:
    """order_by() arguments for a whitelisted sort name (`-` for descending); ties broken by id.

    NULLS LAST only for columns that can be null: on a NOT NULL column it would only stop
    PostgreSQL from reading an index in order (newest first by time would sort the whole range).
    """
    descending = sort.startswith("-")
    column = REQUEST_SORTS[sort.lstrip("-")]
    nullable = "__" not in column and UsageEvent._meta.get_field(column).null
    nulls = {"nulls_last": True} if nullable else {}
    if descending:
        return [F(column).desc(**nulls), F("id").desc()]
    return [F(column).asc(**nulls), F("id").asc()]


def request_page(*, events: QuerySet[UsageEvent], sort: str, offset: int, limit: int) -> list[dict]:
    """One page of requests as dicts (one query; no COUNT)."""
    rows = list(events.order_by(*request_ordering(sort)).values(*RECENT_FIELDS)[offset : offset + limit])
    for row in rows:
        row["team_alias"] = row.pop("team__alias")
    return rows


def reprice_runs(*, scope: AccessScope, limit: int = 10) -> list[RepriceRequest]:
    """The latest repricing runs of the organization's own price list changes, newest first. Their
    totals are organization-wide, so a principal limited to some teams sees none."""
    if not scope.sees_whole_organization:
        return []
    return list(RepriceRequest.objects.filter(organization=scope.organization).order_by("-created_at", "-id")[:limit])


def _window_sources(start: datetime, end: datetime) -> tuple[Q | None, Q | None]:
    """Rollup rows covering [start, end): daily rows for whole UTC days, hourly rows for the rest."""
    first_hour = ceil_to(start, hour_of, HOUR)
    first_day, last_day = ceil_to(first_hour, day_of, DAY), day_of(end)
    if first_day >= last_day:
        return None, Q(start__gte=first_hour, start__lt=end)
    daily = Q(start__gte=first_day, start__lt=last_day)
    hourly = Q(start__gte=first_hour, start__lt=first_day) | Q(start__gte=last_day, start__lt=end)
    return daily, hourly


def rolled_up_team_costs(*, organization_id: int, start: datetime, end: datetime) -> dict[int, Decimal]:
    """Cost in the window per team, from the team-total rollup rows only (whole UTC hours: a
    window starting on a half hour counts from the next hour), so it costs two grouped queries
    however many events there are. /metrics' budget gauges read it."""
    totals: dict[int, Decimal] = defaultdict(Decimal)
    daily, hourly = _window_sources(start, end)
    for model_class, within in ((DailyRollup, daily), (HourlyRollup, hourly)):
        if within is None:
            continue
        rows = (
            model_class.objects.filter(within, organization_id=organization_id, is_team_total=True)
            .values("team_id")
            .annotate(cost=Sum("cost"))
            .order_by()
        )
        for row in rows:
            totals[row["team_id"]] += row["cost"] or Decimal(0)
    return totals


def spend_anomalies(*, scope: AccessScope, filters: EventFilter) -> list[dict]:
    """The recorded spend anomalies (metrics.anomalies) of the visible teams whose hour starts in
    the range, oldest first: [{hour, team_alias, spend, baseline, threshold}]. The dashboard marks them."""
    anomalies = scope.filter(SpendAnomaly.objects.filter(hour__gte=filters.start, hour__lt=filters.end))
    if filters.team_id is not None:
        anomalies = anomalies.filter(team_id=filters.team_id)
    elif filters.team_alias:
        anomalies = anomalies.filter(team=scope.team(filters.team_alias))
    rows = anomalies.order_by("hour", "team__alias").values(
        "hour", "team__alias", "spend_usd", "baseline_median_usd", "threshold_usd"
    )
    return [
        {
            "hour": row["hour"],
            "team_alias": row["team__alias"],
            "spend": row["spend_usd"],
            "baseline": row["baseline_median_usd"],
            "threshold": row["threshold_usd"],
        }
        for row in rows
    ]
