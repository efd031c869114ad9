"""Writes for metrics: recording usage events, cache statistics and batch runs.

The ingest hot path does a fixed number of queries per request, whatever the batch size: team
lookup (usually cached for the request), one multi-row INSERT per 500 events that skips
request ids already stored, and one SELECT only when duplicates need their stored cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import reduce
from operator import or_

from django.db import connection, transaction
from django.db.models import Q

from billing.money import MoneyField
from billing.pricing import event_cost, forget_price_book, normalise_model_name, price_book
from teams.access import TeamResolver, UnknownTeam
from teams.models import ApiToken, Team

from .models import BatchRun, CacheStat, UsageEvent
from .rollups import mark_hours_dirty
from .schemas import BatchRunIn, CacheStatIn, EventIn

INSERT_CHUNK = 500  # rows per INSERT: stays under SQLite's 32,766 bound parameters


@dataclass(slots=True)
class RecordedEvent:
    index: int
    request_id: str
    duplicate: bool
    cost: Decimal
    tokens: int
    is_priced: bool
    team: Team


@dataclass(slots=True)
class RejectedEvent:
    index: int
    errors: dict[str, list[str]]


def _event_row(event: EventIn, *, organization_id: int, team_id: int, received_at: datetime, book) -> dict:
    key = book.find(event.model, event.provider)
    price = book.price_at(key, event.timestamp) if key else None
    if price is not None:
        cost = event_cost(
            price,
            prompt_tokens=event.prompt_tokens,
            cached_tokens=event.cached_tokens,
            output_tokens=event.output_tokens,
        )
        prompt_cost, output_cost, total = cost.prompt_cost, cost.output_cost, cost.total
        model, provider = price.model, price.provider
    else:
        # Unpriced: kept and flagged; the client's own figure is the only cost we can honestly show.
        prompt_cost, output_cost = event.prompt_cost or Decimal(0), event.output_cost or Decimal(0)
        total = event.client_cost or Decimal(0)
        model, provider = normalise_model_name(event.model), (event.provider or "")
    return {
        "organization_id": organization_id,
        "team_id": team_id,
        "request_id": event.request_id,
        "timestamp": event.timestamp,
        "received_at": received_at,
        "model": model[:200],
        "model_requested": event.model,
        "provider": provider[:64],
        "prompt_tokens": event.prompt_tokens,
        "output_tokens": event.output_tokens,
        "total_tokens": event.total_tokens,
        "cached_tokens": event.cached_tokens,
        "prompt_cost": prompt_cost,
        "output_cost": output_cost,
        "cost": total,
        "client_cost": event.client_cost,
        "is_priced": price is not None,
        "price_id": price.id if price is not None else None,
        "latency_ms": event.latency_ms,
        "time_to_first_token_ms": event.time_to_first_token_ms,
        "cache_hit": event.cache_hit,
        "cache_similarity_score": event.cache_similarity_score,
        "is_batched": event.is_batched,
        "batch_id": event.batch_id or "",
        "batch_size": event.batch_size,
        "user_id": event.user_id or "",
        "end_user": event.end_user or "",
        "query_type": event.query_type or "",
        "status": event.status,
        "error_message": event.error_message or "",
        "metadata": event.metadata or {},
        "tags": event.tags or [],
    }


class _EventInsert:
    """`INSERT … ON CONFLICT (organization_id, request_id) DO NOTHING RETURNING request_id`.

    Django's bulk_create cannot say which rows a conflict skipped; RETURNING can, in the same
    statement, on PostgreSQL and SQLite alike, so concurrent retries of one id are stored once and
    every request learns whether its copy was the one kept.
    """

    def __init__(self):
        fields = [f for f in UsageEvent._meta.concrete_fields if not f.primary_key]
        self.columns = [f.attname for f in fields]
        # Only these types need Django's conversion to the database's representation.
        self.adapters = [
            (f.attname, f.get_db_prep_save)
            for f in fields
            if isinstance(f, MoneyField) or f.get_internal_type() in ("DateTimeField", "JSONField")
        ]
        quote = connection.ops.quote_name
        # Table and column names come from the model, never from input.
        table, columns = quote(UsageEvent._meta.db_table), ", ".join(quote(f.column) for f in fields)
        self.sql_head = f"INSERT INTO {table} ({columns}) VALUES "  # noqa: S608
        self.sql_tail = " ON CONFLICT (organization_id, request_id) DO NOTHING RETURNING request_id"
        self.placeholder = "(" + ", ".join(["%s"] * len(fields)) + ")"

    def __call__(self, rows: list[dict]) -> set[str]:
        inserted: set[str] = set()
        with connection.cursor() as cursor:
            for start in range(0, len(rows), INSERT_CHUNK):
                chunk = rows[start : start + INSERT_CHUNK]
                params = []
                for row in chunk:
                    for name, adapt in self.adapters:
                        row[name] = adapt(row[name], connection)
                    params.extend(row[name] for name in self.columns)
                sql = self.sql_head + ", ".join([self.placeholder] * len(chunk)) + self.sql_tail
                cursor.execute(sql, params)
                inserted.update(request_id for (request_id,) in cursor.fetchall())
        return inserted


_insert: _EventInsert | None = None


def usage_events_record(
    *, token: ApiToken, events: list[tuple[int, EventIn]]
) -> tuple[list[RecordedEvent], list[RejectedEvent]]:
    """Price and store validated events; each request id is stored once per organization.

    `events` pairs each event with its index in the client's request, so answers can name it.
    """
    global _insert
    if _insert is None:
        _insert = _EventInsert()
    book = price_book()
    received_at = datetime.now(UTC)
    rows, kept, rejected, seen = [], [], [], set()
    with transaction.atomic():  # teams created here exist only if the events are stored too
        resolver = TeamResolver(token)
        resolver.preload({event.team_alias for _, event in events if event.team_alias})
        for index, event in events:
            try:
                team = resolver.resolve(event.team_alias)
            except UnknownTeam:
                rejected.append(
                    RejectedEvent(index, {"team_alias": [f"no team {event.team_alias!r} in this organization"]})
                )
                continue
            repeated = event.request_id in seen  # the same id twice inside this request
            kept.append((index, event, team, repeated))
            if not repeated:
                seen.add(event.request_id)
                rows.append(
                    _event_row(
                        event,
                        organization_id=token.organization_id,
                        team_id=team.pk,
                        received_at=received_at,
                        book=book,
                    )
                )
        stored_as = {row["request_id"]: (row["cost"], row["is_priced"], row["total_tokens"]) for row in rows}
        timestamps = {row["request_id"]: row["timestamp"] for row in rows}
        inserted = _insert(rows) if rows else set()
        # The last write before commit: the marks' row locks are held for the shortest time.
        mark_hours_dirty(
            organization_id=token.organization_id, moments=[timestamps[request_id] for request_id in inserted]
        )

    duplicates = seen - inserted
    if duplicates or len(kept) > len(rows):  # answer retries with what was stored first
        stored = UsageEvent.objects.filter(
            organization_id=token.organization_id,
            request_id__in=duplicates | {event.request_id for _, event, _, repeated in kept if repeated},
        )
        for request_id, *answer in stored.values_list("request_id", "cost", "is_priced", "total_tokens"):
            stored_as[request_id] = tuple(answer)
    recorded = [
        RecordedEvent(
            index=index,
            request_id=event.request_id,
            duplicate=repeated or event.request_id in duplicates,
            cost=Decimal(stored_as[event.request_id][0]),
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


REPRICE_FIELDS = ("model", "provider", "prompt_cost", "output_cost", "cost", "is_priced", "price_id")


def usage_events_reprice(
    *, provider: str, model: str, start: datetime, end: datetime | None, chunk_size: int = 2000
) -> int:
    """Price again the events a change to (provider, model)'s prices can touch; mark their hours.

    The events concerned are those in [start, end) that this model priced before the change or
    that the current prices attribute to it now (a new price or pattern may take over names, a
    deleted one gives them back). They are found by their distinct (name, provider) pairs, so
    events of other models are not read. Events whose cost does not change are left alone: old
    totals change only where the new price really applies. Returns the number of events updated.
    """
    forget_price_book()
    book = price_book()
    key = (provider, model)
    window = UsageEvent.objects.filter(timestamp__gte=start)
    if end is not None:
        window = window.filter(timestamp__lt=end)
    names = window.values_list("model_requested", "provider", "model", "is_priced").distinct().order_by()
    pairs = sorted(
        {
            (requested, hint)
            for requested, hint, stored_model, is_priced in names
            if (is_priced and (hint, stored_model) == key) or book.find(requested, hint or None) == key
        }
    )
    updated = 0
    for first in range(0, len(pairs), 50):
        matching = reduce(or_, (Q(model_requested=n, provider=p) for n, p in pairs[first : first + 50]))
        updated += _reprice_matching(window.filter(matching), book, chunk_size)
    return updated


def _reprice_matching(events, book, chunk_size: int) -> int:
    updated, last_id = 0, 0
    while True:
        chunk = list(events.filter(id__gt=last_id).order_by("id")[:chunk_size])
        if not chunk:
            return updated
        last_id = chunk[-1].id
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
        updated += len(changed)


def _repriced(event: UsageEvent, book) -> bool:
    """Apply the current price book to one stored event; True if anything changed."""
    key = book.find(event.model_requested, event.provider or None)
    price = book.price_at(key, event.timestamp) if key else None
    if price is None:
        if not event.is_priced:
            return False
        new = {
            "is_priced": False,
            "price_id": None,
            "cost": event.client_cost or Decimal(0),
            "prompt_cost": Decimal(0),
            "output_cost": Decimal(0),
            "model": normalise_model_name(event.model_requested),
            "provider": event.provider,
        }
    else:
        cost = event_cost(
            price,
            prompt_tokens=event.prompt_tokens,
            cached_tokens=event.cached_tokens,
            output_tokens=event.output_tokens,
        )
        new = {
            "is_priced": True,
            "price_id": price.id,
            "cost": cost.total,
            "prompt_cost": cost.prompt_cost,
            "output_cost": cost.output_cost,
            "model": price.model,
            "provider": price.provider,
        }
    if all(getattr(event, name) == value for name, value in new.items()):
        return False
    for name, value in new.items():
        setattr(event, name, value)
    return True
