"""History rows are pruned after their window, hourly, per organization and in chunks: finished
notification deliveries and sent forecast and anomaly alerts (NOTIFICATION_HISTORY_DAYS), finished
repricing records (REPRICE_HISTORY_DAYS). Nothing unfinished goes, however old: a pending delivery,
an unsent alert, a repricing still to run. An alert row that is still the lock on its event stays.
One organization's failure is recorded and leaves the others' pruning alone.
"""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.conf import settings as django_settings

import billing.history
import metrics.repricing
from billing.history import LONGEST_PERIOD, notification_history_prune
from billing.models import Budget, BudgetForecastAlert, NotificationDelivery, SpendAnomalyAlert
from billing.notifications import channel_create
from billing.selectors import budget_period
from billing.services import anomaly_alerts_record, budget_create
from llmcost_project.celery import app
from metrics.models import JobFailure, RepriceRequest, SpendAnomaly
from metrics.repricing import reprice_history_prune
from teams.models import Organization

NOW = datetime.now(UTC).replace(microsecond=0)
Status = NotificationDelivery.Status
_keys = itertools.count()


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def delivery(channel, status: str, *, finished: float | None, created: float = 100) -> NotificationDelivery:
    """A delivery created `created` days ago and finished `finished` days ago (None: not finished)."""
    return NotificationDelivery.objects.create(
        organization=channel.organization, channel=channel, event_type="budget.threshold",
        event_key=f"budget.threshold:test:{next(_keys)}", status=status, created_at=days_ago(created),
        next_attempt_at=days_ago(created), finished_at=None if finished is None else days_ago(finished),
    )  # fmt: skip


@pytest.fixture
def channels(world):
    acme, _ = channel_create(organization=world.acme, kind="webhook", url="https://hooks.acme.test/in")
    globex, _ = channel_create(organization=world.globex, kind="slack", url="https://hooks.slack.test/x")
    return acme, globex


def remaining(model) -> list:
    return sorted(model.objects.values_list("pk", flat=True))


# --- notification deliveries -------------------------------------------------------------------------


def test_it_prunes_finished_deliveries_past_the_window_in_chunks_and_keeps_everything_else(world, channels):
    acme, globex = channels
    old_finished = [delivery(acme, Status.DELIVERED, finished=91) for _ in range(5)]
    old_finished += [delivery(acme, Status.FAILED, finished=200, created=201) for _ in range(2)]
    old_finished += [delivery(globex, Status.DELIVERED, finished=95) for _ in range(3)]
    kept = [
        delivery(acme, Status.DELIVERED, finished=89),  # finished inside the window
        delivery(acme, Status.FAILED, finished=1, created=150),  # created long ago, finished lately
        delivery(acme, Status.PENDING, finished=None, created=300),  # still being retried: never pruned
        delivery(globex, Status.PENDING, finished=None, created=120),
    ]

    assert notification_history_prune(now=NOW, chunk_size=2) == len(old_finished)

    assert remaining(NotificationDelivery) == sorted(d.pk for d in kept)
    assert notification_history_prune(now=NOW, chunk_size=2) == 0


def test_the_window_follows_the_setting(world, channels, settings):
    acme, _ = channels
    settings.NOTIFICATION_HISTORY_DAYS = 10
    delivery(acme, Status.DELIVERED, finished=11)
    recent = delivery(acme, Status.DELIVERED, finished=9)
    assert notification_history_prune(now=NOW) == 1
    assert remaining(NotificationDelivery) == [recent.pk]


def test_it_stops_at_its_time_budget_and_goes_on_at_the_next_run(world, channels):
    acme, _ = channels
    for _ in range(3):
        delivery(acme, Status.DELIVERED, finished=100)
    assert notification_history_prune(now=NOW, time_budget_seconds=0) == 0
    assert notification_history_prune(now=NOW) == 3


