"""Money columns: exact USD amounts stored as whole multiples of 1e-10 USD.

Storing integers makes every SUM exact on every database: SQLite keeps DECIMAL columns as
floating point, so its sums drift in the last digits, while integer sums do not. 1e-10 USD keeps
the cost of a single token of the cheapest catalog model exact ($0.0375 per million is 375
units). In Python values are `Decimal`.

Two kinds of column:
- `MoneyField`, one amount (an event's cost, a batch's cost): a 64-bit integer, up to $922 million,
  far above the per-event bounds ingest enforces (see `metrics.schemas`) and what the price table
  can produce (prices ≤ MAX_PRICE_PER_MTOK, tokens ≤ 1e8 per kind).
- `MoneySumField`, a sum of amounts (rollups, a budget's spend): sums have no bound, so it is
  `numeric(38, 0)` on PostgreSQL and, on SQLite, a column without type affinity that keeps a
  64-bit integer as an integer and a larger sum as exact decimal text (an INTEGER or NUMERIC
  column would turn that text into a float). Sums themselves go through `llmcost_project.db.Sum`.
"""

from decimal import ROUND_HALF_EVEN, Decimal
from typing import TYPE_CHECKING

from django.db import models
from django.db.models.expressions import Combinable

from llmcost_project.db import sqlite_integer

SCALE = 10
QUANTUM = Decimal(1).scaleb(-SCALE)
MAX_PRICE_PER_MTOK = Decimal(100_000)  # USD per million tokens: 100x the dearest catalog price


def to_units(value) -> int:
    return int(Decimal(value).quantize(QUANTUM, ROUND_HALF_EVEN).scaleb(SCALE))


def from_units(value: int | str | Decimal) -> Decimal:
    return Decimal(int(value)).scaleb(-SCALE)


if TYPE_CHECKING:  # for type checkers: assigned Decimals (or ints, strings), read back as Decimal
    _MoneyBase = models.BigIntegerField[Decimal | int | str | Combinable, Decimal]
else:
    _MoneyBase = models.BigIntegerField


class MoneyField(_MoneyBase):
    description = "USD amount (stored as integer 1e-10 USD units)"

    def from_db_value(self, value, expression, connection):
        return None if value is None else from_units(value)

    def to_python(self, value):
        if value is None or isinstance(value, Decimal):
            return value
        return Decimal(str(value))

    def get_prep_value(self, value):
        if value is None:
            return None
        return to_units(value)

    def formfield(self, **kwargs):
        return models.DecimalField(max_digits=20, decimal_places=SCALE).formfield(**kwargs)


class MoneySumField(MoneyField):
    description = "Sum of USD amounts (integer 1e-10 USD units, any size)"

    def db_type(self, connection):
        if connection.vendor == "postgresql":
            return "numeric(38, 0)"
        if connection.vendor == "sqlite":
            return ""  # no affinity: see the module docstring
        return super().db_type(connection)

    def get_db_prep_value(self, value, connection, prepared=False):
        value = super().get_db_prep_value(value, connection, prepared)
        if connection.vendor == "sqlite" and isinstance(value, int):
            return sqlite_integer(value)
        return value

    @property
    def validators(self):
        return []  # no 64-bit range: that is the point of this field

    def formfield(self, **kwargs):
        return models.DecimalField(max_digits=38, decimal_places=SCALE).formfield(**kwargs)
