"""Services that keep the hourly and daily rollups equal to the raw events.

Ingest marks the hours it touched (`mark_hours_dirty`, in the same transaction as the events).
`dirty_rollups_refresh` recomputes each dirty hour from raw events with one grouped query and
replaces that hour's rows, marks its day dirty, and clears the hour's mark only if no event
arrived meanwhile; then rebuilds dirty days from hourly rows. Every step is one transaction, so a
worker killed at any point leaves either the old rows and the mark, or the new rows and no mark:
nothing is lost or counted twice, and running it again (or concurrently) is harmless.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import reduce
from operator import or_

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Q, Sum

from . import sketch
from .models import DailyRollup, DirtyDay, DirtyHour, HourlyRollup, Rollup, UsageEvent

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
SUM_FIELDS = (
    "requests",
    "prompt_tokens",
    "output_tokens",
    "cached_tokens",
    "total_tokens",
    "cost",
    "errors",
    "cache_hits",
    "unpriced",
    "latency_sum_ms",
    "ttft_sum_ms",
    "ttft_count",
)


def hour_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def day_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _upsert_marks(model, column: str, organization_id: int, moments: Iterable[datetime]) -> None:
    """Insert marks, or bump the version of existing ones; sorted so concurrent writers lock in one order."""
    moments = sorted(set(moments))
    if not moments:
        return
    table = connection.ops.quote_name(model._meta.db_table)
    adapt = connection.ops.adapt_datetimefield_value
    values = ", ".join(["(%s, %s, 1)"] * len(moments))
    sql = (
        f"INSERT INTO {table} (organization_id, {column}, version) VALUES {values} "  # noqa: S608 -- names from models
        f"ON CONFLICT (organization_id, {column}) DO UPDATE SET version = {table}.version + 1"
    )
    params = [value for moment in moments for value in (organization_id, adapt(moment))]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def mark_hours_dirty(*, organization_id: int, moments: Iterable[datetime]) -> None:
    _upsert_marks(DirtyHour, "hour", organization_id, (hour_of(m) for m in moments))


def _mark_days_dirty(*, organization_id: int, moments: Iterable[datetime]) -> None:
    _upsert_marks(DirtyDay, "day", organization_id, (day_of(m) for m in moments))


def _try_lock(*parts) -> bool:
    """Keep two workers off the same bucket (PostgreSQL); SQLite already runs writers one at a time."""
    if connection.vendor != "postgresql":
        return True
    key = zlib.crc32(":".join(str(p) for p in parts).encode())
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [key])
        return cursor.fetchone()[0]


class _Totals:
    __slots__ = ("latency", "sums")

    def __init__(self):
        self.sums: dict[str, object] = dict.fromkeys(SUM_FIELDS, 0)
        self.sums["cost"] = Decimal(0)
        self.latency: dict[int, int] = {}

    def add(self, values: dict, latency: dict[int, int]) -> None:
        for name in SUM_FIELDS:
            self.sums[name] += values[name] or 0
        for index, count in latency.items():
            self.latency[index] = self.latency.get(index, 0) + count

    def row(self, model_class, **keys) -> Rollup:
        return model_class(**keys, **self.sums, latency_sketch=sketch.as_json(self.latency))


def _build_rows(model_class, organization_id: int, start: datetime, groups: Iterable[tuple[tuple, dict, dict]]):
    """Rows per (team, model, user), and team-total rows per (team, model, query type).

    `groups` yields ((team_id, model, user_id, query_type), sums, latency counts); either of
    user_id and query_type may be None when the source does not carry it (daily rebuilds read
    per-user and team-total hourly rows separately).
    """
    per_user: dict[tuple, _Totals] = {}
    per_team: dict[tuple, _Totals] = {}
    for (team_id, model, user_id, query_type), values, latency in groups:
        if user_id is not None:
            per_user.setdefault((team_id, model, user_id), _Totals()).add(values, latency)
        if query_type is not None:
            per_team.setdefault((team_id, model, query_type), _Totals()).add(values, latency)
    common = {"organization_id": organization_id, "start": start}
    rows = [
        totals.row(
            model_class, **common, team_id=team_id, model=model, user_id=user_id, query_type="", is_team_total=False
        )
        for (team_id, model, user_id), totals in per_user.items()
    ]
    rows += [
        totals.row(
            model_class, **common, team_id=team_id, model=model, user_id="", query_type=query_type, is_team_total=True
        )
        for (team_id, model, query_type), totals in per_team.items()
    ]
    return rows


def _hour_groups(organization_id: int, hour: datetime):
    """One grouped query over the hour's raw events: sums per team, model, user and latency bucket."""
    grouped = (
        UsageEvent.objects.filter(organization_id=organization_id, timestamp__gte=hour, timestamp__lt=hour + HOUR)
        .values("team_id", "model", "user_id", "query_type", bucket=sketch.bucket_expression())
        .annotate(
            requests=Count("id"),
            prompt_tokens=Sum("prompt_tokens"),
            output_tokens=Sum("output_tokens"),
            cached_tokens=Sum("cached_tokens"),
            total_tokens=Sum("total_tokens"),
            cost=Sum("cost"),
            errors=Count("id", filter=Q(status=UsageEvent.Status.ERROR)),
            cache_hits=Count("id", filter=Q(cache_hit=True)),
            unpriced=Count("id", filter=Q(is_priced=False)),
            latency_sum_ms=Sum("latency_ms"),
            ttft_sum_ms=Sum("time_to_first_token_ms"),
            ttft_count=Count("time_to_first_token_ms"),
        )
        .order_by()
    )
    for row in grouped:
        key = (row["team_id"], row["model"], row["user_id"], row["query_type"])
        yield key, row, {row["bucket"]: row["requests"]}


