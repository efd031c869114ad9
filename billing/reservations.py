"""Reservations: a hard budget that cannot be overshot by concurrent gateways.

A gateway reserves an estimate before its LLM call and ingests the call's event with the same
request id afterwards; the event settles the hold (its real cost replaces the estimate).

Mechanism: one ledger row per (budget, period), locked with SELECT … FOR UPDATE in budget-id
order (on SQLite, whose transactions here begin IMMEDIATE, writers are serialised instead); under
the locks the holds are summed, the decision is taken for every hard budget at once and the holds
are written, so no two reservations can both take the last room (no check-then-write). On
PostgreSQL that locked part is one multi-statement query, so the locks are held for one round trip
(billing.holds). It works on both supported databases without Redis, which the embedded default
may not have, and a lock per budget period keeps reservations on unrelated budgets from waiting
for each other.

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
settlement, which errs towards refusing.

RESERVE_SPEND_CACHE_SECONDS (default 1) lets reservations reuse a spend read (and the list of
budgets that apply) that long ago: reserved calls stay exact (the window starts at the read), but
events ingested without a reservation, and budgets just created or changed, count up to that much
later. 0 reads both for every reservation (about ten more queries each).

Settlement and release never take the ledger locks: closing a hold only frees room.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, connection, transaction
from django.db.models.functions import Now

from llmcost_project.degraded import degraded
from teams.access import AccessScope
from teams.models import ApiToken, Team

from .holds import Claim, take_holds
from .models import Budget, Reservation, ReservationHold
from .selectors import applicable_budgets, budget_period, budget_spend, budget_status, spans_teams

logger = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 300
MAX_TTL_SECONDS = 3600


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


def _budgets_key(organization_id: int, team_alias, user_id, end_user, token_id) -> str:
    # By the alias the gateway names (not the team's id), so that an answer given while the
    # database is away, when no team can be looked up, finds the same entry.
    raw = f"{team_alias}|{user_id}|{end_user}|{token_id}"
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
    team_alias: str | None = None,
    user_id: str | None = None,
    end_user: str | None = None,
    request_id: str | None = None,
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
    now: datetime | None = None,
) -> dict:
    """Hold `amount` on every budget that applies, if every hard one has room; the answer a gateway gets.

    `team_alias` is the alias the gateway named (or its pinned token's); `team` that team, if it exists."""
    now = now or datetime.now(UTC)
    organization = token.organization
    key = _budgets_key(organization.pk, team_alias or (team.alias if team else None), user_id, end_user, token.pk)
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


def reservation_unavailable(
    *, token: ApiToken, team_alias: str | None, user_id: str | None = None, end_user: str | None = None,
    now: datetime | None = None,
) -> dict:
    """The answer while the database is away (the token was recognised from memory: see
    billing.api.ReserveAuthentication): no hold can be taken, each budget's `on_error` decides."""
    key = _budgets_key(token.organization_id, team_alias, user_id, end_user, token.pk)
    return _degraded_answer(key, now or datetime.now(UTC))


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


# A soft budget's holds settled since this moment count: none (its spend is read whole).
NEVER = datetime(9999, 1, 1, tzinfo=UTC)


def _reserve(
    *, token: ApiToken, team: Team | None, budgets: list[Budget], amount: Decimal, user_id: str, end_user: str,
    request_id: str, ttl_seconds: int, now: datetime,
) -> dict:  # fmt: skip
    periods = {budget.pk: budget_period(budget, now) for budget in budgets}
    spend: dict[int, Decimal] = {}
    claims = []
    for budget in budgets:
        start, end = periods[budget.pk]
        if budget.is_hard:  # read before the locks: see the module docstring
            spend[budget.pk], read_at = _settled_spend(budget, start, end)
            claims.append(Claim(budget.pk, start, counted_since=read_at, headroom=budget.amount_usd - spend[budget.pk]))
        else:  # soft budgets never block: their (briefly cached) standing is reported
            spend[budget.pk] = budget_status(budget, now).spend
            claims.append(Claim(budget.pk, start, counted_since=NEVER, headroom=None))
    reservation = Reservation(
        id=uuid.uuid4(), organization_id=token.organization_id, token=token, team=team, user_id=user_id,
        end_user=end_user, request_id=request_id, amount=amount, expires_at=now + timedelta(seconds=ttl_seconds),
        created_at=now,
    )  # fmt: skip
    taken = take_holds(claims, reservation, now)
    held = taken.held
    existing = None
    if not taken.inserted and request_id:  # a retried reserve gets its reservation back, never a second hold
        existing = Reservation.objects.filter(organization_id=token.organization_id, request_id=request_id).first()
    if existing is not None:
        allowed = existing.state == Reservation.State.OPEN and existing.expires_at > now
        reservation = existing
    else:
        allowed = taken.inserted
    answer_budgets = [
        Figures(b, periods[b.pk][0], periods[b.pk][1], spend[b.pk], held[b.pk]).as_dict() for b in budgets
    ]
    answer: dict = {"allowed": allowed, "degraded": False}
    if allowed:
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
    budgets = [{**b, **hidden} if spans_teams(b) else b for b in answer["budgets"]]
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
