"""Spend anomalies: each team's closed hours compared with that team's own baseline.

Method. For team T and a closed hour H, the baseline is T's spend in the same local hour of day (the
organization's time zone, so a DST change does not shift it) on each of the 7 previous days; an
hour without a rollup row spent 0. With m their median and MAD the median of |x - m| (a spread one
odd day cannot inflate, unlike a standard deviation), H is an anomaly when

    spend(H) > m + max(ANOMALY_FACTOR × MAD, ANOMALY_MIN_USD)

The minimum amount keeps a team whose spend is flat (MAD 0) or tiny from alerting on cents. A team
is judged only with 7 whole days of history (its first daily rollup row 8 days before H), so
nothing alerts on a team's first week.

Spend per hour is read from the hourly team-total rollup rows. A run looks at the last
ANOMALY_LOOKBACK_HOURS closed hours; an hour whose events are not rolled up yet (dirty) waits for a
later run. The unique (team, hour) row makes each anomaly recorded once however often runs repeat.
This module knows nothing of budgets: billing's alerting reads the rows it writes.
"""

from __future__ import annotations

import statistics
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db.models import Min

from llmcost_project.db import Sum
from teams.models import Organization

from .failures import JobRun
from .models import DailyTeamTotal, DirtyHour, HourlyTeamTotal, SpendAnomaly
from .rollups import HOUR, hour_of

BASELINE_DAYS = 7
SPEND_ANOMALY_JOB = "spend_anomalies_detect"


def baseline_hours(hour: datetime, zone: ZoneInfo) -> list[datetime]:
    """The same local hour of day on each of the BASELINE_DAYS previous days, as UTC hour starts."""
    local = hour.astimezone(zone)
    hours = []
    for days in range(1, BASELINE_DAYS + 1):
        earlier = datetime.combine(local.date() - timedelta(days=days), local.timetz().replace(tzinfo=None))
        hours.append(hour_of(earlier.replace(tzinfo=zone, fold=local.fold).astimezone(UTC)))
    return hours


def anomaly_threshold(history: list[Decimal]) -> tuple[Decimal, Decimal, Decimal]:
    """(median, MAD, threshold) of a baseline: spend above the threshold is an anomaly."""
    median = Decimal(statistics.median(history))
    mad = Decimal(statistics.median([abs(value - median) for value in history]))
    threshold = median + max(settings.ANOMALY_FACTOR * mad, settings.ANOMALY_MIN_USD)
    return median, mad, threshold


def organization_anomalies_detect(organization: Organization, now: datetime) -> int:
    """Record the anomalies among the organization's last closed hours; returns how many are new."""
    zone = ZoneInfo(organization.time_zone)
    last = hour_of(now) - HOUR  # the latest closed hour
    hours = [last - HOUR * back for back in range(settings.ANOMALY_LOOKBACK_HOURS)]
    dirty = set(
        DirtyHour.objects.filter(organization=organization, hour__gte=hours[-1], hour__lte=last).values_list(
            "hour", flat=True
        )
    )
    hours = [hour for hour in hours if hour not in dirty]
    if not hours:
        return 0
    earliest = min(baseline_hours(hours[-1], zone))
    totals = HourlyTeamTotal.objects.filter(organization=organization)
    spend: dict[tuple[int, datetime], Decimal] = {
        (row["team_id"], row["start"]): row["cost"] or Decimal(0)
        for row in totals.filter(start__gte=earliest, start__lte=last)
        .values("team_id", "start")
        .annotate(cost=Sum("cost"))
        .order_by()
    }
    judged = set(hours)
    # A team's first day, from daily rows (a 24th of the hourly ones): judged once that UTC day began
    # 8 days before the hour, so at least 7 whole days of history lie behind it.
    first_day = dict(
        DailyTeamTotal.objects.filter(organization=organization)
        .values("team_id")
        .annotate(first=Min("start"))
        .order_by()
        .values_list("team_id", "first")
    )
    created = 0
    for (team_id, hour), cost in spend.items():
        first = first_day.get(team_id)
        if hour not in judged or first is None or first > hour - timedelta(days=BASELINE_DAYS + 1):
            continue
        history = [spend.get((team_id, earlier), Decimal(0)) for earlier in baseline_hours(hour, zone)]
        median, mad, threshold = anomaly_threshold(history)
        if cost <= threshold:
            continue
        _, was_created = SpendAnomaly.objects.get_or_create(
            team_id=team_id,
            hour=hour,
            defaults={
                "organization": organization, "spend_usd": cost, "baseline_median_usd": median,
                "baseline_mad_usd": mad, "threshold_usd": threshold,
            },
        )  # fmt: skip
        created += was_created
    return created


def spend_anomalies_detect(*, now: datetime | None = None) -> int:
    """Every organization's new anomalies, each organization isolated (a failure is recorded and
    retried at a later run without holding up the others)."""
    now = now or datetime.now(UTC)
    run = JobRun(SPEND_ANOMALY_JOB, now=now)
    created = 0
    for organization in Organization.objects.order_by("id"):
        if not run.due(organization.pk):
            continue
        with run.unit(organization.pk):
            created += organization_anomalies_detect(organization, now)
    return created
