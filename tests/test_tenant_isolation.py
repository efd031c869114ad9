"""One tenant's bad data never stops another's: sums that cannot overflow, and background jobs that
isolate each organization's failures (logged, recorded as JobFailure, retried later).

Acme is the hostile tenant here: its events add up to more than a 64-bit integer of money units
holds ($922 million), or its work is made to fail. Globex must be rolled up, alerted and shown
exactly and on time all the same.
"""

from __future__ import annotations

import ast
import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.core import mail

import billing.services
import metrics.rollups
import metrics.services
from billing.models import EPOCH, BudgetAlert, ModelPrice
from billing.pricing.services import reprice_after_change
from billing.services import budget_create, budgets_evaluate
from llmcost_project.db import INT64_MAX, Sum
from metrics.models import DailyTeamTotal, DirtyHour, HourlyTeamTotal, JobFailure, RepriceRequest, UsageEvent
from metrics.prometheus import business_snapshot
from metrics.repricing import reprice_requests_sweep
from metrics.rollups import dirty_rollups_refresh, mark_hours_dirty
from teams.models import Organization
from tests.budget_support import fast_passwords, private_cache
from tests.conftest import api, event
from tests.rollup_support import assert_rollups_equal_raw, no_dirty_marks
from tests.web_support import client_for, page_settings

ROOT = Path(__file__).resolve().parent.parent
HOSTILE_EVENTS = 1000
HOSTILE_COST = Decimal(1_000_000)  # per event: the old per-event bound, so such rows exist in databases
HOSTILE_TOTAL = HOSTILE_EVENTS * HOSTILE_COST  # 1e19 units of 1e-10 USD: past a 64-bit integer


@pytest.fixture(autouse=True)
def _isolated(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.BUDGET_SPEND_CACHE_SECONDS = 0
    settings.CELERY_TASK_ALWAYS_EAGER = True
    page_settings(settings)
    fast_passwords(settings)
    private_cache(settings)
    mail.outbox = []


def _hour(hours_ago: int) -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours_ago)


def _stored_events(organization, team, *, count: int, cost: Decimal, at: datetime, model: str = "test-model") -> None:
    """Events as a database holds them (written before today's per-event bound), hours marked dirty."""
    UsageEvent.objects.bulk_create(
        UsageEvent(
            organization=organization, team=team, request_id=f"stored-{uuid.uuid4()}",
            timestamp=at + timedelta(seconds=i), model=model, model_requested=model,
            prompt_tokens=10, output_tokens=5, total_tokens=15,
            cost=cost, is_priced=False, latency_ms=100 + i, user_id=f"user-{i % 3}",
        )
        for i in range(count)
    )  # fmt: skip
    mark_hours_dirty(organization_id=organization.pk, moments=[at])


def _ingest(token: str, **overrides) -> dict:
    response = api(token).post("/api/v1/metrics/track", event(**overrides), format="json")
    assert response.status_code == 200, response.content
    return _json(response)


def _json(response) -> dict:
    return json.loads(response.content, parse_float=Decimal)  # money exactly as sent


# --- sums ----------------------------------------------------------------------------------------------


def test_no_project_module_sums_with_djangos_own_sum():
    """Django's Sum overflows on SQLite past 64 bits; the project's `llmcost_project.db.Sum` does not."""
    offenders = []
    for path in ROOT.glob("*/**/*.py"):
        skipped = {".venv", "tests", "migrations"}
        if skipped & set(path.parts) or path == ROOT / "llmcost_project" / "db.py":  # db.py defines ours
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("django.db"):
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno}" for alias in node.names if alias.name == "Sum"]
            if isinstance(node, ast.Attribute) and node.attr == "Sum" and getattr(node.value, "id", "") == "models":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == [], f"use llmcost_project.db.Sum instead of Django's Sum at {offenders}"


def test_it_sums_money_past_64_bits_exactly(world):
    _stored_events(world.acme, world.chatbot, count=HOSTILE_EVENTS, cost=HOSTILE_COST, at=_hour(3))
    units = UsageEvent.objects.filter(organization=world.acme).aggregate(cost=Sum("cost"))["cost"]
    assert units == HOSTILE_TOTAL
    assert HOSTILE_TOTAL.scaleb(10) > INT64_MAX


