"""Database helpers every app shares: sums that cannot overflow, and telling an outage from a bug.

Money is stored as integer 1e-10 USD units (see `billing.pricing.money`) and counts as integers, so their
sums are exact, but a 64-bit integer holds at most $922 million in those units: one tenant's
hostile or mistaken data can pass that in a single hour. PostgreSQL's `sum()` of a bigint column
is already a `numeric` (arbitrary precision); SQLite's `sum()` raises "integer overflow". So every
sum in the project goes through `Sum` below (a test forbids Django's own), which on SQLite calls
an exact Python aggregate for integer columns. Its result is an integer when it fits in 64 bits
and the same number as decimal text when it does not; Django's integer conversion reads both.
"""

from __future__ import annotations

from django.db import InterfaceError, OperationalError, models
from django.db.backends.signals import connection_created
from django.dispatch import receiver

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_INTEGER_TYPES = {"IntegerField", "BigIntegerField", "SmallIntegerField", "PositiveIntegerField",
                  "PositiveBigIntegerField", "PositiveSmallIntegerField"}  # fmt: skip


def sqlite_integer(value: int) -> int | str:
    """An integer as SQLite can hold it exactly: itself within 64 bits, decimal text beyond."""
    return value if INT64_MIN <= value <= INT64_MAX else str(value)


class _ExactSum:
    """SQLite aggregate: the exact sum of integers (or of integers stored as decimal text)."""

    def __init__(self) -> None:
        self.total: int | None = None

    def step(self, value) -> None:
        if value is not None:
            self.total = (self.total or 0) + int(value)

    def finalize(self) -> int | str | None:
        return None if self.total is None else sqlite_integer(self.total)


@receiver(connection_created)
def _register_exact_sum(sender, connection, **kwargs) -> None:
    if connection.vendor == "sqlite":
        connection.connection.create_aggregate("EXACT_SUM", 1, _ExactSum)


class Sum(models.Sum):
    """Django's `Sum`, exact and free of overflow for integer columns on every database."""

    def as_sqlite(self, compiler, connection, **extra_context):
        if self.output_field.get_internal_type() in _INTEGER_TYPES:
            extra_context["function"] = "EXACT_SUM"
        return super().as_sqlite(compiler, connection, **extra_context)


def exact_sum_function(connection) -> str:
    """The SQL aggregate `Sum` uses for integer columns, for statements written by hand."""
    return "EXACT_SUM" if connection.vendor == "sqlite" else "SUM"


# SQLSTATE classes that mean the server is unreachable or refusing work for now: connection
# exception, insufficient resources (too many connections, disk full), operator intervention
# (shutting down, starting up, a cancelled statement).
_PG_UNAVAILABLE_CLASSES = ("08", "53", "57")
# SQLite result codes (and their extended forms) with the same meaning: busy past the timeout,
# locked, the file cannot be opened or read.
_SQLITE_UNAVAILABLE = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_CANTOPEN", "SQLITE_IOERR")


def database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot be reached now (retry later), not that a query is wrong.

    InterfaceError is a closed or broken connection. An OperationalError counts only for the causes
    above: SQLite's "integer overflow" or "no such table" are OperationalErrors too, and are bugs.
    """
    if isinstance(exc, InterfaceError):
        return True
    if not isinstance(exc, OperationalError):
        return False
    cause = exc.__cause__
    if hasattr(cause, "pgcode"):  # psycopg: no SQLSTATE at all means no answer from the server
        code = getattr(cause, "pgcode", None)
        return code is None or code[:2] in _PG_UNAVAILABLE_CLASSES
    name = getattr(cause, "sqlite_errorname", None)
    if name is not None:
        return name.startswith(_SQLITE_UNAVAILABLE)
    return False
