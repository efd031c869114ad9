"""Reads for billing: budget periods, spend and forecasts, and the allowed / not-allowed answer for
gateways.

`budget_spends` is the one place a budget's spend is computed: budget pages, the team page, the
budget check, evaluation and alert emails, and the Prometheus gauges all read it. It sums many
budgets at once: budgets of one organization sharing a window (their period so far, or the last
seven days for the forecast) are read together in one grouped query per source (daily rollups,
hourly rollups, raw tail), grouped by team and, when user budgets exist, by team and user.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core.cache import cache
from django.db.models import Q

from llmcost_project.db import Sum
from metrics.forecasts import RECENT, SpendProjection, calendar_period
from metrics.selectors import EventFilter, rolled_up_team_costs, scoped_events, usage_by
from teams.access import AccessScope
from teams.models import Organization, Team

from .models import Budget


def budget_period(budget: Budget, now: datetime) -> tuple[datetime, datetime]:
    """The calendar period containing `now`, in the organization's time zone, as UTC instants."""
    return calendar_period(budget.organization.time_zone, budget.period, now)


def budget_scope(budget: Budget) -> AccessScope:
    """What a budget covers, whoever reads it: its team, or every team of its organization."""
    return AccessScope(
        organization=budget.organization,
        team_ids=None if budget.team_id is None else frozenset([budget.team_id]),
    )


# --- spend: one grouped algorithm for any number of budgets -------------------------------------

# The forecast's recent run rate is measured over this window before `now`.
FORECAST_RECENT = RECENT


@dataclass(frozen=True)
class BudgetSpend:
    period_start: datetime
    period_end: datetime
    spend: Decimal  # from period start until min(period end, now)
    # Spend in the FORECAST_RECENT window before now (None when not asked for, e.g. on /metrics).
    recent_spend: Decimal | None = None


# (organization id, start, end) -> the budgets summed over that window
Windows = dict[tuple[int, datetime, datetime], list[Budget]]


def _window_costs(budgets: list[Budget], start: datetime, end: datetime, *, rolled_up_only: bool) -> dict[int, Decimal]:
    """Spend of each budget (all of one organization) in [start, end): one grouped read by team
    for organization and team budgets, one by (team, user) for user budgets.

    `rolled_up_only` reads team-total rollup rows alone (whole UTC hours, no raw events: the
    Prometheus scrape must not touch raw events), and user budgets report their last evaluation.
    """
    organization = budgets[0].organization
    scope = AccessScope(organization=organization)  # the budgets' reach, not a reader's
    filters = EventFilter(start=start, end=end)
    by_team: dict = {}
    if any(not b.user_id for b in budgets):
        if rolled_up_only:
            by_team = rolled_up_team_costs(organization_id=organization.pk, start=start, end=end)
        else:
            grouped = usage_by(scope=scope, filters=filters, fields=("team",))
            by_team = {key[0]: values["cost"] for key, values in grouped.items()}
    user_ids = {b.user_id for b in budgets if b.user_id}
    by_user: dict = {}
    if user_ids and not rolled_up_only:
        grouped = usage_by(scope=scope, filters=filters, fields=("team", "user_id"), user_ids=user_ids)
        by_user = {key: values["cost"] for key, values in grouped.items()}
    costs: dict[int, Decimal] = {}
    for budget in budgets:
        if (budget.end_user or budget.token_id is not None) and not rolled_up_only:
            costs[budget.pk] = _raw_scope_cost(budget, start, end)
        elif (budget.user_id or budget.end_user or budget.token_id is not None) and rolled_up_only:
            evaluated = budget.evaluated_period_start == start and budget.evaluated_spend_usd is not None
            costs[budget.pk] = budget.evaluated_spend_usd if evaluated else Decimal(0)
        elif budget.user_id:
            costs[budget.pk] = by_user.get((budget.team_id, budget.user_id), Decimal(0))
        elif budget.team_id is not None:
            costs[budget.pk] = by_team.get(budget.team_id, Decimal(0))
        else:
            costs[budget.pk] = sum(by_team.values(), Decimal(0))
    return costs