def test_one_organizations_failure_is_recorded_and_the_others_are_pruned(world, channels, monkeypatch):
    acme, globex = channels
    acme_rows = [delivery(acme, Status.DELIVERED, finished=100) for _ in range(2)]
    delivery(globex, Status.DELIVERED, finished=100)
    chunk_delete = billing.history._chunk_delete

    def failing(rows, chunk_size):  # injected; in life, a lock timeout or data no one foresaw
        if rows.model is NotificationDelivery and rows.filter(organization=world.acme).exists():
            raise RuntimeError("acme's history cannot be deleted")
        return chunk_delete(rows, chunk_size)

    monkeypatch.setattr(billing.history, "_chunk_delete", failing)
    assert notification_history_prune(now=NOW) == 1

    assert remaining(NotificationDelivery) == sorted(d.pk for d in acme_rows)
    [failure] = JobFailure.objects.all()
    assert (failure.job, failure.organization_id) == ("notification_history_prune", world.acme.pk)
    assert "acme's history cannot be deleted" in failure.last_error and failure.resolved_at is None

    monkeypatch.setattr(billing.history, "_chunk_delete", chunk_delete)
    assert notification_history_prune(now=failure.retry_at) == 2  # retried after its pause, then resolved
    failure.refresh_from_db()
    assert failure.resolved_at is not None and not NotificationDelivery.objects.exists()


# --- forecast and anomaly alerts ---------------------------------------------------------------------


def forecast(budget: Budget, *, period_start: datetime, sent: float | None) -> BudgetForecastAlert:
    return BudgetForecastAlert.objects.create(
        budget=budget, period_start=period_start, spend_usd=Decimal(5), projected_spend_usd=Decimal(12),
        limit_usd=Decimal(10), runs_out_on=period_start.date(), created_at=period_start,
        sent_at=None if sent is None else days_ago(sent),
    )  # fmt: skip


def test_it_prunes_sent_forecast_alerts_of_periods_that_are_over_and_keeps_unsent_ones(world, settings):
    budget = budget_create(organization=world.acme, team=world.chatbot, amount_usd=Decimal(10), period="monthly")
    forecast(budget, period_start=days_ago(150), sent=149)  # pruned
    unsent = forecast(budget, period_start=days_ago(120), sent=None)  # still to send: never pruned
    forecast(budget, period_start=days_ago(60), sent=59)  # pruned once the window is a day
    settings.NOTIFICATION_HISTORY_DAYS = 1
    # Sent two days ago, but its period (a month from 20 days ago) is not over: the row is what stops
    # evaluation from recording (and sending) this period's forecast again.
    current = forecast(budget, period_start=days_ago(20), sent=2)

    assert notification_history_prune(now=NOW) == 2

    assert remaining(BudgetForecastAlert) == sorted([unsent.pk, current.pk])


@pytest.mark.parametrize("period", Budget.Period.values)
def test_no_budget_period_lasts_as_long_as_the_forecast_alert_lock_is_kept(period):
    # billing.history prunes a forecast alert only once its period started LONGEST_PERIOD ago.
    budget = Budget(period=period)
    for zone in ("Pacific/Kiritimati", "Pacific/Pago_Pago", "America/New_York", "Europe/London", "UTC"):
        budget.organization = Organization(time_zone=zone)
        for day in range(0, 366, 3):
            moment = datetime.combine(date(2026, 1, 1) + timedelta(days=day), datetime.min.time(), ZoneInfo(zone))
            start, end = budget_period(budget, moment.astimezone(UTC) + timedelta(hours=12))
            assert end - start < LONGEST_PERIOD, (period, zone, start, end)


def anomaly_alert(team, *, hours_ago: float, sent: float | None) -> SpendAnomalyAlert:
    hour = (NOW - timedelta(hours=hours_ago)).replace(minute=0, second=0)
    anomaly = SpendAnomaly.objects.create(
        organization=team.organization, team=team, hour=hour, spend_usd=Decimal(9),
        baseline_median_usd=Decimal(1), baseline_mad_usd=Decimal("0.1"), threshold_usd=Decimal(2),
    )  # fmt: skip
    return SpendAnomalyAlert.objects.create(anomaly=anomaly, created_at=hour,
                                            sent_at=None if sent is None else days_ago(sent))  # fmt: skip


