"""Budget gauges on /metrics: billing's budgets part registers them as a section of metrics'
business metrics (see metrics.prometheus.register_business_section), from BillingConfig.ready().

Each active budget is one series (admins create them): its spend, limit and used ratio for its
current period, from hourly and daily rollup rows (whole UTC hours: a period starting on a half
hour counts from the next hour).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal

from prometheus_client.core import GaugeMetricFamily, Metric

from metrics.prometheus import BusinessSection

from .models import Budget
from .selectors import budget_period
from .selectors import budget_spends as budget_spends_of

logger = logging.getLogger(__name__)

BUDGET_LABELS = ("organization", "team", "budget_id", "name", "scope", "period")

# BUDGET_LABELS values -> (spend, limit)
BudgetFigures = dict[tuple[str, ...], tuple[Decimal, Decimal]]


def budget_spends(now: datetime) -> list[tuple[Budget, Decimal]]:
    """Every active budget with its spend so far in its current period.

    Read by `billing.selectors.budget_spends` from team-total rollup rows only: organization and
    team budgets sharing an organization and period are summed together, two grouped queries per
    window however many budgets there are. Rollups keep per-user rows by day only, so a user budget
    reports the spend its last evaluation found (the budgets task, every minute; the figure its
    alerts use), and 0 in a period not yet evaluated.
    """
    budgets = list(Budget.objects.filter(is_active=True).select_related("organization", "team").order_by("id"))
    readable = []
    for budget in budgets:
        try:
            budget_period(budget, now)
        except Exception:  # one organization's bad setting (say, its time zone) costs only its own gauges
            logger.exception("budget %s left out of /metrics", budget.pk)
        else:
            readable.append(budget)
    spends = budget_spends_of(readable, now, recent=False, rolled_up_only=True)
    return [(budget, spends[budget.pk].spend) for budget in readable]


def budget_figures(now: datetime) -> BudgetFigures:
    """Each active budget's labels with its spend and limit."""
    figures: BudgetFigures = {}
    for budget, spend in budget_spends(now):
        labels = (
            budget.organization.slug,
            budget.team.alias if budget.team is not None else "",
            str(budget.pk),
            budget.name,
            "user" if budget.user_id else "team" if budget.team_id else "organization",
            budget.period,
        )
        figures[labels] = (spend, budget.amount_usd)
    return figures


def budget_metric_families(figures: BudgetFigures) -> Iterator[Metric]:
    spend = GaugeMetricFamily(
        "llmcost_budget_spend_usd",
        "Spend so far in the budget's current period (rolled-up events).",
        labels=BUDGET_LABELS,
    )
    limit = GaugeMetricFamily("llmcost_budget_limit_usd", "The budget's limit per period.", labels=BUDGET_LABELS)
    ratio = GaugeMetricFamily(
        "llmcost_budget_used_ratio",
        "Spend divided by limit in the current period (1 = limit reached).",
        labels=BUDGET_LABELS,
    )
    for budget_labels, (spent, amount) in sorted(figures.items()):
        spend.add_metric(list(budget_labels), float(spent))
        limit.add_metric(list(budget_labels), float(amount))
        ratio.add_metric(list(budget_labels), float(spent / amount))
    yield from (spend, limit, ratio)


BUDGETS_SECTION = BusinessSection(name="budgets", compute=budget_figures, families=budget_metric_families)
