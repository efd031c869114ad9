"""Reservations: a hard budget that cannot be overshot by concurrent gateways.

A gateway reserves an estimate before its LLM call and ingests the call's event with the same
request id afterwards; the event settles the hold (its real cost replaces the estimate).

Mechanism: one ledger row per (budget, period), locked with SELECT … FOR UPDATE in budget-id
order inside one transaction (on SQLite, whose transactions here begin IMMEDIATE, writers are
serialised instead). Under the locks a reservation sums the holds, decides for every hard budget
at once and writes its holds before committing, so no two reservations can both take the last
room (no check-then-write). It works on both supported databases without Redis, which the
embedded default may not have, and a lock per budget period keeps reservations on unrelated
budgets from waiting for each other.

Settled spend is the budget's exact spend for the period (`budget_spend`: rollups for closed
clean hours plus raw events), not a counter the ingest hook keeps: a counter would drift with
backdated events, repricing, retention and any event whose hook did not run, while the spend
query is the figure every other budget reader shows. It is read before the locks are taken (it
is the slow part, and reading it under them would make every reservation of an organization wait
for it), together with the moment it was read, `read_at`. Under the locks a reservation then
counts the open holds and the holds settled at or after `read_at` (at their real cost). That is
exact: settlement closes a hold only after its event committed, and `closed_at` and `read_at`
come from one clock (the database's on PostgreSQL, so app servers' clocks may differ), so a hold
closed before `read_at` has its event in the spend that was read, and one closed after is counted
from the hold. A call is counted twice only in the moment between its event's commit and its
settlement, which errs towards refusing. Token budgets need no such window: their spend is their
settled holds, summed under the locks.

RESERVE_SPEND_CACHE_SECONDS (default 1) lets reservations reuse a spend read (and the list of
budgets that apply) that long ago: reserved calls stay exact (the window starts at the read), but
events ingested without a reservation, and budgets just created or changed, count up to that much
later. 0 reads both for every reservation (about ten more queries each).

Settlement and release never take the ledger locks: closing a hold only frees room.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import Q
from django.db.models.functions import Now

from llmcost_project.db import Sum
from llmcost_project.degraded import degraded
from metrics.selectors import EventFilter, scoped_events
from teams.access import AccessScope
from teams.models import ApiToken, Team

from .models import Budget, BudgetLedger, Reservation, ReservationHold
from .selectors import applicable_budgets, budget_period, budget_spend, budget_status

logger = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 300
MAX_TTL_SECONDS = 3600


def scoped_spend(budget: Budget, start: datetime, end: datetime) -> Decimal:
    """Spend of a token or end user budget (see budget_spend)."""
    if budget.token_id is not None:
        # Events do not record the token they came with: a token budget counts what the calls
        # reserved with it settled at (their events' real costs).
        settled = ReservationHold.objects.filter(
            budget=budget, period_start=start, is_open=False, cost__isnull=False
        ).aggregate(total=Sum("cost"))["total"]
        return settled or Decimal(0)
    scope = AccessScope(
        organization=budget.organization,
        team_ids=None if budget.team_id is None else frozenset([budget.team_id]),
    )
    events = scoped_events(scope=scope, filters=EventFilter(start=start, end=end, user_id=budget.user_id or None))
    return events.filter(end_user=budget.end_user).aggregate(total=Sum("cost"))["total"] or Decimal(0)


@dataclass
class Figures:
    budget: Budget
    period_start: datetime
    period_end: datetime
    spend: Decimal | None
    reserved: Decimal | None

    def as_dict(self) -> dict:
        limit = self.budget.amount_usd
        known = self.spend is not None and self.reserved is not None
        return {
            "budget_id": self.budget.pk,
            "name": self.budget.name,
            "scope": self.budget.scope,
            "team_alias": self.budget.team.alias if self.budget.team else None,
            "user_id": self.budget.user_id or None,
            "end_user": self.budget.end_user or None,
            "period": self.budget.period,
            "period_start": self.period_start,
            "period_end": self.period_end,
            "spend": self.spend,
            "reserved": self.reserved,
            "limit": limit,
            "remaining": max(limit - self.spend - self.reserved, Decimal(0)) if known else None,  # type: ignore[operator]
            "hard": self.budget.is_hard,
            "on_error": self.budget.on_error,
        }


# (budget id, period start) pairs whose ledger row this process knows exists: one INSERT per
# budget period and process, not per reservation.
_ledgers_known: set[tuple[int, datetime]] = set()


def _ensure_ledgers(periods: dict[int, datetime]) -> None:
    missing = {key for key in periods.items() if key not in _ledgers_known}
    if missing:
        BudgetLedger.objects.bulk_create(
            [BudgetLedger(budget_id=budget_id, period_start=start) for budget_id, start in sorted(missing)],
            ignore_conflicts=True,
        )
        _ledgers_known.update(missing)


def _held(periods: dict[int, datetime], since: dict[int, datetime | None], now: datetime) -> dict[int, Decimal]:
    """Per budget: its open, unexpired holds at their estimates, plus the holds settled at or after
    `since[budget]` (None: none) at their real costs. One query."""
    held = dict.fromkeys(periods, Decimal(0))
    if not periods:
        return held
    which = Q()
    for budget_id, start in periods.items():
        counted = Q(is_open=True, expires_at__gt=now)
        if since.get(budget_id) is not None:
            counted |= Q(is_open=False, cost__isnull=False, closed_at__gte=since[budget_id])
        which |= Q(budget_id=budget_id, period_start=start) & counted
    rows = (
        ReservationHold.objects.filter(which)
        .values("budget_id", "is_open")
        .annotate(estimates=Sum("amount"), costs=Sum("cost"))
        .values_list("budget_id", "is_open", "estimates", "costs")
    )
    for budget_id, is_open, estimates, costs in rows:
        held[budget_id] += (estimates if is_open else costs) or Decimal(0)
    return held


def database_now() -> datetime:
    """The clock settlement's `closed_at` and a spend read's `read_at` share: PostgreSQL's, so
    that app servers whose clocks differ still agree; elsewhere (SQLite: one host) this one's."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT statement_timestamp()")
            return cursor.fetchone()[0]
    return datetime.now(UTC)