def test_a_tenant_whose_spend_overflows_64_bits_is_rolled_up_shown_and_budgeted_exactly(world):
    hour = _hour(3)
    _stored_events(world.acme, world.chatbot, count=HOSTILE_EVENTS, cost=HOSTILE_COST, at=hour)
    budget_create(organization=world.acme, team=world.chatbot, amount_usd=Decimal(1000), period="monthly")

    result = dirty_rollups_refresh()

    assert result.failed == 0 and no_dirty_marks()
    assert_rollups_equal_raw()
    team_total = HourlyTeamTotal.objects.get(organization=world.acme, start=hour)
    assert team_total.cost == HOSTILE_TOTAL and team_total.requests == HOSTILE_EVENTS
    assert sum(row.cost for row in DailyTeamTotal.objects.filter(organization=world.acme)) == HOSTILE_TOTAL

    # Reads add the hostile total (rollups) and a fresh event (raw tail) exactly.
    fresh = _ingest(world.ingest, model="test-model", prompt_tokens=1000, output_tokens=500)
    assert fresh["status"] == "success"
    total = HOSTILE_TOTAL + fresh["cost"]
    dashboard = _json(api(world.read).get("/api/v1/dashboard/metrics", {"time_range_hours": 24}))
    assert dashboard["total_cost"] == total
    check = api(world.read).get("/api/v1/budget/check", {"team_alias": "chatbot"})
    assert check.status_code == 200, check.content
    assert check.json()["allowed"] is True  # a soft budget

    client = client_for(world.owner)
    for path in ("/o/acme/", "/o/acme/?range=7d", "/o/acme/requests/", "/o/acme/budgets/", "/o/acme/teams/chatbot/"):
        assert client.get(path).status_code == 200, path

    budgets_evaluate()
    assert BudgetAlert.objects.filter(budget__organization=world.acme).count() == 3  # 50, 80 and 100 %
    assert JobFailure.objects.count() == 0


def test_another_tenants_rollups_alerts_and_dashboard_are_on_time_and_exact_beside_a_hostile_one(world):
    # Acme: an overflowing hour and a backlog of 300 older hours. Globex: one ordinary hour.
    for hours_ago in range(4, 304):
        mark_hours_dirty(organization_id=world.acme.pk, moments=[_hour(hours_ago)])
    _stored_events(world.acme, world.chatbot, count=HOSTILE_EVENTS, cost=HOSTILE_COST, at=_hour(3))
    budget = budget_create(organization=world.globex, team=world.globex_chatbot, amount_usd=Decimal("0.01"),
                           period="monthly")  # fmt: skip
    globex_event = _ingest(world.globex_token, team_alias="chatbot", prompt_tokens=1500, output_tokens=0)
    assert globex_event["cost"] == Decimal("0.003")  # 30 % of the budget
    _ingest(world.globex_token, team_alias="chatbot", prompt_tokens=1500, output_tokens=0)  # 60 %
    order = []
    refresh = metrics.rollups.hours_rollup_refresh

    def recording(*, organization_id, hours):
        order.append(organization_id)
        return refresh(organization_id=organization_id, hours=hours)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(metrics.rollups, "hours_rollup_refresh", recording)
        dirty_rollups_refresh()

    assert order[:2] == [world.acme.pk, world.globex.pk]  # globex's hour comes in the first turn
    assert no_dirty_marks()
    assert_rollups_equal_raw([world.globex.pk])
    budgets_evaluate()
    [alert] = BudgetAlert.objects.filter(budget=budget)
    assert alert.threshold == 50 and alert.sent_at is not None
    assert any("boss@globex.test" in message.to for message in mail.outbox)
    dashboard = _json(api(world.globex_token).get("/api/v1/dashboard/metrics", {"time_range_hours": 24}))
    assert dashboard["total_cost"] == Decimal("0.006")


# --- background jobs isolate failures ----------------------------------------------------------------


