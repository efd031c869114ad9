"""Writes for metrics: recording usage events, cache statistics and batch runs.

The ingest hot path does a fixed number of queries per request, whatever the batch size: team
lookup (usually cached for the request), one write of the batch that skips request ids already
stored (on PostgreSQL: COPY into a temporary table, then one INSERT … SELECT; elsewhere one
multi-row INSERT per 500 events), the dirty-hour marks, and one SELECT only when duplicates need
their stored cost.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from functools import partial, reduce
from operator import itemgetter, or_
from typing import Any, cast

from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.db.models import Q

from billing.pricing.book import COST_QUANTUM, forget_price_book, price_book
from billing.pricing.calculate import CostSource, PricedEvent, Usage, UsageError, price_event
from billing.pricing.money import SCALE, MoneyField
from teams.access import TeamResolver, UnknownTeam, scope_for_token
from teams.models import ApiToken, Team

from .failures import JobRun
from .ingest_hooks import events_recorded, events_recorded_listened
from .models import BatchRun, CacheStat, UsageEvent
from .rollups import mark_hours_dirty
from .schemas import BatchRunIn, CacheStatIn, EventIn


@dataclass(slots=True)
class RecordedEvent:
    index: int
    request_id: str
    duplicate: bool
    # What was stored under the id; None for a duplicate of an event the token may not read
    # (another team's, for a pinned token): the id is taken, its figures are not the caller's.
    cost: Decimal | None
    tokens: int | None
    is_priced: bool | None
    team: Team


@dataclass(slots=True)
class RejectedEvent:
    index: int
    errors: dict[str, list[str]]


# The columns ingest writes, in the order rows are built; `_EventWriter` checks it against the model.
EVENT_COLUMNS = (
    "organization_id", "team_id", "api_token_id", "request_id", "timestamp", "received_at", "model",
    "model_requested", "provider", "provider_requested", "prompt_tokens", "output_tokens", "total_tokens",
    "cached_tokens", "cache_write_tokens", "usage", "prompt_cost", "output_cost", "cost", "client_cost",
    "is_priced", "price_id", "cost_source", "list_cost", "latency_ms",
    "time_to_first_token_ms", "cache_hit", "cache_similarity_score", "is_batched", "batch_id", "batch_size",
    "user_id", "end_user", "query_type", "status", "error_message", "metadata", "tags",
)
_REQUEST_ID, _TIMESTAMP, _COST, _IS_PRICED, _TOTAL_TOKENS = (
    EVENT_COLUMNS.index(name) for name in ("request_id", "timestamp", "cost", "is_priced", "total_tokens")
)


def _money(value: Decimal | None) -> Decimal | None:
    return None if value is None else value.quantize(COST_QUANTUM, ROUND_HALF_EVEN)


def event_usage(
    *, prompt_tokens: int, output_tokens: int, cached_tokens: int, cache_write_tokens: int, extra: dict | None
) -> Usage:
    """What one call used, from an event's token counts and its `usage` extras: the one way an event
    (arriving, stored or re-read by insights) becomes the ledger's `Usage`."""
    return Usage(
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        cached_tokens=cached_tokens,
        cache_write_tokens=cache_write_tokens,
        extra=extra or {},
    )


def event_priced(event: EventIn, *, organization_id: int, book) -> PricedEvent:
    """The event's cost at its own timestamp (raises UsageError: its usage contradicts itself)."""
    return price_event(
        book,
        organization_id=organization_id,
        model=event.model,
        provider=event.provider,
        when=cast(datetime, event.timestamp),  # validation gives every event one
        usage=event_usage(
            prompt_tokens=event.prompt_tokens,
            output_tokens=event.output_tokens,
            cached_tokens=event.cached_tokens,
            cache_write_tokens=event.cache_write_tokens,
            extra=event.usage,
        ),
        client_cost=event.client_cost,
        client_prompt_cost=event.prompt_cost,
        client_output_cost=event.output_cost,
    )


