"""The locked part of a reservation: decide on every hard budget and take the holds, in one round trip.

A reservation is allowed only if every hard budget that applies has room for its settled spend,
its open holds and the new amount. Deciding and writing must be one atomic step, or two gateways
could both take the last room. The statements below do it, and they are the same SQL on both
databases (table and column names come from the models):

1. create the ledger row of each hard budget's period if it is missing;
2. lock those rows, in budget-id order (PostgreSQL: SELECT … FOR UPDATE; SQLite needs no lock
   statement: its transactions begin IMMEDIATE here, so writers are serialised);
3. insert the reservation only if no hard budget would go over (the holds are summed inside the
   INSERT's WHERE);
4. insert its holds, one per budget, if the reservation was inserted;
5. read back, per budget, what is now held, and whether the reservation was inserted.

On PostgreSQL the five go to the server as one multi-statement query: one round trip, run as one
implicit transaction, so the ledger locks are held only while the server runs them, never across
network round trips or Python work in between (with four round trips under the locks, one
organization's reservations topped out at about 200/s), and it commits without waiting for its
WAL flush (ASYNC_COMMIT below says why that is safe enough). Under READ COMMITTED every statement takes
a fresh snapshot, so statement 3, which runs after statement 2 obtained the locks, sees every hold
committed by the reservation that held them before. Django's psycopg2 (and psycopg 3's default
client-side cursor) bind the parameters client-side, which a multi-statement query needs. On SQLite
the same statements run one by one inside one IMMEDIATE transaction.

Holds counted for a budget (the one rule, written once below as HELD): its open holds that have not
expired, at their estimates, plus its holds settled at or after `counted_since`, at their real
costs (see billing.reservations for why that window makes the count exact).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import cache
from typing import cast

from django.db import connection, transaction

from billing.pricing.money import from_units, to_units
from llmcost_project.db import INT64_MAX, exact_sum_function

from .models import BudgetLedger, Reservation, ReservationHold


@dataclass(frozen=True)
class Claim:
    """One budget a reservation holds against, as the statements need it."""

    budget_id: int
    period_start: datetime
    # Holds settled at or after this count (spend was read at this moment); for a soft budget, whose
    # standing is only reported, far in the future: none.
    counted_since: datetime
    # limit − settled spend; None: a soft budget, which never blocks.
    headroom: Decimal | None


@dataclass(frozen=True)
class Taken:
    inserted: bool  # False: some hard budget had no room, or the request id was reserved already
    held: dict[int, Decimal]  # per budget: open holds (this one included) + settled since


@dataclass(frozen=True)
class _Sql:
    """The statements' fixed parts, built once per database from the models' table and column names
    (never from input: every value is a parameter)."""

    insert_ledgers: str
    lock_ledgers: str
    held: str  # HELD for the budget of row `a` of `applying`; one parameter: now
    insert_reservation: str  # then: (WHERE) the room condition
    room: str  # one parameter: the amount, then HELD's
    insert_holds: str
    reservation_exists: str  # one parameter: the reservation's id
    reservation_fields: tuple


@cache
def _sql(vendor: str) -> _Sql:
    quote = connection.ops.quote_name

    def column(model, name: str) -> str:
        return quote(model._meta.get_field(name).column)

    def columns(fields) -> str:
        return ", ".join(quote(cast(str, f.column)) for f in fields)  # concrete fields: never None

    holds, ledgers = quote(ReservationHold._meta.db_table), quote(BudgetLedger._meta.db_table)
    reservations = quote(Reservation._meta.db_table)
    h = {name: column(ReservationHold, name) for name in (
        "reservation", "budget", "period_start", "amount", "expires_at", "is_open", "cost", "closed_at")}  # fmt: skip
    ledger_budget, ledger_start = column(BudgetLedger, "budget"), column(BudgetLedger, "period_start")
    total = exact_sum_function(connection)
    this_budget = f"x.{h['budget']} = a.budget_id AND x.{h['period_start']} = a.period_start"
    held = (
        f"(SELECT COALESCE({total}(x.{h['amount']}), 0) FROM {holds} x WHERE {this_budget}"
        f" AND x.{h['is_open']} AND x.{h['expires_at']} > %s)"
        f" + (SELECT COALESCE({total}(x.{h['cost']}), 0) FROM {holds} x WHERE {this_budget}"
        f" AND NOT x.{h['is_open']} AND x.{h['closed_at']} >= a.counted_since)"
    )
    fields = tuple(Reservation._meta.concrete_fields)
    ledger_of_a = f"l.{ledger_budget} = a.budget_id AND l.{ledger_start} = a.period_start"
    return _Sql(
        insert_ledgers=(
            f"INSERT INTO {ledgers} ({ledger_budget}, {ledger_start}) SELECT budget_id, period_start FROM applying a "
            f"WHERE NOT EXISTS (SELECT 1 FROM {ledgers} l WHERE {ledger_of_a}) ORDER BY budget_id "
            "ON CONFLICT DO NOTHING"
        ),
        lock_ledgers=(
            f"SELECT 1 FROM {ledgers} l JOIN applying a ON {ledger_of_a} ORDER BY l.{ledger_budget} FOR UPDATE OF l"
        ),
        held=held,
        insert_reservation=(
            f"INSERT INTO {reservations} ({columns(fields)}) "
            f"SELECT {', '.join(['%s'] * len(fields))} WHERE "
        ),
        room=f"NOT EXISTS (SELECT 1 FROM applying a WHERE a.is_hard AND a.headroom < %s + {held})",
        insert_holds=(
            f"INSERT INTO {holds} ({h['reservation']}, {h['budget']}, {h['period_start']}, {h['amount']}, "
            f"{h['expires_at']}, {h['is_open']}, {h['cost']}, {h['closed_at']}) "
            "SELECT %s, budget_id, period_start, %s, %s, %s, NULL, NULL FROM applying WHERE "
        ),
        reservation_exists=(
            f"EXISTS (SELECT 1 FROM {reservations} WHERE {columns([Reservation._meta.pk])} = %s)"
        ),
        reservation_fields=fields,
    )


def _applying(claims: Sequence[Claim]) -> tuple[str, list]:
    """A CTE of the claims: (budget_id, period_start, counted_since, headroom, is_hard)."""
    adapt = connection.ops.adapt_datetimefield_value
    params: list = []
    for claim in claims:
        # Headroom in money units, capped to 64 bits (a limit above $922 million is that much room).
        headroom = 0 if claim.headroom is None else min(max(to_units(claim.headroom), -INT64_MAX), INT64_MAX)
        params += [claim.budget_id, adapt(claim.period_start), adapt(claim.counted_since), headroom,
                   claim.headroom is not None]  # fmt: skip
    rows = ", ".join(["(%s, %s, %s, %s, %s)"] * len(claims))
    return f"WITH applying (budget_id, period_start, counted_since, headroom, is_hard) AS (VALUES {rows}) ", params


def take_holds(claims: Sequence[Claim], reservation: Reservation, now: datetime) -> Taken:
    """Insert `reservation` and its holds on every claimed budget if every hard one has room."""
    sql = _sql(connection.vendor)
    adapt = connection.ops.adapt_datetimefield_value
    values = [f.get_db_prep_save(getattr(reservation, f.attname), connection) for f in sql.reservation_fields]
    reservation_id = Reservation._meta.get_field("id").get_db_prep_save(reservation.pk, connection)
    amount = to_units(reservation.amount)
    hard = sorted({c.budget_id: c for c in claims if c.headroom is not None}.values(), key=lambda c: c.budget_id)
    statements: list[tuple[str, list]] = []
    if hard:
        hard_cte, hard_params = _applying(hard)
        statements.append((hard_cte + sql.insert_ledgers, hard_params))
        if connection.vendor == "postgresql":  # SQLite: the IMMEDIATE transaction is the lock
            statements.append((hard_cte + sql.lock_ledgers, hard_params))
    cte, cte_params = _applying(claims) if claims else ("", [])
    room, room_params = (sql.room, [amount, adapt(now)]) if hard else ("1 = 1", [])
    # ON CONFLICT: a request id this organization reserved already (its reservation is answered).
    insert = f"{cte}{sql.insert_reservation}{room} ON CONFLICT DO NOTHING"
    statements.append((insert, [*cte_params, *values, *room_params]))
    if claims:
        statements.append((
            cte + sql.insert_holds + sql.reservation_exists,
            [*cte_params, reservation_id, amount, adapt(reservation.expires_at), True, reservation_id],
        ))  # fmt: skip
        answer = f"{cte}SELECT a.budget_id, {sql.held}, {sql.reservation_exists} FROM applying a"
        statements.append((answer, [*cte_params, adapt(now), reservation_id]))
    else:
        statements.append((f"SELECT NULL, 0, {sql.reservation_exists}", [reservation_id]))
    rows = _run(statements)
    return Taken(
        inserted=bool(rows[0][2]),
        held={budget_id: from_units(held) for budget_id, held, _ in rows if budget_id is not None},
    )


# The locks are released at commit, and a durable commit waits for its WAL flush (about 3 ms on
# this project's reference disk): that wait, not the statements, would bound every budget to a few
# hundred reservations a second. A hold is a short-lived claim, not money: the events that spend
# are committed durably by ingest. Committing holds asynchronously means a database crash can lose
# the holds of the last moments (under a second, by wal_writer_delay), letting those calls'
# events exceed the limit by what they reserved; a durable commit by anyone (any ingest) writes
# them out with it.
ASYNC_COMMIT = "SET LOCAL synchronous_commit TO OFF"


def _run(statements: list[tuple[str, list]]) -> list[tuple]:
    """The statements in one transaction; the rows of the last."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # One query, one round trip; outside a transaction it is one implicit transaction of its
            # own (see the module docstring), inside one it runs in a savepoint like any other step.
            sql = "; ".join(sql for sql, _ in statements)
            params = [p for _, params in statements for p in params]
            if connection.in_atomic_block:
                with transaction.atomic():
                    cursor.execute(sql, params)
            else:
                cursor.execute(f"{ASYNC_COMMIT}; {sql}", params)
            return cursor.fetchall()
        with transaction.atomic():
            for sql, params in statements:
                cursor.execute(sql, params)
            return cursor.fetchall()
