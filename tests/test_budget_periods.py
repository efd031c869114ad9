"""Budget periods: calendar days, weeks (from Monday) and months in the organization's time zone.

Spend is summed over the current local period only, straight from the events (and rollups), so an
event a minute before local midnight belongs to the old period, one a minute after to the new one,
and a new period starts from zero without any reset job.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from billing.models import Budget
from billing.selectors import budget_period, budget_spend, budget_status
from billing.services import budget_create
from metrics.models import DailyRollup, DirtyDay, DirtyHour, HourlyRollup
from metrics.rollups import dirty_rollups_refresh
from tests.budget_support import costing, fast_passwords, ingest, private_cache
from tests.conftest import utc

MINUTE = timedelta(minutes=1)


@pytest.fixture(autouse=True)
def _fresh_spend(settings):
    fast_passwords(settings)
    private_cache(settings)
    settings.BUDGET_SPEND_CACHE_SECONDS = 0


# --- helpers -----------------------------------------------------------------------------------------


def in_zone(world, zone: str):
    world.acme.time_zone = zone
    world.acme.save(update_fields=["time_zone"])
    return world.acme


def new_budget(world, period: str, *, zone: str = "UTC", team=None, user_id: str = "", amount="100") -> Budget:
    organization = in_zone(world, zone)
    return budget_create(
        organization=organization, team=team, user_id=user_id, amount_usd=Decimal(amount), period=period
    )


def local_midnight(zone: str, day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=ZoneInfo(zone)).astimezone(UTC)


def local_today(zone: str) -> date:
    return datetime.now(UTC).astimezone(ZoneInfo(zone)).date()


def spend_at(budget: Budget, now: datetime) -> Decimal:
    return budget_status(budget, now, fresh=True).spend


def periods_rolled_up() -> None:
    dirty_rollups_refresh()
    assert not DirtyHour.objects.exists()
    assert not DirtyDay.objects.exists()


# --- budget_period: pure calendar arithmetic ------------------------------------------------------------


def period_of(world, period: str, zone: str, now: datetime) -> tuple[datetime, datetime]:
    return budget_period(new_budget(world, period, zone=zone), now)


def test_it_makes_a_utc_day_from_midnight_to_midnight(world):
    assert period_of(world, "daily", "UTC", utc(2026, 3, 15, 13, 45)) == (utc(2026, 3, 15), utc(2026, 3, 16))
    assert period_of(world, "daily", "UTC", utc(2026, 3, 15)) == (utc(2026, 3, 15), utc(2026, 3, 16))
    assert period_of(world, "daily", "UTC", utc(2026, 3, 15, 23, 59, 59, 999999)) == (
        utc(2026, 3, 15),
        utc(2026, 3, 16),
    )


def test_it_starts_a_utc_week_on_monday(world):
    monday, next_monday = utc(2026, 3, 9), utc(2026, 3, 16)
    assert monday.weekday() == 0
    for now in (monday, utc(2026, 3, 11, 12), utc(2026, 3, 15, 23, 59, 59)):  # Monday, Wednesday, Sunday
        assert period_of(world, "weekly", "UTC", now) == (monday, next_monday)
    assert period_of(world, "weekly", "UTC", next_monday) == (next_monday, utc(2026, 3, 23))


def test_it_makes_utc_calendar_months_of_any_length(world):
    assert period_of(world, "monthly", "UTC", utc(2028, 2, 29, 12)) == (utc(2028, 2, 1), utc(2028, 3, 1))
    assert period_of(world, "monthly", "UTC", utc(2027, 2, 28, 23, 59)) == (utc(2027, 2, 1), utc(2027, 3, 1))
    assert period_of(world, "monthly", "UTC", utc(2026, 12, 31, 23, 59)) == (utc(2026, 12, 1), utc(2027, 1, 1))
    assert period_of(world, "monthly", "UTC", utc(2026, 1, 31)) == (utc(2026, 1, 1), utc(2026, 2, 1))


def test_it_keeps_new_york_days_on_local_midnight_across_daylight_saving_changes(world):
    zone = "America/New_York"
    # 2026-03-08: clocks spring forward, the local day has 23 hours.
    start, end = period_of(world, "daily", zone, utc(2026, 3, 8, 12))
    assert (start, end) == (utc(2026, 3, 8, 5), utc(2026, 3, 9, 4))
    assert end - start == timedelta(hours=23)
    # 2026-11-01: clocks fall back, the local day has 25 hours.
    start, end = period_of(world, "daily", zone, utc(2026, 11, 1, 12))
    assert (start, end) == (utc(2026, 11, 1, 4), utc(2026, 11, 2, 5))
    assert end - start == timedelta(hours=25)
    # 23:59 local on Oct 31 (EDT) is 03:59 UTC on Nov 1: still October 31.
    assert period_of(world, "daily", zone, utc(2026, 11, 1, 3, 59)) == (utc(2026, 10, 31, 4), utc(2026, 11, 1, 4))


def test_it_keeps_new_york_weeks_and_months_on_local_midnight_across_daylight_saving_changes(world):
    zone = "America/New_York"
    # Week of Monday 2026-03-02 (EST) to Monday 2026-03-09 (EDT).
    assert period_of(world, "weekly", zone, utc(2026, 3, 8, 12)) == (utc(2026, 3, 2, 5), utc(2026, 3, 9, 4))
    # Sunday 23:30 local on 2026-03-08 is Monday 03:30 UTC: still the old week.
    assert period_of(world, "weekly", zone, utc(2026, 3, 9, 3, 30)) == (utc(2026, 3, 2, 5), utc(2026, 3, 9, 4))
    assert period_of(world, "weekly", zone, utc(2026, 3, 9, 4)) == (utc(2026, 3, 9, 4), utc(2026, 3, 16, 4))
    # March 2026 starts in EST and ends in EDT; November the other way round.
    assert period_of(world, "monthly", zone, utc(2026, 3, 20)) == (utc(2026, 3, 1, 5), utc(2026, 4, 1, 4))
    assert period_of(world, "monthly", zone, utc(2026, 11, 20)) == (utc(2026, 11, 1, 4), utc(2026, 12, 1, 5))
    # 22:00 local on Nov 30 is 03:00 UTC on Dec 1: still November.
    assert period_of(world, "monthly", zone, utc(2026, 12, 1, 3)) == (utc(2026, 11, 1, 4), utc(2026, 12, 1, 5))


def test_it_starts_a_kolkata_day_at_18_30_utc(world):
    zone = "Asia/Kolkata"  # +05:30, no daylight saving
    assert period_of(world, "daily", zone, utc(2026, 6, 10, 18, 29)) == (
        utc(2026, 6, 9, 18, 30),
        utc(2026, 6, 10, 18, 30),
    )
    assert period_of(world, "daily", zone, utc(2026, 6, 10, 18, 30)) == (
        utc(2026, 6, 10, 18, 30),
        utc(2026, 6, 11, 18, 30),
    )
    # Monday 2026-06-08 00:00 local is Sunday 2026-06-07 18:30 UTC.
    assert period_of(world, "weekly", zone, utc(2026, 6, 7, 18, 30)) == (
        utc(2026, 6, 7, 18, 30),
        utc(2026, 6, 14, 18, 30),
    )
    assert period_of(world, "weekly", zone, utc(2026, 6, 7, 18, 29)) == (
        utc(2026, 5, 31, 18, 30),
        utc(2026, 6, 7, 18, 30),
    )
    # June 1 local starts on May 31 at 18:30 UTC.
    assert period_of(world, "monthly", zone, utc(2026, 5, 31, 19)) == (
        utc(2026, 5, 31, 18, 30),
        utc(2026, 6, 30, 18, 30),
    )


def test_it_follows_auckland_time_across_the_date_line_and_daylight_saving(world):
    zone = "Pacific/Auckland"  # +13 in the southern summer, +12 in winter
    # Jan 15 local (NZDT) runs from Jan 14 11:00 UTC.
    assert period_of(world, "daily", zone, utc(2026, 1, 14, 11)) == (utc(2026, 1, 14, 11), utc(2026, 1, 15, 11))
    assert period_of(world, "daily", zone, utc(2026, 1, 14, 10, 59)) == (utc(2026, 1, 13, 11), utc(2026, 1, 14, 11))
    # Monday 2026-01-19 local starts on Sunday 2026-01-18 at 11:00 UTC.
    assert period_of(world, "weekly", zone, utc(2026, 1, 18, 11)) == (utc(2026, 1, 18, 11), utc(2026, 1, 25, 11))
    # April 2026: starts in NZDT (+13), daylight saving ends on April 5, May 1 starts in NZST (+12).
    assert period_of(world, "monthly", zone, utc(2026, 4, 15)) == (utc(2026, 3, 31, 11), utc(2026, 4, 30, 12))
    # 2026-04-05 local has 25 hours.
    start, end = period_of(world, "daily", zone, utc(2026, 4, 5, 6))
    assert end - start == timedelta(hours=25)


def test_it_gives_the_same_period_whatever_zone_now_is_expressed_in(world):
    moment = utc(2026, 6, 10, 18, 45)
    budget = new_budget(world, "daily", zone="Asia/Kolkata")
    assert budget_period(budget, moment.astimezone(ZoneInfo("America/New_York"))) == budget_period(budget, moment)
    assert budget_period(budget, moment)[0].utcoffset() == timedelta(0)


# --- spend follows the local period ------------------------------------------------------------------


def test_it_counts_a_kolkata_day_from_18_30_utc_before_and_after_rollups(world):
    zone = "Asia/Kolkata"
    boundary = local_midnight(zone, local_today(zone) - timedelta(days=3))  # xx:30 UTC
    assert boundary.minute == 30
    ingest(
        world.ingest,
        costing("1", boundary - MINUTE),  # 23:59 local, the day before
        costing("2", boundary),  # 00:00 local exactly
        costing("4", boundary + MINUTE),  # 00:01 local
        costing("8", boundary + timedelta(hours=5)),
        costing("16", boundary + timedelta(days=1) - MINUTE),  # 23:59 local, the last minute of the day
        costing("32", boundary + timedelta(days=1) + MINUTE),  # 00:01 local, the next day
    )
    day = new_budget(world, "daily", zone=zone)
    team_day = budget_create(organization=world.acme, team=world.chatbot, amount_usd=Decimal(100), period="daily")

    def figures():
        return {
            "before the boundary": spend_at(day, boundary - timedelta(seconds=30)),
            "30 minutes into the day": spend_at(team_day, boundary + timedelta(minutes=30)),
            "6 hours into the day": spend_at(day, boundary + timedelta(hours=6)),
            "whole day": budget_spend(
                day, boundary, boundary + timedelta(days=1), boundary + timedelta(days=1, hours=2)
            ),
            "next day": spend_at(day, boundary + timedelta(days=1, minutes=2)),
        }

    expected = {
        "before the boundary": Decimal(1),
        "30 minutes into the day": Decimal(6),
        "6 hours into the day": Decimal(14),
        "whole day": Decimal(30),
        "next day": Decimal(32),
    }
    assert figures() == expected

    periods_rolled_up()
    # The boundary hour's rollup holds events from both days; the budget must not use it.
    boundary_hour = boundary.replace(minute=0)
    assert HourlyRollup.objects.get(start=boundary_hour, is_team_total=True).requests == 3
    assert figures() == expected


def test_it_counts_a_kolkata_week_from_monday_through_rollups_of_whole_days(world):
    zone = "Asia/Kolkata"
    reference = local_today(zone) - timedelta(days=4)
    monday = local_midnight(zone, reference - timedelta(days=reference.weekday()))  # Sunday 18:30 UTC
    now = monday + timedelta(days=3, hours=12)
    assert now < datetime.now(UTC)
    ingest(
        world.ingest,
        costing("1", monday - MINUTE),  # Sunday 23:59 local: last week
        costing("2", monday + MINUTE),  # Monday 00:01 local
        costing("4", monday + timedelta(hours=2)),  # a whole hour inside the week
        costing("8", monday + timedelta(days=1, hours=3)),  # a whole UTC day inside the week
        costing("16", monday + timedelta(days=2), user_id="bob@acme.test"),  # Wednesday 00:00 local
        costing("64", now + MINUTE),  # after "now"
    )
    week = new_budget(world, "weekly", zone=zone)
    alice_week = budget_create(
        organization=world.acme, team=world.chatbot, user_id="alice@acme.test", amount_usd=Decimal(100), period="weekly"
    )
    before = (spend_at(week, now), spend_at(alice_week, now), spend_at(week, monday - timedelta(seconds=1)))
    assert before == (Decimal(30), Decimal(14), Decimal(1))

    periods_rolled_up()
    whole_day = (monday + timedelta(days=1, hours=3)).replace(hour=0, minute=0)
    assert DailyRollup.objects.filter(start=whole_day, is_team_total=True).exists()
    assert HourlyRollup.objects.filter(start=monday.replace(minute=0), is_team_total=True).get().requests == 2
    assert (spend_at(week, now), spend_at(alice_week, now), spend_at(week, monday - timedelta(seconds=1))) == before


def test_it_counts_an_auckland_month_from_local_midnight_on_the_first(world):
    zone = "Pacific/Auckland"
    reference = local_today(zone) - timedelta(days=6)
    first = local_midnight(zone, reference.replace(day=1))  # 11:00 or 12:00 UTC on the last day of a month
    assert first.minute == 0 and first.hour in (11, 12)
    now = first + timedelta(days=5)
    ingest(
        world.ingest,
        costing("1", first - MINUTE),
        costing("2", first + MINUTE),
        costing("4", first + timedelta(days=2)),
    )
    month = new_budget(world, "monthly", zone=zone)
    assert spend_at(month, now) == Decimal(6)
    assert spend_at(month, first - timedelta(seconds=1)) == Decimal(1)
    periods_rolled_up()
    assert spend_at(month, now) == Decimal(6)
    assert spend_at(month, first - timedelta(seconds=1)) == Decimal(1)


def _recent_dst_change(zones, *, within_days: int = 80):
    """(zone, local date) of the most recent daylight-saving change in one of the zones."""
    today = datetime.now(UTC).date()
    for back in range(2, within_days):
        day = today - timedelta(days=back)
        for zone in zones:
            start, end = local_midnight(zone, day), local_midnight(zone, day + timedelta(days=1))
            if end - start != timedelta(days=1):
                return zone, day, end - start
    return None


def test_it_counts_the_local_day_of_a_daylight_saving_change(world):
    found = _recent_dst_change(["America/New_York", "Europe/London", "Pacific/Auckland", "America/Santiago"])
    if found is None:
        pytest.skip("no daylight-saving change in the last 80 days in the zones tried")
    zone, day, length = found
    start, end = local_midnight(zone, day), local_midnight(zone, day + timedelta(days=1))
    ingest(
        world.ingest,
        costing("1", start - MINUTE),
        costing("2", start + MINUTE),
        costing("4", end - MINUTE),
        costing("8", end + MINUTE),
    )
    budget = new_budget(world, "daily", zone=zone)
    status = budget_status(budget, end - timedelta(seconds=30), fresh=True)
    assert (status.period_start, status.period_end) == (start, end)
    assert status.period_end - status.period_start == length
    assert status.spend == Decimal(6)
    periods_rolled_up()
    assert spend_at(budget, end - timedelta(seconds=30)) == Decimal(6)
    assert spend_at(budget, end + timedelta(minutes=2)) == Decimal(8)


def test_it_starts_a_new_period_from_zero_without_a_reset_job(world):
    zone = "Asia/Kolkata"
    boundary = local_midnight(zone, local_today(zone) - timedelta(days=2))
    ingest(world.ingest, costing("20", boundary - timedelta(hours=3)), costing("3", boundary + timedelta(hours=1)))
    budget = new_budget(world, "daily", zone=zone, amount="10")
    budget.is_hard = True
    budget.save()

    yesterday = budget_status(budget, boundary - timedelta(seconds=1), fresh=True)
    assert yesterday.spend == Decimal(20) and not yesterday.allowed

    fresh_period = budget_status(budget, boundary + timedelta(seconds=1), fresh=True)
    assert fresh_period.spend == Decimal(0)
    assert fresh_period.remaining == Decimal(10)
    assert fresh_period.allowed

    periods_rolled_up()
    assert spend_at(budget, boundary + timedelta(seconds=1)) == Decimal(0)
    assert spend_at(budget, boundary + timedelta(hours=2)) == Decimal(3)


def test_it_does_not_carry_a_cached_figure_into_the_next_period(world, settings):
    settings.BUDGET_SPEND_CACHE_SECONDS = 300
    zone = "UTC"
    boundary = local_midnight(zone, local_today(zone) - timedelta(days=2))
    ingest(world.ingest, costing("20", boundary - timedelta(hours=3)))
    budget = new_budget(world, "daily", zone=zone, amount="10")
    assert budget_status(budget, boundary - timedelta(seconds=1)).spend == Decimal(20)  # cached now
    assert budget_status(budget, boundary + timedelta(seconds=1)).spend == Decimal(0)