def _event_row(
    event: EventIn, *, organization_id: int, team_id: int, token_id: int, received_at: datetime, book
) -> tuple:
    """One event's column values (in EVENT_COLUMNS order), priced at its own timestamp.

    Money is already at the precision it is stored with (whole 1e-10 USD units).
    """
    priced = event_priced(event, organization_id=organization_id, book=book)
    return (
        organization_id,
        team_id,
        token_id,
        event.request_id,
        event.timestamp,
        received_at,
        priced.model[:200],
        event.model,
        priced.provider[:64],
        event.provider or "",
        event.prompt_tokens,
        event.output_tokens,
        event.total_tokens,
        event.cached_tokens,
        event.cache_write_tokens,
        event.usage or {},
        priced.prompt_cost,
        priced.output_cost,
        priced.cost,
        _money(event.client_cost),
        priced.is_priced,
        priced.price_id,
        priced.cost_source,
        priced.list_cost,
        event.latency_ms,
        event.time_to_first_token_ms,
        event.cache_hit,
        event.cache_similarity_score,
        event.is_batched,
        event.batch_id or "",
        event.batch_size,
        event.user_id or "",
        event.end_user or "",
        event.query_type or "",
        event.status,
        event.error_message or "",
        event.metadata or {},
        event.tags or [],
    )


class _EventWriter:
    """Stores rows, skipping request ids the organization already has; returns the ids it stored.

    `INSERT … ON CONFLICT (organization_id, request_id) DO NOTHING RETURNING request_id`: Django's
    bulk_create cannot say which rows a conflict skipped; RETURNING can, in the same statement, so
    concurrent retries of one id are stored once and every request learns whether its copy was the
    one kept. Rows are inserted in request-id order, so two batches sharing ids take their locks in
    one order and cannot deadlock.
    """

    def __init__(self):
        fields = {f.attname: f for f in UsageEvent._meta.concrete_fields if not f.primary_key}
        if set(fields) != set(EVENT_COLUMNS):
            differing = sorted(set(fields) ^ set(EVENT_COLUMNS))
            raise ImproperlyConfigured(f"EVENT_COLUMNS does not match UsageEvent's fields: {differing}")
        self.fields = [fields[name] for name in EVENT_COLUMNS]
        quote = connection.ops.quote_name
        # Table and column names come from the model, never from input.
        self.table = quote(UsageEvent._meta.db_table)
        self.columns = ", ".join(quote(cast(str, f.column)) for f in self.fields)  # concrete: never None
        self.on_conflict = " ON CONFLICT (organization_id, request_id) DO NOTHING RETURNING request_id"

    def __call__(self, rows: list[tuple]) -> set[str]:
        raise NotImplementedError


class _ValuesWriter(_EventWriter):
    """Multi-row INSERT … VALUES, for SQLite (and any other backend)."""

    CHUNK = 500  # rows per INSERT: stays under SQLite's 32,766 bound parameters

    def __init__(self):
        super().__init__()
        # Only these types need Django's conversion to the database's representation.
        self.adapters = [
            (index, field.get_db_prep_save)
            for index, field in enumerate(self.fields)
            if isinstance(field, MoneyField) or field.get_internal_type() in ("DateTimeField", "JSONField")
        ]
        self.placeholder = "(" + ", ".join(["%s"] * len(self.fields)) + ")"

    def __call__(self, rows: list[tuple]) -> set[str]:
        inserted: set[str] = set()
        rows = sorted(rows, key=itemgetter(_REQUEST_ID))
        with connection.cursor() as cursor:
            for start in range(0, len(rows), self.CHUNK):
                chunk = rows[start : start + self.CHUNK]
                params = []
                for row in chunk:
                    values = list(row)
                    for index, adapt in self.adapters:
                        values[index] = adapt(values[index], connection)
                    params.extend(values)
                sql = (
                    f"INSERT INTO {self.table} ({self.columns}) VALUES "  # noqa: S608 -- names from the model
                    + ", ".join([self.placeholder] * len(chunk))
                    + self.on_conflict
                )
                cursor.execute(sql, params)
                inserted.update(request_id for (request_id,) in cursor.fetchall())
        return inserted


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_NULL = "\\N"