@pytest.fixture
def acme_rollups_fail(monkeypatch, world):
    """Any error in acme's rollups (here injected; in life, data no one foresaw)."""
    recompute = metrics.rollups._recompute

    def failing(organization_id, starts, unit):
        if organization_id == world.acme.pk and unit == "hour" and _hour(5) in starts:
            raise RuntimeError("acme's hour cannot be rolled up")
        return recompute(organization_id, starts, unit)

    monkeypatch.setattr(metrics.rollups, "_recompute", failing)
    return monkeypatch


def test_one_organizations_failing_hour_is_recorded_and_the_rest_is_rolled_up(world, acme_rollups_fail):
    _stored_events(world.acme, world.chatbot, count=3, cost=Decimal("0.5"), at=_hour(5))  # fails
    _stored_events(world.acme, world.search, count=3, cost=Decimal("0.25"), at=_hour(6))  # its neighbour
    _stored_events(world.globex, world.globex_chatbot, count=3, cost=Decimal("0.1"), at=_hour(5))

    result = dirty_rollups_refresh()

    assert result.failed == 1
    assert list(DirtyHour.objects.values_list("organization_id", "hour")) == [(world.acme.pk, _hour(5))]
    assert HourlyTeamTotal.objects.get(organization=world.acme, start=_hour(6)).cost == Decimal("0.75")
    assert_rollups_equal_raw([world.globex.pk])
    [failure] = JobFailure.objects.all()
    assert (failure.job, failure.organization_id, failure.key) == ("rollups", world.acme.pk,
                                                                   f"hour {_hour(5).isoformat()}")  # fmt: skip
    assert failure.consecutive_failures == 1 and failure.resolved_at is None
    assert "acme's hour cannot be rolled up" in failure.last_error
    assert failure.retry_at > datetime.now(UTC)
    assert business_snapshot().job_failures == {"rollups": (1, 1)}

    # Until its retry is due the hour is left alone; the dashboard reads it from raw events meanwhile.
    assert dirty_rollups_refresh().failed == 0
    assert JobFailure.objects.get().total_failures == 1
    dashboard = _json(api(world.read).get("/api/v1/dashboard/metrics", {"time_range_hours": 24}))
    assert dashboard["total_cost"] == Decimal("2.25")

    # Retried when due: once it succeeds the failure is resolved (and still counted).
    acme_rollups_fail.undo()
    JobFailure.objects.update(retry_at=datetime.now(UTC) - timedelta(seconds=1))
    assert dirty_rollups_refresh().hours == 1
    assert no_dirty_marks()
    assert_rollups_equal_raw()
    failure.refresh_from_db()
    assert failure.resolved_at is not None and failure.total_failures == 1
    assert business_snapshot().job_failures == {"rollups": (1, 0)}


def test_a_failing_budget_does_not_stop_the_others_nor_the_alerts(world, monkeypatch):
    evaluate = billing.services._budget_evaluate
    hostile = budget_create(organization=world.acme, team=world.chatbot, amount_usd=Decimal(1), period="daily")
    budget = budget_create(organization=world.globex, team=world.globex_chatbot, amount_usd=Decimal("0.01"),
                           period="daily")  # fmt: skip
    _ingest(world.globex_token, team_alias="chatbot", prompt_tokens=2500, output_tokens=0)  # $0.005: 50 %

    def failing(candidate, now):
        if candidate.pk == hostile.pk:
            raise ArithmeticError("acme's budget cannot be evaluated")
        return evaluate(candidate, now)

    monkeypatch.setattr(billing.services, "_budget_evaluate", failing)
    budgets_evaluate()

    [alert] = BudgetAlert.objects.filter(budget=budget)
    assert alert.sent_at is not None and len(mail.outbox) == 1
    [failure] = JobFailure.objects.all()
    assert (failure.job, failure.organization_id, failure.key) == ("budget_evaluate", world.acme.pk,
                                                                   f"budget {hostile.pk}")  # fmt: skip


