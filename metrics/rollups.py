"""Services that keep the hourly and daily rollups equal to the raw events.

Ingest marks the hours it touched (`mark_hours_dirty`, in the same transaction as the events).
`dirty_rollups_refresh` recomputes each dirty hour from raw events with one grouped query and
replaces that hour's rows, marks its day dirty, and clears the hour's mark only if no event
arrived meanwhile; then recomputes the dirty days from raw events the same way. Every step is one transaction, so a
worker killed at any point leaves either the old rows and the mark, or the new rows and no mark:
nothing is lost or counted twice, and running it again (or concurrently) is harmless.

Each bucket has team-total `Rollup` rows (hourly per team and model, daily per team, model and
query type), daily per-user rows (per team and user, sums only) and one `TeamTotal` row per team:
a few rows per hundred events, whatever the traffic (see `Rollup`). On PostgreSQL a backlog is processed in chunks
of hours (and days) of one organization: one `INSERT … SELECT` builds every row of the chunk,
latency sketch included (`json_object_agg`), so the events never leave the database; the commit
does not wait for the WAL flush (`synchronous_commit = off`: a crash may lose the last commits'
rows *and* their cleared marks together, so the hours are simply recomputed). SQLite builds the
rows in Python, one hour per transaction, leaving gaps for ingest's writes. Several runs may share
a backlog (see `helpers_wanted`): each takes the chunks no other run holds or has finished.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import reduce
from itertools import zip_longest
from operator import or_
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Q

from billing.pricing.money import to_units
from llmcost_project.db import Sum, sqlite_integer
from teams.models import Organization

from . import sketch
from .failures import JobRun
from .models import (
    DailyRollup,
    DailyTeamTotal,
    DirtyDay,
    DirtyHour,
    HourlyRollup,
    HourlyTeamTotal,
    Rollup,
    UsageEvent,
)

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
SUM_FIELDS = (
    "requests",
    "prompt_tokens",
    "output_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "total_tokens",
    "cost",
    "errors",
    "cache_hits",
    "unpriced",
    "latency_sum_ms",
    "ttft_sum_ms",
    "ttft_count",
)


# The rollup tables and bucket length of each unit.
_GRAINS: dict[str, tuple[Any, Any, timedelta]] = {
    "hour": (HourlyRollup, HourlyTeamTotal, HOUR),
    "day": (DailyRollup, DailyTeamTotal, DAY),
}


def hour_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def day_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def ceil_to(moment: datetime, floor, step: timedelta) -> datetime:
    """The first bucket boundary at or after `moment` (`floor` is hour_of or day_of)."""
    start = floor(moment)
    return start if start == moment else start + step


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


def bucket_ranges(starts: Iterable[datetime], step: timedelta) -> list[tuple[datetime, datetime]]:
    """Consecutive bucket starts merged into [start, end) ranges."""
    ranges: list[list[datetime]] = []
    for start in sorted(starts):
        if ranges and ranges[-1][1] == start:
            ranges[-1][1] = start + step
        else:
            ranges.append([start, start + step])
    return [(a, b) for a, b in ranges]


def _mark_days_dirty(*, organization_id: int, moments: Iterable[datetime]) -> None:
    _upsert_marks(DirtyDay, "day", organization_id, (day_of(m) for m in moments))


def _lock_key(*parts) -> int:
    return zlib.crc32(":".join(str(p) for p in parts).encode())


def _try_locks(*, kind: str, organization_id: int, moments: list) -> list:
    """The buckets (of `moments`, ISO strings or datetimes) this transaction now holds; the others
    are held by another worker, which will finish them. One round trip for a whole chunk. SQLite
    already runs writers one at a time."""
    if connection.vendor != "postgresql":
        return list(moments)
    keys = [_lock_key(kind, organization_id, m if isinstance(m, str) else m.isoformat()) for m in moments]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT ord FROM unnest(%s::bigint[]) WITH ORDINALITY AS k(key, ord) "
            "WHERE pg_try_advisory_xact_lock(k.key) ORDER BY ord",
            [keys],
        )
        held = {row[0] for row in cursor.fetchall()}
    return [m for i, m in enumerate(moments, start=1) if i in held]


def _fast_commit() -> None:
    """Rollup rows can always be recomputed from raw events: no need to wait for the WAL flush. And a
    chunk's grouping fits in memory instead of spilling to disk."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit = off; SET LOCAL work_mem = '64MB'")