def _units(value: Decimal) -> int:
    return int(value.scaleb(SCALE))  # exact: rows hold money quantized to 1e-10 (see _event_row)


def _copy_line(row: tuple, received_at: str) -> str:
    """One row in COPY's text format: tab-separated, \\N for NULL, backslash escapes in text."""
    (
        organization_id, team_id, token_id, request_id, timestamp, _, model, model_requested, provider,
        provider_requested, prompt_tokens, output_tokens, total_tokens, cached_tokens, cache_write_tokens, usage,
        prompt_cost, output_cost, cost, client_cost, is_priced, price_id, cost_source, list_cost, latency_ms,
        time_to_first_token_ms, cache_hit, cache_similarity_score,
        is_batched, batch_id, batch_size, user_id, end_user, query_type, status, error_message, metadata, tags,
    ) = row  # fmt: skip
    metadata = json.dumps(metadata) if metadata else "{}"
    tags = json.dumps(tags) if tags else "[]"
    usage = json.dumps(usage) if usage else "{}"  # genai-prices keys and integers: nothing to escape
    texts = (
        request_id, model, model_requested, provider, provider_requested, batch_id, user_id, end_user, query_type,
        status, error_message, metadata, tags,
    )  # fmt: skip
    joined = "".join(texts)
    if "\\" in joined or "\t" in joined or "\n" in joined or "\r" in joined:  # rare: escape only then
        (
            request_id, model, model_requested, provider, provider_requested, batch_id, user_id, end_user,
            query_type, status, error_message, metadata, tags,
        ) = (text.translate(_COPY_ESCAPES) for text in texts)  # fmt: skip
    return (
        f"{organization_id}\t{team_id}\t{token_id}\t{request_id}\t{timestamp.isoformat()}\t{received_at}\t{model}\t"
        f"{model_requested}\t{provider}\t{provider_requested}\t{prompt_tokens}\t{output_tokens}\t{total_tokens}\t"
        f"{cached_tokens}\t{cache_write_tokens}\t{usage}\t{_units(prompt_cost)}\t{_units(output_cost)}\t"
        f"{_units(cost)}\t{_NULL if client_cost is None else _units(client_cost)}\t{is_priced}\t"
        f"{_NULL if price_id is None else price_id}\t{cost_source}\t"
        f"{_NULL if list_cost is None else _units(list_cost)}\t"
        f"{latency_ms!r}\t"
        f"{_NULL if time_to_first_token_ms is None else repr(time_to_first_token_ms)}\t{cache_hit}\t"
        f"{_NULL if cache_similarity_score is None else repr(cache_similarity_score)}\t{is_batched}\t{batch_id}\t"
        f"{_NULL if batch_size is None else batch_size}\t{user_id}\t{end_user}\t{query_type}\t{status}\t"
        f"{error_message}\t{metadata}\t{tags}\n"
    )