def test_an_alert_that_cannot_be_built_is_recorded_and_the_others_are_sent(world, monkeypatch):
    message = billing.services._alert_message
    hostile = budget_create(organization=world.acme, team=world.chatbot, amount_usd=Decimal("0.01"), period="daily")
    budget = budget_create(organization=world.globex, team=world.globex_chatbot, amount_usd=Decimal("0.01"),
                           period="daily")  # fmt: skip
    _ingest(world.ingest, team_alias="chatbot", prompt_tokens=2500, output_tokens=0)
    _ingest(world.globex_token, team_alias="chatbot", prompt_tokens=2500, output_tokens=0)

    def failing(alert, recipients, now):
        if alert.budget_id == hostile.pk:
            raise ValueError("acme's alert cannot be written")
        return message(alert, recipients, now)

    monkeypatch.setattr(billing.services, "_alert_message", failing)
    budgets_evaluate()

    assert BudgetAlert.objects.get(budget=budget).sent_at is not None
    unsent = BudgetAlert.objects.get(budget=hostile)
    assert unsent.sent_at is None and unsent.claimed_at is None
    assert "acme's alert cannot be written" in unsent.last_error
    assert JobFailure.objects.get().job == "budget_alert_send"


def test_repricing_goes_on_for_other_organizations_and_retries_the_failing_one(
    world, monkeypatch, django_capture_on_commit_callbacks
):
    for token in (world.ingest, world.globex_token):
        _ingest(token, team_alias="chatbot", prompt_tokens=1000, output_tokens=0)  # $0.002 each
    repriced = metrics.services._repriced

    def failing(stored, book):
        if stored.organization_id == world.acme.pk:
            raise RuntimeError("acme's events cannot be repriced")
        return repriced(stored, book)

    monkeypatch.setattr(metrics.services, "_repriced", failing)
    with django_capture_on_commit_callbacks(execute=True):
        ModelPrice.objects.filter(model="test-model").update(input_per_mtok=Decimal(4))
        reprice_after_change(provider="testprov", model="test-model", effective_from=EPOCH)

    assert UsageEvent.objects.get(organization=world.globex).cost == Decimal("0.004")
    assert UsageEvent.objects.get(organization=world.acme).cost == Decimal("0.002")
    [failure] = JobFailure.objects.all()
    assert (failure.job, failure.organization_id) == ("reprice", world.acme.pk)
    [request] = RepriceRequest.objects.all()  # what is left to do, for a later run
    assert request.organization_ids == [world.acme.pk] and request.attempts == 1
    assert request.not_before > datetime.now(UTC) and request.claimed_at is None
    assert reprice_requests_sweep() == 0  # not due yet

    monkeypatch.undo()
    RepriceRequest.objects.update(not_before=datetime.now(UTC) - timedelta(seconds=1))
    assert reprice_requests_sweep() == 1
    assert UsageEvent.objects.get(organization=world.acme).cost == Decimal("0.004")
    assert not RepriceRequest.objects.filter(finished_at__isnull=True).exists()  # kept as the run's record
    request.refresh_from_db()  # the record adds up both attempts: globex's event, then acme's
    assert (request.events_changed, request.cost_before, request.cost_after) == (
        2, Decimal("0.004"), Decimal("0.008"))
    failure.refresh_from_db()
    assert failure.resolved_at is not None


def test_an_organization_with_a_broken_setting_costs_only_its_own_budgets(world):
    # A time zone no longer known (written before validation, or removed from tzdata).
    Organization.objects.filter(pk=world.acme.pk).update(time_zone="Mars/Olympus_Mons")
    broken = budget_create(organization=world.acme, team=world.chatbot, amount_usd=Decimal(1), period="daily")
    world.acme.refresh_from_db()
    budget = budget_create(organization=world.globex, team=world.globex_chatbot, amount_usd=Decimal("0.01"),
                           period="daily")  # fmt: skip
    _ingest(world.globex_token, team_alias="chatbot", prompt_tokens=2500, output_tokens=0)  # 50 %

    budgets_evaluate()

    assert BudgetAlert.objects.get(budget=budget).sent_at is not None
    [failure] = JobFailure.objects.all()
    assert (failure.job, failure.key) == ("budget_evaluate", f"budget {broken.pk}")
    assert "Mars/Olympus_Mons" in failure.last_error
    snapshot = business_snapshot()  # /metrics still carries every other budget
    assert [labels[2] for labels in snapshot.sections["budgets"]] == [str(budget.pk)]
