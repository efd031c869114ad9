"""Reads for billing: budget periods, spend and the allowed / not-allowed answer for gateways."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core.cache import cache
from django.db.models import Q

from metrics.selectors import EventFilter, usage_cost
from teams.access import AccessScope
from teams.models import Organization, Team

from .models import Budget


def budget_period(budget: Budget, now: datetime) -> tuple[datetime, datetime]:
    """The calendar period containing `now`, in the organization's time zone, as UTC instants."""
    zone = ZoneInfo(budget.organization.time_zone)
    today = now.astimezone(zone).date()
    if budget.period == Budget.Period.DAILY:
        first, following = today, today + timedelta(days=1)
    elif budget.period == Budget.Period.WEEKLY:
        first = today - timedelta(days=today.weekday())
        following = first + timedelta(days=7)
    else:
        first = today.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
    # Combining with the zone (not adding hours) keeps midnight right across DST changes.
    start = datetime.combine(first, time.min, tzinfo=zone).astimezone(UTC)
    end = datetime.combine(following, time.min, tzinfo=zone).astimezone(UTC)
    return start, end


def budget_spend(budget: Budget, start: datetime, end: datetime, now: datetime) -> Decimal:
    """Spend of the budget's scope from `start` until `now` (rollups plus the open tail).

    A token budget's spend is what its reservations settled (events do not record the token);
    an end user budget reads raw events (rollups do not keep end users).
    """
    if budget.token_id is not None or budget.end_user:
        from .reservations import scoped_spend  # the reservations part builds on this module

        return scoped_spend(budget, start, min(end, now))
    scope = AccessScope(
        organization=budget.organization,
        team_ids=None if budget.team_id is None else frozenset([budget.team_id]),
    )
    filters = EventFilter(start=start, end=min(end, now), user_id=budget.user_id or None)
    return usage_cost(scope=scope, filters=filters)


@dataclass(frozen=True)
class BudgetStatus:
    budget: Budget
    period_start: datetime
    period_end: datetime
    spend: Decimal
    now: datetime

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
    def projected_spend(self) -> Decimal:
        """Spend at period end if the rate so far continues."""
        elapsed = (self.now - self.period_start).total_seconds()
        length = (self.period_end - self.period_start).total_seconds()
        if elapsed <= 0:
            return self.spend
        return (self.spend * Decimal(length) / Decimal(elapsed)).quantize(Decimal("0.000001"))

    @property
    def scope(self) -> str:
        return self.budget.scope

    def as_dict(self) -> dict:
        return {
            "budget_id": self.budget.pk,
            "name": self.budget.name,
            "scope": self.scope,
            "team_alias": self.budget.team.alias if self.budget.team else None,
            "user_id": self.budget.user_id or None,
            "period": self.budget.period,
            "period_start": self.period_start,
            "period_end": self.period_end,
            "spend": self.spend,
            "limit": self.limit,
            "remaining": self.remaining,
            "percent_used": round(float(self.fraction_used) * 100, 2),
            "projected_spend": self.projected_spend,
            "hard": self.budget.is_hard,
            "allowed": self.allowed,
        }


def budget_status(budget: Budget, now: datetime | None = None, *, fresh: bool = False) -> BudgetStatus:
    """A budget's standing now. Spend is cached briefly per budget and period (keys carry the
    budget's id, so one organization's figures never answer for another's); `fresh` skips the cache.
    """
    now = now or datetime.now(UTC)
    start, end = budget_period(budget, now)
    key = f"budget-spend:{budget.pk}:{start.isoformat()}"
    use_cache = not fresh and settings.BUDGET_SPEND_CACHE_SECONDS > 0
    spend = cache.get(key) if use_cache else None
    if spend is None:
        spend = budget_spend(budget, start, end, now)
        if use_cache:
            cache.set(key, spend, settings.BUDGET_SPEND_CACHE_SECONDS)
    return BudgetStatus(budget=budget, period_start=start, period_end=end, spend=spend, now=now)


def applicable_budgets(
    *, organization: Organization, team: Team | None, user_id: str | None, end_user: str | None = None,
    token_id: int | None = None,
) -> list[Budget]:
    """The organization's budgets, the team's, and the user's within the team; with `end_user` or
    `token_id`, also the budgets of that end user and that token (each within its team, if any)."""
    applies = Q(team__isnull=True)
    if team is not None:
        applies |= Q(team=team, user_id="")
        if user_id:
            applies |= Q(team=team, user_id=user_id)
    applies &= Q(end_user="") | Q(end_user=end_user or "", end_user__gt="")
    applies &= Q(token__isnull=True) | Q(token_id=token_id) if token_id is not None else Q(token__isnull=True)
    budgets = Budget.objects.filter(applies, organization=organization, is_active=True)
    return list(budgets.select_related("organization", "team").order_by("id"))


def budget_check(*, organization: Organization, team: Team | None, user_id: str | None) -> dict:
    """The answer a gateway gets. Cached as a whole for the spend window: a gateway asks before
    every call, and the key names the organization, so no answer serves another organization."""
    ttl = settings.BUDGET_SPEND_CACHE_SECONDS
    if ttl <= 0:
        return _budget_check(organization=organization, team=team, user_id=user_id)
    # Whether any budget applies is cached per organization, so a call from a user or team
    # without one (most calls) costs no query even when its own answer is not cached yet.
    scopes_key = f"budget-scopes:{organization.pk}"
    scopes = cache.get(scopes_key)
    if scopes is None:
        active = Budget.objects.filter(organization=organization, is_active=True)
        scopes = set(active.values_list("team_id", "user_id"))
        cache.set(scopes_key, scopes, ttl)
    team_id = team.pk if team else None
    if not any(t is None or (t == team_id and u in ("", user_id)) for t, u in scopes):
        return {"allowed": True, "team_alias": team.alias if team else None, "user_id": user_id, "budgets": []}
    # Users ids are free text: hashed, they make a key every cache backend takes.
    user_key = hashlib.sha256(user_id.encode()).hexdigest()[:32] if user_id else ""
    key = f"budget-check:{organization.pk}:{team_id or '-'}:{user_key}"
    answer = cache.get(key)
    if answer is None:
        answer = _budget_check(organization=organization, team=team, user_id=user_id)
        cache.set(key, answer, ttl)
    return answer


def _budget_check(*, organization: Organization, team: Team | None, user_id: str | None) -> dict:
    statuses = [
        budget_status(budget)
        for budget in applicable_budgets(organization=organization, team=team, user_id=user_id)
    ]
    return {
        "allowed": all(status.allowed for status in statuses),
        "team_alias": team.alias if team else None,
        "user_id": user_id,
        "budgets": [status.as_dict() for status in statuses],
    }


WITHHELD_FIGURES = ("spend", "remaining", "percent_used", "projected_spend")


def budget_check_for(scope: AccessScope, answer: dict) -> dict:
    """`answer` as `scope` may read it. Organization budgets bind a team-limited caller (a pinned
    token) too, so they are listed with their limit, period and whether they allow spending, but
    their spend (every team's) is withheld: None."""
    if scope.sees_whole_organization:
        return answer
    budgets = [
        {**budget, **dict.fromkeys(WITHHELD_FIGURES)} if budget["scope"] == "organization" else budget
        for budget in answer["budgets"]
    ]
    return {**answer, "budgets": budgets}
