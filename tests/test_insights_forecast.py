"""GET /api/v1/insights/forecast: each team's month-end spend with a range, by the budgets' method.

Expected figures are computed here from the `UsageEvent` rows and the method's formula written out
(not through metrics.forecasts), at the `as_of` moment the answer reports.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from metrics.models import UsageEvent
from metrics.rollups import dirty_rollups_refresh
from tests.budget_support import costing, fast_passwords, ingest
from tests.conftest import api

URL = "/api/v1/insights/forecast"
Q = Decimal("0.000001")


@pytest.fixture(autouse=True)
def _fast(settings):
    fast_passwords(settings)


def month_of(moment: datetime, zone: str) -> tuple[datetime, datetime]:
    local = moment.astimezone(ZoneInfo(zone)).date().replace(day=1)
    following = (local + timedelta(days=32)).replace(day=1)
    return (datetime.combine(local, time.min, tzinfo=ZoneInfo(zone)).astimezone(UTC),
            datetime.combine(following, time.min, tzinfo=ZoneInfo(zone)).astimezone(UTC))  # fmt: skip


def expected(events, as_of: datetime, zone: str) -> dict:
    """spend, projected, low, high from the formula: the month's rate and the last week's, blended by
    the hours each was measured over, run to the month's end."""
    start, end = month_of(as_of, zone)
    spend = sum((e.cost for e in events if start <= e.timestamp <= as_of), Decimal(0))
    recent = sum((e.cost for e in events if as_of - timedelta(days=7) <= e.timestamp <= as_of), Decimal(0))
    hours = Decimal(str((as_of - start).total_seconds())) / 3600
    left = Decimal(str((end - as_of).total_seconds())) / 3600
    month_rate = spend / hours if hours else Decimal(0)
    week_rate = recent / 168
    blended = (hours * month_rate + 168 * week_rate) / (hours + 168)

    def at(rate):
        return (spend + rate * left).quantize(Q)

    return {"spend": spend, "projected": at(blended), "low": at(min(month_rate, week_rate)),
            "high": at(max(month_rate, week_rate))}  # fmt: skip


def figures(row: dict) -> dict:
    return {name: Decimal(str(row[name])) for name in ("spend", "projected", "low", "high")}


def close(a: dict, b: dict) -> bool:
    """Equal to the 6 places the projection keeps (JSON numbers carry the decimals as floats do)."""
    return all(abs(a[name] - b[name]) <= Q for name in a)


@pytest.mark.parametrize("zone", ["UTC", "Pacific/Auckland"])
@pytest.mark.parametrize("rolled_up", [False, True])
def test_each_team_is_projected_to_month_end_by_the_budgets_method(world, zone, rolled_up):
    world.acme.time_zone = zone
    world.acme.save()
    now = datetime.now(UTC)
    ingest(world.ingest,
           costing("0.40", now - timedelta(hours=1)), costing("0.20", now - timedelta(days=3)),
           costing("0.30", now - timedelta(days=10)), costing("0.10", now - timedelta(days=40)),
           costing("0.50", now - timedelta(hours=2), team_alias="search"))  # fmt: skip
    ingest(world.globex_token, costing("9.00", now - timedelta(hours=1)))
    if rolled_up:
        dirty_rollups_refresh()
    response = api(world.read).get(URL)
    assert response.status_code == 200, response.content
    body = response.json()
    as_of = datetime.fromisoformat(body["as_of"].replace("Z", "+00:00"))
    start, end = month_of(as_of, zone)
    assert (body["month_start"], body["month_end"]) == (start.isoformat().replace("+00:00", "Z"),
                                                       end.isoformat().replace("+00:00", "Z"))  # fmt: skip
    acme = list(UsageEvent.objects.filter(organization=world.acme))
    by_team = {row["team_alias"]: figures(row) for row in body["teams"]}
    assert set(by_team) <= {"chatbot", "search"}
    for alias in ("chatbot", "search"):
        want = expected([e for e in acme if e.team.alias == alias], as_of, zone)
        assert close(by_team.get(alias, dict.fromkeys(want, Decimal(0))), want), alias
    assert close(figures(body["total"]), expected(acme, as_of, zone))
    assert by_team["chatbot"]["low"] <= by_team["chatbot"]["projected"] <= by_team["chatbot"]["high"]


def test_a_pinned_token_sees_its_team_and_an_outsider_nothing_of_acme(world):
    now = datetime.now(UTC)
    ingest(world.ingest, costing("0.40", now - timedelta(hours=1)),
           costing("0.50", now - timedelta(hours=1), team_alias="search"))  # fmt: skip
    pinned = api(world.pinned).get(URL).json()
    assert [row["team_alias"] for row in pinned["teams"]] == ["chatbot"]
    assert Decimal(str(pinned["total"]["spend"])) == Decimal("0.40")
    assert api(world.pinned).get(URL, {"team_alias": "search"}).status_code == 404
    only = api(world.read).get(URL, {"team_alias": "search"}).json()
    assert [row["team_alias"] for row in only["teams"]] == ["search"]
    outsider = api(world.globex_token).get(URL).json()
    assert outsider["teams"] == [] and Decimal(str(outsider["total"]["spend"])) == 0


@pytest.mark.parametrize("params", [{"team_alias": ""}, {"team_alias": "x" * 101}])
def test_bad_parameters_are_named(world, params):
    response = api(world.read).get(URL, params)
    assert response.status_code == 400 and set(response.json()["errors"]) == {"team_alias"}


def test_it_needs_a_read_token(world):
    assert api(world.ingest).get(URL).status_code in (401, 403)
    assert api(None).get(URL).status_code in (401, 403)
