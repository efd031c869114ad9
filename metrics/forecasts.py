"""Where spend is heading: the one projection method, for budgets (billing) and for teams' month-end
forecasts (`GET /api/v1/insights/forecast`).

Spend so far plus a blended hourly rate times the hours left in the period. The rate blends the
period-so-far rate (spend / hours elapsed) with the recent rate (spend of the last 7 days / 168),
each weighted by the hours it was measured over:

    rate = (E / (E + 168)) * period_rate + (168 / (E + 168)) * recent_rate,   E = hours elapsed

so early in a period (a few noisy hours) the last week's pace dominates, and by the third week of a
month the period's own pace counts three times as much. The range around it projects the two rates
it blends on their own: the lower and the higher of them, so it is wide when the month so far and
the last week disagree and narrow when they tell the same story. Periods follow the organization's
time zone; hours are real hours (a DST day has 23 or 25).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from teams.access import AccessScope

from .selectors import EventFilter, usage_by, with_team

# The recent run rate is measured over this window before `now`.
RECENT = timedelta(days=7)
HOUR_SECONDS = Decimal(3600)
RECENT_HOURS = Decimal(int(RECENT.total_seconds())) / HOUR_SECONDS
PROJECTION_QUANTUM = Decimal("0.000001")


def hours_between(start: datetime, end: datetime) -> Decimal:
    return max(Decimal(str((end - start).total_seconds())), Decimal(0)) / HOUR_SECONDS


@dataclass(frozen=True)
class SpendProjection:
    """Spend of a period [start, end) so far, at `now`, and where it is heading."""

    start: datetime
    end: datetime
    now: datetime
    spend: Decimal
    recent_spend: Decimal | None = None  # spend in the RECENT window before now; None: not known

    @property
    def elapsed_hours(self) -> Decimal:
        return hours_between(self.start, min(max(self.now, self.start), self.end))

    @property
    def period_rate(self) -> Decimal:
        elapsed = self.elapsed_hours
        return self.spend / elapsed if elapsed else Decimal(0)

    @property
    def recent_rate(self) -> Decimal | None:
        return None if self.recent_spend is None else self.recent_spend / RECENT_HOURS

    @property
    def rate(self) -> Decimal:
        """USD per hour, as the projection runs it (see the module docstring)."""
        recent = self.recent_rate
        if recent is None:
            return self.period_rate
        elapsed = self.elapsed_hours
        return (elapsed * self.period_rate + RECENT_HOURS * recent) / (elapsed + RECENT_HOURS)

    def at_rate(self, rate: Decimal) -> Decimal:
        """Spend at period end if `rate` continues."""
        left = hours_between(max(self.now, self.start), self.end)
        return (self.spend + rate * left).quantize(PROJECTION_QUANTUM)

    @property
    def projected(self) -> Decimal:
        return self.at_rate(self.rate)

    @property
    def low(self) -> Decimal:
        return self.at_rate(min(self._rates()))

    @property
    def high(self) -> Decimal:
        return self.at_rate(max(self._rates()))

    def _rates(self) -> list[Decimal]:
        recent = self.recent_rate
        return [self.period_rate] if recent is None else [self.period_rate, recent]

    def reaches_at(self, limit: Decimal) -> datetime | None:
        """When spend reaches `limit` at the projected rate, if within the period (now if reached)."""
        if self.projected <= limit:
            return None
        if self.spend >= limit:
            return self.now
        hours = (limit - self.spend) / self.rate
        at = max(self.now, self.start) + timedelta(seconds=float(hours * HOUR_SECONDS))
        return min(at, self.end)


def calendar_period(time_zone: str, period: str, now: datetime) -> tuple[datetime, datetime]:
    """The calendar day, week (from Monday) or month containing `now` in `time_zone`, as UTC instants."""
    zone = ZoneInfo(time_zone)
    today = now.astimezone(zone).date()
    if period == "daily":
        first, following = today, today + timedelta(days=1)
    elif period == "weekly":
        first = today - timedelta(days=today.weekday())
        following = first + timedelta(days=7)
    elif period == "monthly":
        first = today.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"not a period: {period}")
    # Combining with the zone (not adding hours) keeps midnight right across DST changes.
    start = datetime.combine(first, time.min, tzinfo=zone).astimezone(UTC)
    end = datetime.combine(following, time.min, tzinfo=zone).astimezone(UTC)
    return start, end


def _figures(projection: SpendProjection) -> dict:
    return {"spend": projection.spend, "projected": projection.projected, "low": projection.low,
            "high": projection.high}  # fmt: skip


def month_forecasts(*, scope: AccessScope, team_alias: str | None = None, now: datetime | None = None) -> dict:
    """Each team's spend this calendar month (the organization's time zone) and its projected
    month-end spend with a range; the organization's total projected the same way from its totals.
    Two grouped reads (the month so far, the last 7 days), from rollups and the raw tail."""
    now = now or datetime.now(UTC)
    start, end = calendar_period(scope.organization.time_zone, "monthly", now)
    month = with_team(scope, EventFilter(start=start, end=now, team_alias=team_alias))
    recent = EventFilter(start=now - RECENT, end=now, team_alias=team_alias, team_id=month.team_id)
    spends = usage_by(scope=scope, filters=month, fields=("team",))
    recents = usage_by(scope=scope, filters=recent, fields=("team",))
    team_ids = {key[0] for key in spends} | {key[0] for key in recents}
    aliases = dict(scope.teams().filter(pk__in=team_ids).values_list("pk", "alias"))

    def projection(spend: Decimal, recent_spend: Decimal) -> SpendProjection:
        return SpendProjection(start=start, end=end, now=now, spend=spend, recent_spend=recent_spend)

    def cost(grouped: dict, team_id: int) -> Decimal:
        return grouped.get((team_id,), {}).get("cost", Decimal(0))

    teams = [
        {"team_alias": aliases[team_id], **_figures(projection(cost(spends, team_id), cost(recents, team_id)))}
        for team_id in team_ids
        if team_id in aliases
    ]
    teams.sort(key=lambda row: (-row["projected"], row["team_alias"]))
    total = projection(
        sum((values["cost"] for values in spends.values()), Decimal(0)),
        sum((values["cost"] for values in recents.values()), Decimal(0)),
    )
    return {"month_start": start, "month_end": end, "as_of": now, "teams": teams, "total": _figures(total)}