def hour_rollup_refresh(*, organization_id: int, hour: datetime) -> bool:
    """Recompute one hour from raw events. False if another worker holds it (it will finish it)."""
    with transaction.atomic():
        if not _try_lock("hour", organization_id, hour.isoformat()):
            return False
        seen_version = (
            DirtyHour.objects.filter(organization_id=organization_id, hour=hour)
            .values_list("version", flat=True)
            .first()
        )
        events = UsageEvent.objects.filter(
            organization_id=organization_id, timestamp__gte=hour, timestamp__lt=hour + HOUR
        )
        if hour < retention_cutoff() and not events.exists():
            # Pruned (whole hours are pruned, and never while dirty): its rollups are all that is
            # left, so a stray mark must not replace them with nothing.
            DirtyHour.objects.filter(organization_id=organization_id, hour=hour).delete()
            return True
        rows = _build_rows(HourlyRollup, organization_id, hour, _hour_groups(organization_id, hour))
        HourlyRollup.objects.filter(organization_id=organization_id, start=hour).delete()
        HourlyRollup.objects.bulk_create(rows, batch_size=1000)
        _mark_days_dirty(organization_id=organization_id, moments=[hour])
        if seen_version is not None:
            DirtyHour.objects.filter(organization_id=organization_id, hour=hour, version=seen_version).delete()
    return True


def day_rollup_refresh(*, organization_id: int, day: datetime) -> bool:
    """Rebuild one UTC day's rows from its hourly rows."""
    with transaction.atomic():
        if not _try_lock("day", organization_id, day.isoformat()):
            return False
        seen_version = (
            DirtyDay.objects.filter(organization_id=organization_id, day=day).values_list("version", flat=True).first()
        )
        hourly = HourlyRollup.objects.filter(organization_id=organization_id, start__gte=day, start__lt=day + DAY)
        rows_of_day = hourly.values(
            "team_id", "model", "user_id", "query_type", "is_team_total", "latency_sketch", *SUM_FIELDS
        )

        def groups():
            for row in rows_of_day.iterator(chunk_size=5000):
                if row["is_team_total"]:
                    key = (row["team_id"], row["model"], None, row["query_type"])
                else:
                    key = (row["team_id"], row["model"], row["user_id"], None)
                yield key, row, {int(index): count for index, count in row["latency_sketch"].items()}

        rows = _build_rows(DailyRollup, organization_id, day, groups())
        DailyRollup.objects.filter(organization_id=organization_id, start=day).delete()
        DailyRollup.objects.bulk_create(rows, batch_size=1000)
        if seen_version is not None:
            DirtyDay.objects.filter(organization_id=organization_id, day=day, version=seen_version).delete()
    return True


@dataclass
class RefreshResult:
    hours: int = 0
    days: int = 0
    skipped: int = 0


# SQLite has one writer at a time and a waiting writer polls with growing sleeps (up to 100 ms):
# back-to-back rollup transactions would starve ingest, so the rollup leaves gaps between them.
SQLITE_WRITER_GAP_SECONDS = 0.05


def _yield_to_other_writers() -> None:
    if connection.vendor == "sqlite":
        time.sleep(SQLITE_WRITER_GAP_SECONDS)


def dirty_rollups_refresh(*, time_budget_seconds: float = 50.0) -> RefreshResult:
    """Recompute the hours and days dirty when called (newly dirtied ones wait for the next run)."""
    result = RefreshResult()
    deadline = time.monotonic() + time_budget_seconds
    for organization_id, hour in list(DirtyHour.objects.order_by("hour").values_list("organization_id", "hour")):
        if time.monotonic() > deadline:
            return result
        done = hour_rollup_refresh(organization_id=organization_id, hour=hour)
        result.hours += done
        result.skipped += not done
        _yield_to_other_writers()
    for organization_id, day in list(DirtyDay.objects.order_by("day").values_list("organization_id", "day")):
        if time.monotonic() > deadline:
            return result
        done = day_rollup_refresh(organization_id=organization_id, day=day)
        result.days += done
        result.skipped += not done
        _yield_to_other_writers()
    return result


def retention_cutoff(now: datetime | None = None) -> datetime:
    """Raw events before this hour are pruned; their hours live on in the rollups only."""
    now = now or datetime.now(UTC)
    return hour_of(now - timedelta(days=settings.RAW_EVENT_RETENTION_DAYS))


def raw_events_prune(*, chunk_size: int = 5000, time_budget_seconds: float = 300.0) -> int:
    """Delete raw events older than the retention window in bounded chunks; rollups are kept.

    Whole hours go at once, and never an hour still marked dirty: its rollup must be computed from
    its complete raw events first. (An hour is thus either intact or gone, so recomputing any
    dirty hour is always safe.)
    """
    cutoff = retention_cutoff()
    old = UsageEvent.objects.filter(timestamp__lt=cutoff)
    pending = list(DirtyHour.objects.filter(hour__lt=cutoff).values_list("organization_id", "hour"))
    if pending:
        old = old.exclude(
            reduce(or_, (Q(organization_id=o, timestamp__gte=h, timestamp__lt=h + HOUR) for o, h in pending))
        )
    deadline = time.monotonic() + time_budget_seconds
    deleted = 0
    while time.monotonic() < deadline:
        ids = list(old.values_list("id", flat=True)[:chunk_size])
        if not ids:
            break
        deleted += UsageEvent.objects.filter(id__in=ids).delete()[0]
    return deleted