def _raw_scope_cost(budget: Budget, start: datetime, end: datetime) -> Decimal:
    """Spend of an end user or token budget: rollups keep neither, so raw events (by index:
    end users within the organization's time range, tokens by their own)."""
    filters = EventFilter(start=start, end=end, user_id=budget.user_id or None)
    events = scoped_events(scope=budget_scope(budget), filters=filters)
    if budget.end_user:
        events = events.filter(end_user=budget.end_user)
    if budget.token_id is not None:
        events = events.filter(api_token_id=budget.token_id)
    return events.aggregate(total=Sum("cost"))["total"] or Decimal(0)


def _windows_costs(windows: Windows, *, rolled_up_only: bool = False) -> dict[tuple, dict[int, Decimal]]:
    return {
        window: _window_costs(members, window[1], window[2], rolled_up_only=rolled_up_only)
        for window, members in windows.items()
        if members
    }


def budget_spends(
    budgets: Iterable[Budget],
    now: datetime,
    *,
    period_at: datetime | None = None,
    recent: bool = True,
    rolled_up_only: bool = False,
) -> dict[int, BudgetSpend]:
    """Each budget's spend in its period containing `period_at` (default `now`), until `now`.

    Budgets need `organization` and `team` selected. `recent` also sums the last FORECAST_RECENT
    before `now` (the forecast's run rate). `rolled_up_only`: see `_window_costs`.
    """
    budgets = list(budgets)
    periods: dict[int, tuple[datetime, datetime]] = {}
    windows: Windows = defaultdict(list)

    def window(budget: Budget, start: datetime, end: datetime) -> tuple[int, datetime, datetime]:
        # Rollup rows exist only for hours that have begun, so the rolled-up read takes the whole
        # period (as /metrics always has); the live read stops at now.
        return (budget.organization_id, start, end if rolled_up_only else max(start, min(end, now)))

    for budget in budgets:
        start, end = periods[budget.pk] = budget_period(budget, period_at or now)
        windows[window(budget, start, end)].append(budget)
        if recent:
            windows[(budget.organization_id, now - FORECAST_RECENT, now)].append(budget)
    costs = _windows_costs(windows, rolled_up_only=rolled_up_only)
    spends = {}
    for budget in budgets:
        start, end = periods[budget.pk]
        period_costs = costs.get(window(budget, start, end), {})
        recent_costs = costs[(budget.organization_id, now - FORECAST_RECENT, now)] if recent else {}
        spends[budget.pk] = BudgetSpend(
            period_start=start,
            period_end=end,
            spend=period_costs.get(budget.pk, Decimal(0)),
            recent_spend=recent_costs.get(budget.pk) if recent else None,
        )
    return spends


def budget_spend(budget: Budget, start: datetime, end: datetime, now: datetime) -> Decimal:
    """Spend of the budget's scope from `start` until `now` (rollups plus the open tail)."""
    window = (budget.organization_id, start, max(start, min(end, now)))
    return _windows_costs({window: [budget]})[window][budget.pk]


