"""Spend anomalies on synthetic history: each team's closed hour against the same local hour of the
previous 7 days (median + factor × MAD, with a minimum amount), alerted once, marked on the dashboard."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.core import mail

from billing.models import NotificationDelivery, SpendAnomalyAlert
from billing.notifications import channel_create
from billing.services import alert_event, budgets_evaluate
from metrics.anomalies import anomaly_threshold, baseline_hours, spend_anomalies_detect
from metrics.models import SpendAnomaly
from metrics.rollups import dirty_rollups_refresh, hour_of
from tests.budget_support import costing, fast_passwords, ingest, private_cache
from tests.web_support import client_for, page_settings

ZONE = "America/New_York"


@pytest.fixture(autouse=True)
def _settings(settings):
    private_cache(settings)
    fast_passwords(settings)
    page_settings(settings)
    settings.ANOMALY_FACTOR = Decimal(5)
    settings.ANOMALY_MIN_USD = Decimal(1)
    settings.ANOMALY_LOOKBACK_HOURS = 24


def same_local_hour(hour: datetime, days_before: int) -> datetime:
    local = hour.astimezone(ZoneInfo(ZONE))
    return datetime.combine(local.date() - timedelta(days=days_before), local.time(), tzinfo=ZoneInfo(ZONE)).astimezone(
        UTC
    )


def history(world, hour: datetime, *, team: str, days: int, usd: list[str], token=None) -> None:
    """Spend `usd[i]` in the same local hour `i + 1` days before `hour`, for `days` days."""
    ingest(token or world.ingest, *[
        costing(usd[i % len(usd)], at=same_local_hour(hour, i + 1) + timedelta(minutes=10), team_alias=team,
                request_id=f"{team}-{hour:%H}-{i}")
        for i in range(days)
    ])  # fmt: skip


@pytest.fixture
def spike(world):
    """In acme (New York): chatbot's usual $1 to $1.5 at one hour, then $20 in that hour today."""
    world.acme.time_zone = ZONE
    world.acme.save()
    hour = hour_of(datetime.now(UTC)) - timedelta(hours=2)  # closed, within the lookback
    history(world, hour, team="chatbot", days=8, usd=["1", "1.5", "1", "0.5"])
    ingest(world.ingest, costing("20", at=hour + timedelta(minutes=5), team_alias="chatbot", request_id="spike"))
    # The hour before: steady, and today the same: no anomaly.
    history(world, hour - timedelta(hours=1), team="chatbot", days=8, usd=["2"])
    ingest(world.ingest, costing("2", at=hour - timedelta(minutes=50), team_alias="chatbot", request_id="steady"))
    dirty_rollups_refresh()
    return hour


def test_the_baseline_is_the_same_local_hour_across_a_dst_change():
    zone = ZoneInfo(ZONE)
    hour = datetime(2026, 3, 10, 13, tzinfo=UTC)  # 09:00 EDT, two days after the change to summer time
    hours = baseline_hours(hour, zone)
    assert [h.astimezone(zone).hour for h in hours] == [9] * 7
    assert hours[0] == datetime(2026, 3, 9, 13, tzinfo=UTC) and hours[-1] == datetime(2026, 3, 3, 14, tzinfo=UTC)


def test_the_threshold_is_median_plus_factor_times_mad_or_the_minimum_amount(settings):
    history = [Decimal(x) for x in ("1", "2", "3", "4", "5", "100", "2")]  # one odd day does not move it much
    assert anomaly_threshold(history) == (Decimal(3), Decimal(1), Decimal(8))
    assert anomaly_threshold([Decimal(1)] * 7) == (Decimal(1), Decimal(0), Decimal(2))  # flat: the minimum
    settings.ANOMALY_FACTOR = Decimal(10)
    assert anomaly_threshold(history)[2] == Decimal(13)


def test_an_hour_above_its_baseline_is_recorded_once_and_alerted_once(world, spike):
    assert spend_anomalies_detect() == 1
    assert spend_anomalies_detect() == 0  # every later run looks at the hour again and finds it recorded

    [anomaly] = SpendAnomaly.objects.all()
    assert (anomaly.team_id, anomaly.hour, anomaly.spend_usd) == (world.chatbot.pk, spike, Decimal(20))
    assert (anomaly.baseline_median_usd, anomaly.baseline_mad_usd) == (Decimal(1), Decimal("0"))
    assert anomaly.threshold_usd == Decimal(2)

    budgets_evaluate()
    budgets_evaluate()
    [alert] = SpendAnomalyAlert.objects.all()
    assert alert.sent_at is not None and alert.attempts == 1
    [message] = mail.outbox
    local = spike.astimezone(ZoneInfo(ZONE))
    assert message.subject == f"[llmcost] Acme / chatbot: unusual spend at {local:%Y-%m-%d %H:00} ({ZONE})"
    assert "$20.00" in message.body and "$1.00" in message.body
    assert "owner@acme.test" in message.to
    event = alert_event(alert)
    assert (event.event_type, event.payload["team"], event.payload["spend"]) == (
        "spend.anomaly",
        "chatbot",
        "20.000000",
    )