class _Totals:
    __slots__ = ("by_model", "latency", "sums")

    def __init__(self):
        self.sums: dict[str, Any] = dict.fromkeys(SUM_FIELDS, 0)
        self.sums["cost"] = Decimal(0)
        self.latency: dict[int, int] = {}
        self.by_model: dict[str, list[int]] = {}

    def add(self, values: dict, latency: dict[int, int], model: str | None = None) -> None:
        for name in SUM_FIELDS:
            self.sums[name] += values[name] or 0
        for index, count in latency.items():
            self.latency[index] = self.latency.get(index, 0) + count
        if model is not None:
            share = self.by_model.setdefault(model, [0, 0, 0])
            share[0] += values["requests"]
            share[1] += values["total_tokens"] or 0
            share[2] += to_units(values["cost"] or 0)

    def row(self, model_class, **keys) -> Rollup:
        # A cost share beyond 64 bits is kept as decimal text: SQLite's JSON reads a larger
        # integer as a float (`_user_model_shares` sums both exactly).
        by_model = {model: [n, tokens, sqlite_integer(cost)] for model, (n, tokens, cost) in self.by_model.items()}
        extra = {"by_model": by_model} if by_model else {}
        return model_class(**keys, **self.sums, latency_sketch=sketch.as_json(self.latency), **extra)


def _build_rows(
    model_class, organization_id: int, start: datetime, groups: Iterable[tuple[tuple, dict, dict]], *, daily: bool
):
    """Team-total rows per (team, model), daily per (team, model, query type); daily also per-user
    rows per (team, user), with sums and each model's share but no sketch (see `Rollup`).

    `groups` yields ((team_id, model, user_id, query_type), sums, latency counts).
    """
    users: dict[tuple, _Totals] = {}
    per_team: dict[tuple, _Totals] = {}
    for (team_id, model, user_id, query_type), values, latency in groups:
        if daily:
            users.setdefault((team_id, user_id), _Totals()).add(values, {}, model)
        per_team.setdefault((team_id, model, query_type if daily else ""), _Totals()).add(values, latency)
    common = {"organization_id": organization_id, "start": start}
    rows = [
        totals.row(
            model_class, **common, team_id=team_id, model="", user_id=user_id, query_type="", is_team_total=False
        )
        for (team_id, user_id), totals in users.items()
    ]
    rows += [
        totals.row(
            model_class, **common, team_id=team_id, model=model, user_id="", query_type=query_type, is_team_total=True
        )
        for (team_id, model, query_type), totals in per_team.items()
    ]
    return rows


