"""Budget standings for pages: many budgets at once, in a bounded number of queries.

`billing.selectors.budget_status` answers for one budget (a handful of queries each). A page that
lists twenty budgets must not cost a hundred queries, so here the spend of every budget of one
organization is summed per period in a few grouped queries: at most three periods (daily, weekly,
monthly), each read once grouped by team and, when user budgets exist, once grouped by team and
user. The figures are the same sums `budget_spend` makes, over the same rollups and raw tail.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from metrics.selectors import EventFilter, usage_by
from teams.access import AccessScope

from .models import Budget
from .selectors import BudgetStatus, budget_period, budget_spend

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
        return self.status.projected_spend > self.status.limit


def _grouped_cost(scope: AccessScope, filters: EventFilter, *, per_user: bool, user_ids: set[str]) -> dict:
    """Cost keyed by team id (or by (team id, user_id))."""
    if per_user:
        grouped = usage_by(scope=scope, filters=filters, fields=("team", "user_id"), user_ids=user_ids)
        return {key: values["cost"] for key, values in grouped.items()}
    grouped = usage_by(scope=scope, filters=filters, fields=("team",))
    return {key[0]: values["cost"] for key, values in grouped.items()}


def budget_rows(budgets: list[Budget], now: datetime | None = None) -> list[BudgetRow]:
    """Standings of budgets of ONE organization (with `organization` and `team` selected), in order."""
    now = now or datetime.now(UTC)
    if not budgets:
        return []
    organization = budgets[0].organization
    assert all(b.organization_id == organization.pk for b in budgets), "one organization at a time"
    scope = AccessScope(organization=organization)  # the budget's reach, not the reader's
    periods: dict[tuple[datetime, datetime], list[Budget]] = defaultdict(list)
    for budget in budgets:
        periods[budget_period(budget, now)].append(budget)
    spend: dict[int, Decimal] = {}
    for (start, end), members in periods.items():
        filters = EventFilter(start=start, end=min(end, now))
        by_team: dict = {}
        if any(not b.user_id for b in members):
            by_team = _grouped_cost(scope, filters, per_user=False, user_ids=set())
        user_ids = {b.user_id for b in members if b.user_id}
        by_user = _grouped_cost(scope, filters, per_user=True, user_ids=user_ids) if user_ids else {}
        for budget in members:
            if budget.end_user or budget.token_id is not None:  # scopes the grouped sums do not keep
                spend[budget.pk] = budget_spend(budget, start, end, now)
            elif budget.team_id is None:
                spend[budget.pk] = sum(by_team.values(), Decimal(0))
            elif budget.user_id:
                spend[budget.pk] = by_user.get((budget.team_id, budget.user_id), Decimal(0))
            else:
                spend[budget.pk] = by_team.get(budget.team_id, Decimal(0))
    rows = []
    for budget in budgets:
        start, end = budget_period(budget, now)
        status = BudgetStatus(budget=budget, period_start=start, period_end=end, spend=spend[budget.pk], now=now)
        rows.append(BudgetRow(status=status))
    return rows