# --- standing and forecast -----------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetStatus:
    """A budget's standing at `now`, with its forecast (metrics.forecasts: the one projection
    method, spend so far plus a blended run rate of the period and the last 7 days)."""

    budget: Budget
    period_start: datetime
    period_end: datetime
    spend: Decimal
    now: datetime
    recent_spend: Decimal | None = None

    @classmethod
    def of(cls, budget: Budget, spend: BudgetSpend, now: datetime) -> BudgetStatus:
        return cls(
            budget=budget, period_start=spend.period_start, period_end=spend.period_end,
            spend=spend.spend, now=now, recent_spend=spend.recent_spend,
        )  # fmt: skip

    @property
    def limit(self) -> Decimal:
        return self.budget.amount_usd

    @property
    def remaining(self) -> Decimal:
        return max(self.limit - self.spend, Decimal(0))

    @property
    def fraction_used(self) -> Decimal:
        return self.spend / self.limit

    @property
    def reached(self) -> bool:
        return self.spend >= self.limit  # reaching the limit exactly counts

    @property
    def allowed(self) -> bool:
        return not (self.budget.is_hard and self.reached)

    @property
    def projection(self) -> SpendProjection:
        return SpendProjection(self.period_start, self.period_end, self.now, self.spend, self.recent_spend)

    @property
    def spend_rate(self) -> Decimal:
        """USD per hour, as the forecast projects it."""
        return self.projection.rate

    @property
    def projected_spend(self) -> Decimal:
        """Spend at period end if the blended rate continues."""
        return self.projection.projected

    @property
    def projected_over(self) -> bool:
        return self.projected_spend > self.limit

    @property
    def projected_runs_out_at(self) -> datetime | None:
        """When spend reaches the limit at the blended rate, if within the period (now if reached)."""
        return self.projection.reaches_at(self.limit)

    @property
    def projected_runs_out_on(self) -> date | None:
        """The date (in the organization's time zone) the budget is projected to run out."""
        at = self.projected_runs_out_at
        return None if at is None else at.astimezone(ZoneInfo(self.budget.organization.time_zone)).date()

    @property
    def scope(self) -> str:
        return self.budget.scope

    def as_dict(self) -> dict:
        runs_out = self.projected_runs_out_on
        return {
            "budget_id": self.budget.pk,
            "name": self.budget.name,
            "scope": self.scope,
            "team_alias": self.budget.team.alias if self.budget.team else None,
            "user_id": self.budget.user_id or None,
            "end_user": self.budget.end_user or None,
            "period": self.budget.period,
            "period_start": self.period_start,
            "period_end": self.period_end,
            "spend": self.spend,
            "limit": self.limit,
            "remaining": self.remaining,
            "percent_used": round(float(self.fraction_used) * 100, 2),
            "projected_spend": self.projected_spend,
            "projected_runs_out_on": runs_out.isoformat() if runs_out else None,
            "hard": self.budget.is_hard,
            "allowed": self.allowed,
        }


def budget_statuses(budgets: Iterable[Budget], now: datetime | None = None) -> list[BudgetStatus]:
    """Standings of many budgets (with `organization` and `team` selected), in order, in a bounded
    number of queries: a few grouped reads per organization and window."""
    now = now or datetime.now(UTC)
    budgets = list(budgets)
    spends = budget_spends(budgets, now)
    return [BudgetStatus.of(budget, spends[budget.pk], now) for budget in budgets]


def budget_status(budget: Budget, now: datetime | None = None, *, fresh: bool = False) -> BudgetStatus:
    """A budget's standing now. Spend is cached briefly per budget and period (keys carry the
    budget's id, so one organization's figures never answer for another's); `fresh` skips the cache.
    """
    now = now or datetime.now(UTC)
    start, _ = budget_period(budget, now)
    key = f"budget-spend:v2:{budget.pk}:{start.isoformat()}"
    use_cache = not fresh and settings.BUDGET_SPEND_CACHE_SECONDS > 0
    spend = cache.get(key) if use_cache else None
    if spend is None:
        spend = budget_spends([budget], now)[budget.pk]
        if use_cache:
            cache.set(key, spend, settings.BUDGET_SPEND_CACHE_SECONDS)
    return BudgetStatus.of(budget, spend, now)


@dataclass(frozen=True)
class BudgetCaller:
    """Who is about to spend: the dimensions a budget may limit."""

    team_id: int | None = None
    user_id: str | None = None
    end_user: str | None = None
    token_id: int | None = None

    def q(self) -> Q:
        """The budgets that bind this caller, as a filter (see `binds`: the same rule)."""
        applies = Q(team__isnull=True)
        if self.team_id is not None:
            applies |= Q(team_id=self.team_id, user_id="")
            if self.user_id:
                applies |= Q(team_id=self.team_id, user_id=self.user_id)
        applies &= Q(end_user="") | Q(end_user=self.end_user or "", end_user__gt="")
        if self.token_id is None:
            return applies & Q(token__isnull=True)
        return applies & (Q(token__isnull=True) | Q(token_id=self.token_id))

    def binds(self, team_id: int | None, user_id: str, end_user: str, token_id: int | None) -> bool:
        """Whether a budget with these dimensions binds this caller (`q`'s rule, in Python)."""
        return (
            (team_id is None or team_id == self.team_id)
            and (not user_id or (team_id is not None and user_id == self.user_id))
            and (not end_user or end_user == self.end_user)
            and (token_id is None or token_id == self.token_id)
        )


