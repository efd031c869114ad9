"""Budget standings for pages: many budgets at once, in a bounded number of queries.

A page that lists twenty budgets must not cost a hundred queries: `billing.selectors.budget_spends`
sums every budget of an organization per window (at most three periods and the forecast's last
seven days) in a few grouped queries. Here the standings get what a progress bar needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from .models import Budget
from .selectors import BudgetStatus, budget_statuses

NEAR_FRACTION = Decimal("0.8")


@dataclass(frozen=True)
class BudgetRow:
    """A budget's standing, with what a progress bar needs."""

    status: BudgetStatus

    @property
    def budget(self) -> Budget:
        return self.status.budget

    @property
    def percent(self) -> float:
        return round(float(self.status.fraction_used) * 100, 1)

    @property
    def bar_width(self) -> int:
        return max(0, min(100, round(float(self.status.fraction_used) * 100)))

    @property
    def level(self) -> str:
        if self.status.reached:
            return "over"
        if self.status.fraction_used >= NEAR_FRACTION:
            return "near"
        return ""

    @property
    def projected_over(self) -> bool:
        return self.status.projected_over


def budget_rows(budgets: list[Budget], now: datetime | None = None) -> list[BudgetRow]:
    """Standings of budgets (with `organization` and `team` selected), in order."""
    return [BudgetRow(status=status) for status in budget_statuses(budgets, now)]