def _settled_spend(budget: Budget, start: datetime, end: datetime) -> tuple[Decimal, datetime]:
    """The budget's spend this period and the moment it was read (before the read began)."""
    ttl = settings.RESERVE_SPEND_CACHE_SECONDS
    key = f"reserve-spend:{budget.pk}:{start.isoformat()}"
    if ttl > 0:
        cached = cache.get(key)
        if cached is not None:
            return cached
    read_at = database_now()
    # The whole period, not only up to `now`: an event stamped after this reservation began (by
    # another server, or a client's clock ahead) may have settled its hold before `read_at`.
    spend = budget_spend(budget, start, end, end)
    if ttl > 0:
        cache.set(key, (spend, read_at), ttl)
    return spend, read_at


def _budgets_key(organization_id: int, team_id, user_id, end_user, token_id) -> str:
    raw = f"{team_id}|{user_id}|{end_user}|{token_id}"
    return f"reserve-budgets:{organization_id}:{hashlib.sha256(raw.encode()).hexdigest()[:32]}"


def _applicable(key: str, now: datetime, **scope) -> list[Budget]:
    """applicable_budgets, reused for RESERVE_SPEND_CACHE_SECONDS: a changed budget binds that much later.

    Each fresh read also leaves, for an hour, what a degraded answer needs to know of them."""
    ttl = settings.RESERVE_SPEND_CACHE_SECONDS
    budgets = cache.get(f"{key}:list") if ttl > 0 else None
    if budgets is None:
        budgets = applicable_budgets(**scope)
        if ttl > 0:
            cache.set(f"{key}:list", budgets, ttl)
        known = [Figures(b, *budget_period(b, now), spend=None, reserved=None).as_dict() for b in budgets]
        try:
            cache.set(key, known, MAX_TTL_SECONDS)
        except Exception:
            logger.debug("could not cache the reservation's budgets", exc_info=True)
    return budgets