def applicable_budgets(
    *, organization: Organization, team: Team | None, user_id: str | None, end_user: str | None = None,
    token_id: int | None = None,
) -> list[Budget]:
    """The organization's budgets, the team's, and the user's within the team; with `end_user` or
    `token_id`, also the budgets of that end user and that token (each within its team, if any)."""
    caller = BudgetCaller(team.pk if team else None, user_id, end_user, token_id)
    budgets = Budget.objects.filter(caller.q(), organization=organization, is_active=True)
    return list(budgets.select_related("organization", "team").order_by("id"))


def budget_check(
    *, organization: Organization, team: Team | None, user_id: str | None, end_user: str | None = None,
    token_id: int | None = None,
) -> dict:
    """The answer a gateway gets. Cached as a whole for the spend window: a gateway asks before
    every call, and the key names the organization, so no answer serves another organization."""
    scope = {"organization": organization, "team": team, "user_id": user_id, "end_user": end_user,
             "token_id": token_id}  # fmt: skip
    ttl = settings.BUDGET_SPEND_CACHE_SECONDS
    if ttl <= 0:
        return _budget_check(**scope)
    # The organization's budgets' dimensions are cached per organization, so a call from a caller
    # no budget binds (most calls) costs no query even when its own answer is not cached yet.
    dimensions_key = f"budget-dimensions:{organization.pk}"
    dimensions = cache.get(dimensions_key)
    if dimensions is None:
        active = Budget.objects.filter(organization=organization, is_active=True)
        dimensions = set(active.values_list("team_id", "user_id", "end_user", "token_id"))
        cache.set(dimensions_key, dimensions, ttl)
    team_id = team.pk if team else None
    if not any(BudgetCaller(team_id, user_id, end_user, token_id).binds(*d) for d in dimensions):
        return _check_answer(team, user_id, end_user, [])
    # Users ids are free text: hashed, they make a key every cache backend takes.
    who = hashlib.sha256(f"{user_id or ''}|{end_user or ''}|{token_id or ''}".encode()).hexdigest()[:32]
    key = f"budget-check:v2:{organization.pk}:{team_id or '-'}:{who}"
    answer = cache.get(key)
    if answer is None:
        answer = _budget_check(**scope)
        cache.set(key, answer, ttl)
    return answer


def _check_answer(team: Team | None, user_id: str | None, end_user: str | None, statuses: list[BudgetStatus]) -> dict:
    answer = {
        "allowed": all(status.allowed for status in statuses),
        "team_alias": team.alias if team else None,
        "user_id": user_id,
        "budgets": [status.as_dict() for status in statuses],
    }
    if end_user:
        answer["end_user"] = end_user
    return answer


def _budget_check(*, organization, team, user_id, end_user, token_id) -> dict:
    budgets = applicable_budgets(
        organization=organization, team=team, user_id=user_id, end_user=end_user, token_id=token_id
    )
    return _check_answer(team, user_id, end_user, budget_statuses(budgets))


WITHHELD_FIGURES = ("spend", "remaining", "percent_used", "projected_spend", "projected_runs_out_on")


def spans_teams(budget: dict) -> bool:
    """Whether a budget's spend (in an answer) is several teams' spending: one with no team, but
    the caller's own token's (the check and reserve answer for the calling token only)."""
    return budget["team_alias"] is None and budget["scope"] != "token"


def budget_check_for(scope: AccessScope, answer: dict) -> dict:
    """`answer` as `scope` may read it. Organization-wide budgets bind a team-limited caller (a
    pinned token) too, so they are listed with their limit, period and whether they allow spending,
    but their spend (every team's) is withheld: None."""
    if scope.sees_whole_organization:
        return answer
    budgets = [
        {**budget, **dict.fromkeys(WITHHELD_FIGURES)} if spans_teams(budget) else budget
        for budget in answer["budgets"]
    ]
    return {**answer, "budgets": budgets}
