"""Money columns: exact USD amounts stored as whole multiples of 1e-10 USD.

Storing integers makes every SUM exact on every database: SQLite keeps DECIMAL columns as
floating point, so its sums drift in the last digits, while integer sums do not. 1e-10 USD keeps
the cost of a single token of the cheapest catalog model exact ($0.0375 per million is 375
units), and a 64-bit integer still holds sums up to $922 million. In Python values are `Decimal`.
"""

from decimal import ROUND_HALF_EVEN, Decimal
from typing import TYPE_CHECKING

from django.db import models
from django.db.models.expressions import Combinable

SCALE = 10
QUANTUM = Decimal(1).scaleb(-SCALE)


def to_units(value) -> int:
    return int(Decimal(value).quantize(QUANTUM, ROUND_HALF_EVEN).scaleb(SCALE))


def from_units(value: int) -> Decimal:
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