def test_nothing_alerts_in_a_teams_first_week(world, spike):
    # search has only 3 days of history before its own spike.
    history(world, spike, team="search", days=3, usd=["1"])
    ingest(world.ingest, costing("50", at=spike + timedelta(minutes=5), team_alias="search", request_id="s-spike"))
    dirty_rollups_refresh()

    spend_anomalies_detect()

    assert set(SpendAnomaly.objects.values_list("team__alias", flat=True)) == {"chatbot"}


def test_small_amounts_and_open_hours_are_not_anomalies(world, settings, spike):
    settings.ANOMALY_MIN_USD = Decimal(25)  # $20 over a $1 median is below the minimum amount
    assert spend_anomalies_detect() == 0
    settings.ANOMALY_MIN_USD = Decimal(1)
    # The open hour is never judged, however much it holds.
    ingest(world.ingest, costing("100", team_alias="chatbot", request_id="open-hour"))
    dirty_rollups_refresh()
    spend_anomalies_detect()
    assert list(SpendAnomaly.objects.values_list("hour", flat=True)) == [spike]


def test_each_organization_is_judged_on_its_own_history(world, spike):
    # globex: the same $20 in that hour is its usual spend.
    history(world, spike, team="chatbot", days=8, usd=["20"], token=world.globex_token)
    ingest(world.globex_token, costing("20", at=spike + timedelta(minutes=5), team_alias="chatbot", request_id="g"))
    dirty_rollups_refresh()
    spend_anomalies_detect()
    assert list(SpendAnomaly.objects.values_list("organization__slug", flat=True)) == ["acme"]


def test_the_dashboard_marks_the_anomalous_hour_on_the_cost_trend(world, spike):
    spend_anomalies_detect()
    body = json.loads(client_for(world.owner).get("/o/acme/dashboard.json", {"range": "24h"}).content)

    trend = body["charts"]["trend"]
    marked = [i for i, value in enumerate(trend["anomalies"]) if value is not None]
    assert len(marked) == 1
    assert trend["anomalies"][marked[0]] == pytest.approx(trend["cost"][marked[0]]) == 20.0
    assert "chatbot" in trend["anomaly_notes"][marked[0]]
    assert [row["team_alias"] for row in body["anomalies"]] == ["chatbot"]
    page = client_for(world.owner).get("/o/acme/").content.decode()
    assert "Unusual spend" in page

    # Every reader of the team sees the mark (the viewer is limited to chatbot); a view of another
    # team shows none; outsiders see nothing of acme.
    for user in (world.member, world.viewer):
        seen = json.loads(client_for(user).get("/o/acme/dashboard.json", {"range": "24h"}).content)
        assert [row["team_alias"] for row in seen["anomalies"]] == ["chatbot"]
    search_only = json.loads(
        client_for(world.owner).get("/o/acme/dashboard.json", {"range": "24h", "team": "search"}).content
    )
    assert not any(search_only["charts"]["trend"]["anomalies"]) and search_only["anomalies"] == []
    assert client_for(world.outsider).get("/o/acme/dashboard.json").status_code == 404


def test_an_anomaly_is_offered_once_to_channels_that_take_anomalies(world, spike):
    takes, ignores = (
        channel_create(organization=world.acme, kind="webhook", url="https://hooks.example.test/a",
                       event_types=types)[0]
        for types in (["spend.anomaly"], ["budget.threshold"])
    )  # fmt: skip
    spend_anomalies_detect()
    budgets_evaluate()
    budgets_evaluate()
    [delivery] = NotificationDelivery.objects.all()
    assert (delivery.channel_id, delivery.event_type) == (takes.pk, "spend.anomaly")
    assert delivery.payload["team"] == "chatbot" and delivery.payload["spend"] == "20.000000"
    assert not NotificationDelivery.objects.filter(channel=ignores).exists()