def reservation_reserve(
    *,
    token: ApiToken,
    team: Team | None,
    amount: Decimal,
    user_id: str | None = None,
    end_user: str | None = None,
    request_id: str | None = None,
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
    now: datetime | None = None,
) -> dict:
    """Hold `amount` on every budget that applies, if every hard one has room; the answer a gateway gets."""
    now = now or datetime.now(UTC)
    organization = token.organization
    key = _budgets_key(organization.pk, team.pk if team else None, user_id, end_user, token.pk)
    try:
        budgets = _applicable(key, now, organization=organization, team=team, user_id=user_id, end_user=end_user,
                              token_id=token.pk)  # fmt: skip
        return _reserve(
            token=token, team=team, budgets=budgets, amount=amount, user_id=user_id or "", end_user=end_user or "",
            request_id=request_id or "", ttl_seconds=ttl_seconds, now=now,
        )  # fmt: skip
    except DatabaseError as error:
        degraded("database", "budget reserve", error)
        return _degraded_answer(key, now)


def _degraded_answer(budgets_key: str, now: datetime) -> dict:
    """The answer without the store: each hard budget's `on_error` decides. The budgets are the
    ones the last reservation of this scope saw (cached), or none known: the default, allow."""
    try:
        budgets = cache.get(budgets_key) or []
    except Exception:
        budgets = []
    allowed = all(entry["on_error"] == Budget.OnError.ALLOW for entry in budgets if entry["hard"])
    return {
        "allowed": allowed,
        "degraded": True,
        "reservation_id": None,
        "expires_at": None,
        "budgets": [{**entry, "spend": None, "reserved": None, "remaining": None} for entry in budgets],
    }


def _reserve(
    *, token: ApiToken, team: Team | None, budgets: list[Budget], amount: Decimal, user_id: str, end_user: str,
    request_id: str, ttl_seconds: int, now: datetime,
) -> dict:  # fmt: skip
    periods = {budget.pk: budget_period(budget, now) for budget in budgets}
    hard = [budget for budget in budgets if budget.is_hard]
    hard_starts = {budget.pk: periods[budget.pk][0] for budget in hard}
    spend: dict[int, Decimal] = {}
    since: dict[int, datetime | None] = {}
    for budget in budgets:
        start, end = periods[budget.pk]
        if not budget.is_hard:  # soft budgets never block: their (briefly cached) standing is reported
            spend[budget.pk], since[budget.pk] = budget_status(budget, now).spend, None
        elif budget.token_id is None:  # read before the locks: see the module docstring
            spend[budget.pk], since[budget.pk] = _settled_spend(budget, start, end)
    _ensure_ledgers(hard_starts)
    expires_at = now + timedelta(seconds=ttl_seconds)
    existing = None
    with transaction.atomic():
        if hard_starts:
            which = Q()
            for budget_id, start in hard_starts.items():
                which |= Q(budget_id=budget_id, period_start=start)
            locked = list(BudgetLedger.objects.select_for_update().filter(which).order_by("budget_id"))
            if len(locked) != len(hard_starts):  # a ledger row this process thought existed is gone
                _ledgers_known.difference_update(hard_starts.items())
                raise DatabaseError("budget ledger rows missing")
        if request_id:  # a retried reserve gets its reservation back, never a second hold
            existing = Reservation.objects.filter(organization_id=token.organization_id, request_id=request_id).first()
        held = _held({budget.pk: periods[budget.pk][0] for budget in budgets}, since, now)
        for budget in hard:
            if budget.token_id is not None:  # its settled holds are its spend: read under the locks
                spend[budget.pk] = scoped_spend(budget, *periods[budget.pk])
        if existing is not None:
            allowed = existing.state == Reservation.State.OPEN and existing.expires_at > now
            reservation = existing
        else:
            allowed = all(spend[b.pk] + held[b.pk] + amount <= b.amount_usd for b in hard)
            reservation = None
            if allowed:
                reservation = Reservation(
                    organization_id=token.organization_id, token=token, team=team, user_id=user_id,
                    end_user=end_user, request_id=request_id, amount=amount, expires_at=expires_at,
                    created_at=now,
                )  # fmt: skip
                try:
                    if request_id:  # its unique constraint may refuse it: inside a savepoint
                        with transaction.atomic():
                            reservation.save(force_insert=True)
                    else:
                        reservation.save(force_insert=True)
                except IntegrityError:  # the same request id reserved by another gateway just now
                    reservation = Reservation.objects.get(organization_id=token.organization_id, request_id=request_id)
                    existing = reservation
                    allowed = reservation.state == Reservation.State.OPEN and reservation.expires_at > now
                else:
                    ReservationHold.objects.bulk_create(
                        [
                            ReservationHold(
                                reservation=reservation,
                                budget=budget,
                                period_start=periods[budget.pk][0],
                                amount=amount,
                                expires_at=expires_at,
                            )
                            for budget in budgets
                        ]
                    )
                    for budget in budgets:
                        held[budget.pk] += amount
    answer_budgets = [
        Figures(b, periods[b.pk][0], periods[b.pk][1], spend[b.pk], held[b.pk]).as_dict() for b in budgets
    ]
    answer: dict = {"allowed": allowed, "degraded": False}
    if allowed and reservation is not None:
        answer["reservation_id"] = str(reservation.pk)
        answer["expires_at"] = reservation.expires_at
        answer["amount"] = reservation.amount
    if existing is not None:
        answer["state"] = existing.state
    answer["budgets"] = answer_budgets
    return answer