class _CopyWriter(_EventWriter):
    """PostgreSQL: COPY the rows into a temporary table, then one INSERT … SELECT from it.

    COPY's text format is written with one f-string per row, so no value goes through a per-value
    Python adapter. The temporary table lives as long as the connection (created again after a
    reconnect) and is emptied when the transaction commits.
    """

    STAGE = "ingest_usageevent_stage"

    def __init__(self):
        super().__init__()
        self.copy = f"COPY {self.STAGE} ({self.columns}) FROM STDIN"
        # SET LOCAL: no "already exists" notice for every batch after the first.
        self.create = (
            "SET LOCAL client_min_messages = warning; "  # noqa: S608 -- names from the model
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {self.STAGE} ON COMMIT DELETE ROWS AS "
            f"SELECT {self.columns} FROM {self.table} WITH NO DATA"
        )
        self.insert = (
            f"INSERT INTO {self.table} ({self.columns}) SELECT {self.columns} FROM {self.STAGE} "  # noqa: S608
            f'ORDER BY request_id COLLATE "C"' + self.on_conflict
        )

    def __call__(self, rows: list[tuple]) -> set[str]:
        received_at = rows[0][EVENT_COLUMNS.index("received_at")].isoformat()
        data = io.StringIO("".join([_copy_line(row, received_at) for row in rows]))
        with connection.cursor() as cursor:
            cursor.execute(self.create)
            cursor.copy_expert(self.copy, data, 1 << 20)  # bytes per read of the buffer
            cursor.execute(self.insert)
            inserted = {request_id for (request_id,) in cursor.fetchall()}
            if len(connection.atomic_blocks) > 1:  # the commit that empties the table is not ours
                cursor.execute(f"TRUNCATE {self.STAGE}")
        return inserted


# Below this many rows one INSERT … VALUES costs less than creating, filling and reading the stage.
COPY_MIN_ROWS = 20
_writers: dict[str, _EventWriter] = {}


def _event_writer(rows: int) -> _EventWriter:
    kind = "copy" if connection.vendor == "postgresql" and rows >= COPY_MIN_ROWS else "values"
    writer = _writers.get(kind)
    if writer is None:
        writer = _writers[kind] = _CopyWriter() if kind == "copy" else _ValuesWriter()
    return writer


def usage_events_record(
    *, token: ApiToken, events: list[tuple[int, EventIn]]
) -> tuple[list[RecordedEvent], list[RejectedEvent]]:
    """Price and store validated events; each request id is stored once per organization.

    `events` pairs each event with its index in the client's request, so answers can name it.
    """
    book = price_book()
    received_at = datetime.now(UTC)
    rows, kept, rejected, seen = [], [], [], set()
    with transaction.atomic():  # teams created here exist only if the events are stored too
        resolver = TeamResolver(token)
        aliases = {event.team_alias for _, event in events}
        resolver.preload({alias for alias in aliases if alias is not None}, default=None in aliases)
        for index, event in events:
            try:
                team = resolver.resolve(event.team_alias)
            except UnknownTeam:
                rejected.append(
                    RejectedEvent(index, {"team_alias": [f"no team {event.team_alias!r} in this organization"]})
                )
                continue
            repeated = event.request_id in seen  # the same id twice inside this request
            if not repeated:
                try:
                    row = _event_row(
                        event, organization_id=token.organization_id, team_id=team.id, token_id=token.pk,
                        received_at=received_at,
                        book=book,
                    )  # fmt: skip
                except UsageError as error:  # parts that contradict each other under this price
                    rejected.append(RejectedEvent(index, {"usage": [str(error)]}))
                    continue
                seen.add(event.request_id)
                rows.append(row)
            kept.append((index, event, team, repeated))
        inserted = _event_writer(len(rows))(rows) if rows else set()
        # The last write before commit: the marks' row locks are held for the shortest time.
        # One moment per hour is enough (timestamps are UTC: validation made them so).
        hours = {
            row[_TIMESTAMP].replace(minute=0, second=0, microsecond=0) for row in rows if row[_REQUEST_ID] in inserted
        }
        mark_hours_dirty(organization_id=token.organization_id, moments=hours)
        if inserted and events_recorded_listened():  # after commit: a listener sees the events stored
            stored = [(row[_REQUEST_ID], row[_COST]) for row in rows if row[_REQUEST_ID] in inserted]
            transaction.on_commit(partial(events_recorded, token.organization_id, stored))

    stored_as: dict[Any, tuple[Any, ...]] = {
        row[_REQUEST_ID]: (row[_COST], row[_IS_PRICED], row[_TOTAL_TOKENS]) for row in rows
    }
    duplicates = seen - inserted
    if duplicates or len(kept) > len(rows):  # answer retries with what was stored first
        looked_up = duplicates | {event.request_id for _, event, _, repeated in kept if repeated}
        # Only events the token may read answer with their figures; an id stored by a team it cannot
        # see (or pruned since) is answered as a duplicate without them.
        readable = scope_for_token(token).filter(UsageEvent.objects.filter(request_id__in=looked_up))
        for request_id in looked_up:
            stored_as[request_id] = (None, None, None)
        for request_id, *answer in readable.values_list("request_id", "cost", "is_priced", "total_tokens"):
            stored_as[request_id] = tuple(answer)
    recorded = [
        RecordedEvent(
            index=index,
            request_id=cast(str, event.request_id),  # validation gives every event one
            duplicate=repeated or event.request_id in duplicates,
            cost=None if stored_as[event.request_id][0] is None else Decimal(stored_as[event.request_id][0]),
            is_priced=stored_as[event.request_id][1],
            tokens=stored_as[event.request_id][2],
            team=team,
        )
        for index, event, team, repeated in kept
    ]
    return recorded, rejected