def _event_groups(organization_id: int, start: datetime, end: datetime):
    """One grouped query over raw events: sums per team, model, user, query type and latency bucket."""
    grouped = (
        UsageEvent.objects.filter(organization_id=organization_id, timestamp__gte=start, timestamp__lt=end)
        .values("team_id", "model", "user_id", "query_type", bucket=sketch.bucket_expression())
        .annotate(
            requests=Count("id"),
            prompt_tokens=Sum("prompt_tokens"),
            output_tokens=Sum("output_tokens"),
            cached_tokens=Sum("cached_tokens"),
            cache_write_tokens=Sum("cache_write_tokens"),
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


def _team_totals(total_class, rows: list[Rollup]) -> list:
    """One row per team from the bucket's team-total rows (which cover every event once)."""
    per_team: dict[tuple, _Totals] = {}
    for row in rows:
        if row.is_team_total:
            values = {name: getattr(row, name) for name in SUM_FIELDS}
            latency = {int(index): count for index, count in row.latency_sketch.items()}
            per_team.setdefault((row.organization_id, row.start, row.team_id), _Totals()).add(values, latency)
    return [
        totals.row(total_class, organization_id=organization_id, start=start, team_id=team_id)
        for (organization_id, start, team_id), totals in per_team.items()
    ]


def _seen_versions(model, column: str, organization_id: int, moments: list[datetime]) -> dict[datetime, int]:
    marks = model.objects.filter(organization_id=organization_id, **{f"{column}__in": moments})
    return dict(marks.values_list(column, "version"))


def _clear_marks(model, column: str, organization_id: int, seen: dict[datetime, int]) -> None:
    """Delete the marks still at the version read before recomputing (a newer version stays dirty).
    One condition per version (there are few) rather than one per mark: a chunk has hundreds."""
    by_version: dict[int, list[datetime]] = {}
    for moment, version in seen.items():
        by_version.setdefault(version, []).append(moment)
    if by_version:
        unchanged = reduce(
            or_, (Q(version=version, **{f"{column}__in": moments}) for version, moments in by_version.items())
        )
        model.objects.filter(unchanged, organization_id=organization_id).delete()


def hour_rollup_refresh(*, organization_id: int, hour: datetime) -> bool:
    """Recompute one dirty hour from raw events. False if another worker holds it (it will finish it)
    or it is no longer marked dirty."""
    return hours_rollup_refresh(organization_id=organization_id, hours=[hour]) == 1


def _pruned(organization_id: int, starts: list[datetime], step: timedelta) -> list[datetime]:
    """The periods whose raw events retention has deleted: past the cutoff and empty."""
    cutoff = prune_cutoff()
    return [
        start
        for start in starts
        if start < cutoff
        and not UsageEvent.objects.filter(
            organization_id=organization_id, timestamp__gte=start, timestamp__lt=start + step
        ).exists()
    ]


def hours_rollup_refresh(*, organization_id: int, hours: list[datetime]) -> int:
    """Recompute the dirty ones of these hours of one organization from raw events in one
    transaction; returns how many (hours another worker holds are left to it)."""
    with transaction.atomic():
        _fast_commit()
        hours = _try_locks(kind="hour", organization_id=organization_id, moments=sorted(hours))
        seen = _seen_versions(DirtyHour, "hour", organization_id, hours)
        # An hour no longer marked was finished by another worker since the caller read the marks.
        hours = [hour for hour in hours if hour in seen]
        if not hours:
            return 0
        pruned = _pruned(organization_id, hours, HOUR)
        # Pruned (whole hours are pruned, and never while dirty): their rollups are all that is
        # left, so a stray mark must not replace them with nothing.
        recompute = [hour for hour in hours if hour not in pruned]
        if recompute:
            _recompute(organization_id, recompute, "hour")
            _mark_days_dirty(organization_id=organization_id, moments=recompute)
        _clear_marks(DirtyHour, "hour", organization_id, seen)
    return len(hours)


def _recompute(organization_id: int, starts: list[datetime], unit: str) -> None:
    """Replace the rows of these buckets (`unit` "hour" or "day") by rows computed from their raw events."""
    rollup_class, total_class, step = _GRAINS[unit]
    rollup_class.objects.filter(organization_id=organization_id, start__in=starts).delete()
    total_class.objects.filter(organization_id=organization_id, start__in=starts).delete()
    if connection.vendor == "postgresql":
        _insert_sql(organization_id, starts, unit)
        return
    for start in starts:
        groups = _event_groups(organization_id, start, start + step)
        rows = _build_rows(rollup_class, organization_id, start, groups, daily=unit == "day")
        rollup_class.objects.bulk_create(rows, batch_size=1000)
        total_class.objects.bulk_create(_team_totals(total_class, rows), batch_size=1000)


def _table(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)


_ROW_COLUMNS = ", ".join(SUM_FIELDS) + ", latency_sketch"
_KEY_COLUMNS = "organization_id, start, team_id, model, user_id, query_type, is_team_total"


_EVENT_SUMS = """count(*) AS requests, sum(prompt_tokens) AS prompt_tokens, sum(output_tokens) AS output_tokens,
    sum(cached_tokens) AS cached_tokens, sum(cache_write_tokens) AS cache_write_tokens,
    sum(total_tokens) AS total_tokens, sum(cost) AS cost,
    count(*) FILTER (WHERE is_error) AS errors, count(*) FILTER (WHERE cache_hit) AS cache_hits,
    count(*) FILTER (WHERE NOT is_priced) AS unpriced, sum(latency_ms) AS latency_sum_ms,
    coalesce(sum(time_to_first_token_ms), 0) AS ttft_sum_ms, count(time_to_first_token_ms) AS ttft_count"""


def _insert_sql(organization_id: int, starts: list[datetime], unit: str) -> None:
    """Every row of these buckets (`unit` "hour" or "day") in one statement.

    The events are read once, keeping only the columns the rollup needs; from those: the sums per
    team and model (and query type, daily), per team and user (daily), and the request counts per
    latency bucket from which the sketches are built; team totals are summed from both. Grouping
    sums and buckets separately keeps every grouping narrow, which makes it several times cheaper
    than one grouping of everything. Money columns hold integers, so their sums are exact. JSON
    objects are built as text and parsed once (`json_object_agg(…)::jsonb`): measured 10 % cheaper
    per statement than building jsonb pair by pair.
    """
    rollup_class, total_class, step = _GRAINS[unit]
    events, rollups, team_totals = _table(UsageEvent), _table(rollup_class), _table(total_class)
    daily = unit == "day"
    # Hourly rows keep no query type; daily ones do, and daily buckets also get per-user rows.
    keys = ", ".join(("model", "query_type") if daily else ("model",))
    # The buckets as time ranges (a backlog's chunk is usually one): an index range scan each, and
    # no per-event test against a list of buckets.
    spans = bucket_ranges(starts, step)
    where = (
        "e.organization_id = %(org)s AND ("
        + " OR ".join(f"""(e."timestamp" >= %(from{i})s AND e."timestamp" < %(to{i})s)""" for i in range(len(spans)))
        + ")"
    )
    sum_columns = ", ".join(SUM_FIELDS)
    users = (
        f"""
        user_models AS (
            SELECT organization_id, start, team_id, user_id,
                   json_object_agg(model, json_build_array(requests, total_tokens, cost))::jsonb AS by_model
            FROM (
                SELECT organization_id, start, team_id, user_id, model, count(*) AS requests,
                       sum(total_tokens) AS total_tokens, sum(cost) AS cost
                FROM ev GROUP BY 1, 2, 3, 4, 5
            ) AS m
            GROUP BY 1, 2, 3, 4
        ),
        users AS (
            INSERT INTO {rollups} ({_KEY_COLUMNS}, {_ROW_COLUMNS}, by_model)
            SELECT organization_id, start, team_id, '', user_id, '', false, {sum_columns}, '{{}}'::jsonb, by_model
            FROM (
                SELECT organization_id, start, team_id, user_id, {_EVENT_SUMS}
                FROM ev GROUP BY organization_id, start, team_id, user_id
            ) AS u JOIN user_models USING (organization_id, start, team_id, user_id)
        ),"""  # noqa: S608 -- table names come from the models
        if daily
        else ""
    )
    sql = f"""
        WITH ev AS MATERIALIZED (
            SELECT e.organization_id, date_trunc('{unit}', e."timestamp", 'UTC') AS start, e.team_id, e.model,
                   {"e.query_type, e.user_id," if daily else ""}
                   CASE WHEN e.latency_ms <= 0 THEN %(zero)s ELSE CEIL(LN(e.latency_ms) / %(gamma)s)::integer END
                       AS bucket,
                   e.prompt_tokens, e.output_tokens, e.cached_tokens, e.cache_write_tokens, e.total_tokens, e.cost,
                   e.status = %(error)s AS is_error, e.cache_hit, e.is_priced, e.latency_ms, e.time_to_first_token_ms
            FROM {events} e WHERE {where}
        ),
        sums AS MATERIALIZED (
            SELECT organization_id, start, team_id, {keys}, {_EVENT_SUMS}
            FROM ev GROUP BY organization_id, start, team_id, {keys}
        ),
        counts AS MATERIALIZED (
            SELECT start, team_id, {keys}, bucket, count(*) AS requests
            FROM ev GROUP BY start, team_id, {keys}, bucket
        ),
        sketches AS (
            SELECT start, team_id, {keys}, json_object_agg(bucket, requests)::jsonb AS sketch
            FROM counts GROUP BY start, team_id, {keys}
        ),
        team_sketches AS (
            SELECT start, team_id, json_object_agg(bucket, requests)::jsonb AS sketch
            FROM (SELECT start, team_id, bucket, sum(requests) AS requests FROM counts GROUP BY 1, 2, 3) AS b
            GROUP BY start, team_id
        ),{users}
        teams AS (
            INSERT INTO {team_totals} (organization_id, start, team_id, {_ROW_COLUMNS})
            SELECT organization_id, start, team_id, {sum_columns}, sketch
            FROM (
                SELECT organization_id, start, team_id, {", ".join(f"sum({f}) AS {f}" for f in SUM_FIELDS)}
                FROM sums GROUP BY 1, 2, 3
            ) AS s JOIN team_sketches USING (start, team_id)
        )
        INSERT INTO {rollups} ({_KEY_COLUMNS}, {_ROW_COLUMNS}, by_model)
        SELECT organization_id, start, team_id, model, '', {"query_type" if daily else "''"}, true,
               {sum_columns}, sketch, '{{}}'::jsonb
        FROM sums JOIN sketches USING (start, team_id, {keys})
    """  # noqa: S608 -- table and column names come from the models
    params: dict[str, Any] = {
        "zero": sketch.ZERO_BUCKET,
        "gamma": sketch.LN_GAMMA,
        "error": UsageEvent.Status.ERROR.value,
        "org": organization_id,
        **{f"from{i}": span[0] for i, span in enumerate(spans)},
        **{f"to{i}": span[1] for i, span in enumerate(spans)},
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def day_rollup_refresh(*, organization_id: int, day: datetime) -> bool:
    """Recompute one dirty UTC day from raw events."""
    return days_rollup_refresh(organization_id=organization_id, days=[day]) == 1


def days_rollup_refresh(*, organization_id: int, days: list[datetime]) -> int:
    """Recompute the dirty ones of these UTC days of one organization from raw events in one
    transaction; returns how many.

    Per-user rows live only in daily rollups, so a day is recomputed from its raw events, which
    are complete: pruning removes whole days, under this same lock, and never a dirty one.
    """
    with transaction.atomic():
        _fast_commit()
        days = _try_locks(kind="day", organization_id=organization_id, moments=sorted(days))
        seen = _seen_versions(DirtyDay, "day", organization_id, days)
        days = [day for day in days if day in seen]  # see hours_rollup_refresh
        if not days:
            return 0
        pruned = _pruned(organization_id, days, DAY)
        # A pruned day's rollups are all that is left of it (see hours_rollup_refresh).
        recompute = [day for day in days if day not in pruned]
        if recompute:
            _recompute(organization_id, recompute, "day")
        _clear_marks(DirtyDay, "day", organization_id, seen)
    return len(days)


@dataclass
class RefreshResult:
    hours: int = 0
    days: int = 0
    skipped: int = 0  # held, or already finished, by another run
    failed: int = 0  # chunks that raised (recorded as JobFailure; their marks stay for a later run)


# SQLite has one writer at a time and a waiting writer polls with growing sleeps (up to 100 ms):
# back-to-back rollup transactions would starve ingest, so the rollup leaves gaps between them.
SQLITE_WRITER_GAP_SECONDS = 0.05
# Buckets per transaction on PostgreSQL: large enough that a backlog costs a few statements per
# week of events, small enough that a transaction stays around a second at 10 M events (longer
# chunks also cost more per event: the planner then misjudges the groupings' size).
HOURS_PER_CHUNK = 168
DAYS_PER_CHUNK = 7


def _yield_to_other_writers() -> None:
    if connection.vendor == "sqlite":
        time.sleep(SQLITE_WRITER_GAP_SECONDS)


def _chunks(marks: list[tuple[int, datetime]], size: int) -> list[tuple[int, list[datetime]]]:
    """Marks (oldest first) grouped per organization into chunks of at most `size` buckets, taken in
    turns (every organization's oldest chunk, then every one's next...): one organization's
    backlog never delays another's newest hours."""
    if connection.vendor != "postgresql":
        size = 1
    per_organization: dict[int, list[list[datetime]]] = {}
    for organization_id, moment in marks:
        chunks = per_organization.setdefault(organization_id, [])
        if not chunks or len(chunks[-1]) >= size:
            chunks.append([])
        chunks[-1].append(moment)
    turns = zip_longest(*([(org, chunk) for chunk in chunks] for org, chunks in per_organization.items()))
    return [chunk for turn in turns for chunk in turn if chunk is not None]


def helpers_wanted() -> int:
    """How many more runs should share the dirty hours with this one: up to ROLLUP_WORKERS - 1 when
    there is more than a chunk of them. None on SQLite, which has one writer at a time."""
    if connection.vendor != "postgresql" or settings.ROLLUP_WORKERS == 1:
        return 0
    backlog = DirtyHour.objects.all()[: HOURS_PER_CHUNK + 1].count()
    return settings.ROLLUP_WORKERS - 1 if backlog > HOURS_PER_CHUNK else 0


ROLLUP_JOB = "rollups"


def dirty_rollups_refresh(*, time_budget_seconds: float = 50.0) -> RefreshResult:
    """Recompute the hours and days dirty when called (newly dirtied ones wait for the next run).

    Failures are isolated per bucket (see `metrics.failures`): a chunk that raises is retried
    bucket by bucket at once, each bucket that fails alone is recorded against its organization
    (its mark stays, and it waits for its retry), and everything else goes on.
    """
    result = RefreshResult()
    deadline = time.monotonic() + time_budget_seconds
    run = JobRun(ROLLUP_JOB)
    for unit, refresh, marks, size in (
        ("hour", hours_rollup_refresh, DirtyHour.objects.order_by("hour").values_list("organization_id", "hour"),
         HOURS_PER_CHUNK),
        ("day", days_rollup_refresh, DirtyDay.objects.order_by("day").values_list("organization_id", "day"),
         DAYS_PER_CHUNK),
    ):  # fmt: skip
        for organization_id, chunk in _chunks(list(marks), size):
            if time.monotonic() > deadline:
                return result
            keys = {moment: f"{unit} {moment.isoformat()}" for moment in chunk}
            due = [moment for moment in chunk if run.due(organization_id, keys[moment])]
            result.skipped += len(chunk) - len(due)
            # The chunk in one transaction; if it fails, each of its buckets alone.
            parts = [due] if len(due) == 1 else [due, *([moment] for moment in due)]
            for part in parts if due else []:
                with run.unit(organization_id, *(keys[m] for m in part), record=len(part) == 1) as outcome:
                    done = refresh(organization_id=organization_id, **{f"{unit}s": part})
                if outcome.ok:
                    if unit == "hour":
                        result.hours += done
                    else:
                        result.days += done
                    result.skipped += len(part) - done
                    if part is due:
                        break
                elif len(part) == 1:
                    result.failed += 1
            _yield_to_other_writers()
    return result


def retention_cutoff(now: datetime | None = None) -> datetime:
    """Raw events before this hour are outside the retention window (ingest refuses them a day earlier)."""
    now = now or datetime.now(UTC)
    return hour_of(now - timedelta(days=settings.RAW_EVENT_RETENTION_DAYS))


def prune_cutoff(now: datetime | None = None) -> datetime:
    """Raw events are pruned by whole UTC days before this one: daily rollups are computed from a
    day's raw events, so a day is either complete or gone."""
    return day_of(retention_cutoff(now))


def raw_events_prune(*, chunk_size: int = 5000, time_budget_seconds: float = 300.0) -> int:
    """Delete raw events of whole UTC days before `prune_cutoff()` in bounded chunks; rollups are kept.

    Each day of each organization goes in one transaction holding the day's rollup lock, and never a
    day with an hour (or the day itself) still marked dirty: its rollups must be computed from its
    complete raw events first. So a day is always either intact or gone, and recomputing any dirty
    hour or day is safe.
    """
    cutoff = prune_cutoff()
    deadline = time.monotonic() + time_budget_seconds
    deleted = 0
    run = JobRun(PRUNE_JOB)
    for organization_id in Organization.objects.order_by("id").values_list("id", flat=True):
        if not run.due(organization_id):
            continue
        after = None
        while time.monotonic() < deadline:
            # One organization's failure (recorded, retried later) leaves the others' pruning alone.
            with run.unit(organization_id) as outcome:
                old = UsageEvent.objects.filter(organization_id=organization_id, timestamp__lt=cutoff)
                if after is not None:
                    old = old.filter(timestamp__gte=after)
                oldest = old.order_by("timestamp").values_list("timestamp", flat=True).first()
                if oldest is not None:
                    day = day_of(oldest)
                    deleted += _day_prune(organization_id, day, chunk_size)
                    after = day + DAY
            if not outcome.ok or oldest is None:
                break
    return deleted


PRUNE_JOB = "raw_events_prune"


def _day_prune(organization_id: int, day: datetime, chunk_size: int) -> int:
    with transaction.atomic():
        if not _try_locks(kind="day", organization_id=organization_id, moments=[day]):
            return 0  # being rolled up: next time
        dirty = (
            DirtyHour.objects.filter(organization_id=organization_id, hour__gte=day, hour__lt=day + DAY).exists()
            or DirtyDay.objects.filter(organization_id=organization_id, day=day).exists()
        )
        if dirty:
            return 0
        events = UsageEvent.objects.filter(organization_id=organization_id, timestamp__gte=day, timestamp__lt=day + DAY)
        deleted = 0
        while ids := list(events.values_list("id", flat=True)[:chunk_size]):
            deleted += UsageEvent.objects.filter(id__in=ids).delete()[0]
    return deleted