def reserve_answer_for(scope: AccessScope, answer: dict) -> dict:
    """`answer` as `scope` may read it: a team-limited caller (a pinned token) is bound by the
    organization's budgets too, but their spend and holds (every team's) are withheld: None."""
    if scope.sees_whole_organization:
        return answer
    hidden = dict.fromkeys(("spend", "reserved", "remaining"))
    budgets = [{**b, **hidden} if b["scope"] == "organization" else b for b in answer["budgets"]]
    return {**answer, "budgets": budgets}


def reservation_release(*, token: ApiToken, reservation_id) -> dict | None:
    """Free an open hold at once. None: no such reservation in the token's organization."""
    reservation = Reservation.objects.filter(pk=reservation_id, organization_id=token.organization_id).first()
    if reservation is None:
        return None
    now = datetime.now(UTC)
    with transaction.atomic():
        released = Reservation.objects.filter(pk=reservation.pk, state=Reservation.State.OPEN).update(
            state=Reservation.State.RELEASED, closed_at=now
        )
        if released:
            ReservationHold.objects.filter(reservation_id=reservation.pk).update(is_open=False, closed_at=_closed_now())
    reservation.refresh_from_db(fields=["state"])
    return {"reservation_id": str(reservation.pk), "released": bool(released), "state": reservation.state}


def _closed_now():
    """`closed_at` on the clock `database_now` reads (Now() is statement_timestamp() on PostgreSQL)."""
    return Now() if connection.vendor == "postgresql" else datetime.now(UTC)


def reservations_settle(organization_id: int, events: list[tuple[str, Decimal]]) -> None:
    """Settle the reservations of events just stored: the hold closes and keeps the real cost.

    Called after the ingest transaction committed (metrics.ingest_hooks), so a closed hold's event
    is already visible to the spend query. A released or expired reservation settles too (the call
    was made after all: a token budget counts its cost); a settled one is left as it is.
    """
    costs = {request_id: cost for request_id, cost in events if request_id}
    if not costs:
        return
    pending = list(
        Reservation.objects.filter(
            organization_id=organization_id, request_id__in=list(costs),
            state__in=[Reservation.State.OPEN, Reservation.State.RELEASED],
        ).values_list("pk", "request_id")
    )  # fmt: skip
    if not pending:
        return
    now = datetime.now(UTC)
    with transaction.atomic():
        for pk, request_id in pending:
            cost = costs[request_id]
            changed = Reservation.objects.filter(
                pk=pk, state__in=[Reservation.State.OPEN, Reservation.State.RELEASED]
            ).update(state=Reservation.State.SETTLED, cost=cost, closed_at=now)
            if changed:
                holds = ReservationHold.objects.filter(reservation_id=pk)
                holds.update(is_open=False, cost=cost, closed_at=_closed_now())