def cache_stat_record(*, token: ApiToken, stat: CacheStatIn) -> CacheStat:
    team = TeamResolver(token).resolve(stat.team_alias)
    return CacheStat.objects.create(
        organization_id=token.organization_id,
        team=team,
        timestamp=stat.timestamp or datetime.now(UTC),
        cache_hit=stat.cache_hit,
        cache_miss=stat.cache_miss,
        avg_cache_lookup_time_ms=stat.avg_lookup_time_ms,
    )


def batch_run_record(*, token: ApiToken, run: BatchRunIn) -> tuple[BatchRun, bool]:
    """Store a batch record; a repeated batch_id is answered with the stored one (created=False)."""
    team = TeamResolver(token).resolve(run.team_alias)
    return BatchRun.objects.get_or_create(
        organization_id=token.organization_id,
        batch_id=run.batch_id,
        defaults={
            "team": team,
            "timestamp": run.timestamp or datetime.now(UTC),
            "batch_size": run.batch_size,
            "total_tokens": run.total_tokens,
            "batch_cost": run.batch_cost,
            "batch_latency_ms": run.batch_latency_ms,
            "status": run.status,
        },
    )


REPRICE_FIELDS = (
    "model", "provider", "prompt_cost", "output_cost", "cost", "is_priced", "price_id", "cost_source", "list_cost",
)


REPRICE_JOB = "reprice"


@dataclass
class RepriceResult:
    updated: int = 0  # events whose price changed
    failed_organizations: list[int] = field(default_factory=list)  # recorded as JobFailure; retry these
    cost_before: Decimal = Decimal(0)  # of the events that changed
    cost_after: Decimal = Decimal(0)