def test_it_prunes_sent_anomaly_alerts_and_never_alerts_on_their_anomalies_again(world, settings):
    gone = anomaly_alert(world.chatbot, hours_ago=24 * 100, sent=100)
    gone_globex = anomaly_alert(world.globex_chatbot, hours_ago=24 * 95, sent=95)
    unsent = anomaly_alert(world.search, hours_ago=24 * 100, sent=None)
    recent = anomaly_alert(world.chatbot, hours_ago=24 * 10, sent=10)

    assert notification_history_prune(now=NOW) == 2

    assert remaining(SpendAnomalyAlert) == sorted([unsent.pk, recent.pk])
    assert SpendAnomaly.objects.filter(pk__in=[gone.anomaly_id, gone_globex.anomaly_id]).count() == 2
    # The anomalies stay (metrics' record); alerting does not take them for new ones.
    assert anomaly_alerts_record(now=NOW) == 0
    assert SpendAnomalyAlert.objects.count() == 2


def test_an_anomaly_alert_younger_than_alerting_looks_back_is_kept(world, settings):
    settings.NOTIFICATION_HISTORY_DAYS = 1
    young = anomaly_alert(world.chatbot, hours_ago=20, sent=1.5)  # sent before the window; anomaly 20 h old
    assert notification_history_prune(now=NOW) == 0
    assert remaining(SpendAnomalyAlert) == [young.pk]


# --- repricing records -------------------------------------------------------------------------------


def reprice(organization, *, finished: float | None, created: float = 100) -> RepriceRequest:
    return RepriceRequest.objects.create(
        organization=organization, organization_ids=None if organization is None else [organization.pk],
        start=days_ago(created + 30), created_at=days_ago(created),
        finished_at=None if finished is None else days_ago(finished),
    )  # fmt: skip


def test_it_prunes_finished_repricing_records_past_the_window_and_never_an_unfinished_one(world):
    old = [reprice(world.acme, finished=91) for _ in range(3)]
    old += [reprice(world.globex, finished=120, created=121), reprice(None, finished=100), reprice(None, finished=99)]
    kept = [
        reprice(world.acme, finished=89),
        reprice(world.acme, finished=None, created=400),  # still retrying an organization: never pruned
        reprice(None, finished=None, created=400),
        reprice(None, finished=5),
    ]

    assert reprice_history_prune(now=NOW, chunk_size=2) == len(old)

    assert remaining(RepriceRequest) == sorted(r.pk for r in kept)
    assert reprice_history_prune(now=NOW, chunk_size=2) == 0


def test_the_repricing_window_follows_its_setting(world, settings):
    settings.REPRICE_HISTORY_DAYS = 7
    reprice(world.acme, finished=8)
    recent = reprice(world.acme, finished=6)
    assert reprice_history_prune(now=NOW) == 1
    assert remaining(RepriceRequest) == [recent.pk]


def test_one_organizations_repricing_records_failing_leaves_the_others_pruned(world, monkeypatch):
    acme = reprice(world.acme, finished=100)
    reprice(world.globex, finished=100)
    reprice(None, finished=100)
    chunk_delete = metrics.repricing._chunk_delete

    def failing(rows, chunk_size):
        if rows.filter(organization=world.acme).exists():
            raise RuntimeError("acme's records cannot be deleted")
        return chunk_delete(rows, chunk_size)

    monkeypatch.setattr(metrics.repricing, "_chunk_delete", failing)
    assert reprice_history_prune(now=NOW) == 2

    assert remaining(RepriceRequest) == [acme.pk]
    [failure] = JobFailure.objects.all()
    assert (failure.job, failure.organization_id) == ("reprice_history_prune", world.acme.pk)


# --- scheduled -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["billing.tasks.notification_history_prune", "metrics.tasks.reprice_history_prune"])
def test_the_pruning_runs_hourly_on_the_beat(task):
    app.loader.import_default_modules()
    [entry] = [entry for entry in django_settings.CELERY_BEAT_SCHEDULE.values() if entry["task"] == task]
    assert entry["schedule"] == 3600.0 and task in app.tasks