def usage_events_reprice(
    *,
    provider: str,
    model: str,
    start: datetime,
    end: datetime | None,
    chunk_size: int = 2000,
    organization_ids: list[int] | None = None,
) -> RepriceResult:
    """Price again the events a change to (provider, model)'s prices can touch; mark their hours.

    The events concerned are those in [start, end) that this model priced before the change or
    that the current prices attribute to it now (a new price or pattern may take over names, a
    deleted one gives them back). They are found by their distinct (name, provider) pairs, so
    events of other models are not read. An empty `model` means every model of `provider`, and an
    empty `provider` every provider (an organization's discount covers them): then
    `organization_ids` names whose events. Events whose cost does not change are left alone: old
    totals change only where the new price really applies. Each organization's events are one
    isolated unit (see `metrics.failures`): one that fails is recorded and returned for a retry,
    and the others are repriced. `organization_ids` limits the run to those.
    """
    forget_price_book()
    book = price_book()
    window = UsageEvent.objects.filter(timestamp__gte=start)
    if end is not None:
        window = window.filter(timestamp__lt=end)
    if organization_ids is not None:
        window = window.filter(organization_id__in=organization_ids)
    names = window.values_list("organization_id", "model_requested", "provider_requested", "provider", "model")
    pairs: dict[int, set[tuple[str, str]]] = {}
    for organization_id, requested, hint, stored_provider, stored_model in names.distinct().order_by():
        found = book.find(requested, hint or None)
        for candidate in ((stored_provider, stored_model), found):
            if candidate is not None and provider in ("", candidate[0]) and model in ("", candidate[1]):
                pairs.setdefault(organization_id, set()).add((requested, hint))
    result = RepriceResult()
    run = JobRun(REPRICE_JOB)
    label = f"{provider or '*'}/{model or '*'} from {start.isoformat()}" + (f" until {end.isoformat()}" if end else "")
    for organization_id, names_of_org in sorted(pairs.items()):
        ordered = sorted(names_of_org)
        # Chunks commit one by one (repricing again is harmless), so the unit is not one transaction.
        with run.unit(organization_id, label, atomic=False) as outcome:
            part = RepriceResult()
            for first in range(0, len(ordered), 50):
                matching = reduce(
                    or_, (Q(model_requested=n, provider_requested=p) for n, p in ordered[first : first + 50])
                )
                events = window.filter(matching, organization_id=organization_id)
                _reprice_matching(events, book, chunk_size, part)
        if outcome.ok:
            result.updated += part.updated
            result.cost_before += part.cost_before
            result.cost_after += part.cost_after
        else:
            result.failed_organizations.append(organization_id)
    return result


def _reprice_matching(events, book, chunk_size: int, result: RepriceResult) -> None:
    last_id = 0
    while True:
        chunk = list(events.filter(id__gt=last_id).order_by("id")[:chunk_size])
        if not chunk:
            return
        last_id = chunk[-1].id
        before = {event.id: event.cost for event in chunk}
        changed = [event for event in chunk if _repriced(event, book)]
        if not changed:
            continue
        with transaction.atomic():
            UsageEvent.objects.bulk_update(changed, REPRICE_FIELDS)
            for organization_id in {event.organization_id for event in changed}:
                mark_hours_dirty(
                    organization_id=organization_id,
                    moments=[e.timestamp for e in changed if e.organization_id == organization_id],
                )
        result.updated += len(changed)
        result.cost_before += sum((before[event.id] for event in changed), Decimal(0))
        result.cost_after += sum((event.cost for event in changed), Decimal(0))


def _repriced(event: UsageEvent, book) -> bool:
    """Apply the current prices to one stored event, as ingest would; True if anything changed."""
    usage = event_usage(
        prompt_tokens=event.prompt_tokens, output_tokens=event.output_tokens, cached_tokens=event.cached_tokens,
        cache_write_tokens=event.cache_write_tokens, extra=event.usage,
    )  # fmt: skip
    kept_client_split = event.cost_source == CostSource.CLIENT  # the client's own prompt/output split
    try:
        priced = price_event(
            book, organization_id=event.organization_id, model=event.model_requested,
            provider=event.provider_requested or None, when=event.timestamp, usage=usage,
            client_cost=event.client_cost,
            client_prompt_cost=event.prompt_cost if kept_client_split else None,
            client_output_cost=event.output_cost if kept_client_split else None,
        )  # fmt: skip
    except UsageError:  # its usage cannot be decomposed under the new price: keep what it costs
        return False
    new = {
        "is_priced": priced.is_priced,
        "price_id": priced.price_id,
        "cost": priced.cost,
        "prompt_cost": priced.prompt_cost,
        "output_cost": priced.output_cost,
        "model": priced.model[:200],
        "provider": priced.provider[:64],
        "cost_source": priced.cost_source,
        "list_cost": priced.list_cost,
    }
    if all(getattr(event, name) == value for name, value in new.items()):
        return False
    for name, value in new.items():
        setattr(event, name, value)
    return True
