"""One budget-spend selector read by every page, API, email and gauge; the forecast and its alert.

The spend oracle sums raw events itself, so every reader is compared with something none of them
computed. Forecasts run on synthetic history in a non-UTC organization.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.core import mail

from billing.models import Budget, BudgetAlert, BudgetForecastAlert, NotificationDelivery
from billing.notifications import channel_create
from billing.pricing.formatting import usd
from billing.selectors import budget_period, budget_spend, budget_spends, budget_status
from billing.services import _alert_message, budget_create, budgets_evaluate
from llmcost_project.db import Sum
from metrics.models import UsageEvent
from metrics.rollups import dirty_rollups_refresh
from tests.budget_support import costing, fast_passwords, ingest, private_cache
from tests.conftest import api
from tests.test_prometheus import SCRAPE_TOKEN, labels, samples, scrape, series
from tests.web_support import client_for, page_settings


@pytest.fixture(autouse=True)
def _settings(settings):
    private_cache(settings)
    fast_passwords(settings)
    page_settings(settings)
    settings.PROMETHEUS_SCRAPE_TOKEN = SCRAPE_TOKEN
    settings.PROMETHEUS_ALLOWED_NETWORKS = []
    settings.PROMETHEUS_CACHE_SECONDS = 0
    settings.PROMETHEUS_MULTIPROC_DIR = ""


def raw_spend(budget: Budget, now: datetime) -> Decimal:
    """The oracle: the budget's period so far, summed from raw events alone."""
    start, end = budget_period(budget, now)
    events = UsageEvent.objects.filter(
        organization=budget.organization, timestamp__gte=start, timestamp__lt=min(end, now)
    )
    if budget.team_id is not None:
        events = events.filter(team_id=budget.team_id)
    if budget.user_id:
        events = events.filter(user_id=budget.user_id)
    return events.aggregate(cost=Sum("cost"))["cost"] or Decimal(0)


# --- every reader agrees --------------------------------------------------------------------------


def test_every_reader_of_budget_spend_agrees_with_the_sum_of_raw_events(world, client, settings):
    settings.BUDGET_SPEND_CACHE_SECONDS = 0  # the ingest above the budgets cached "no budgets here"
    world.acme.time_zone = "America/New_York"  # periods start at local midnight, on a whole UTC hour
    world.acme.save()
    now = datetime.now(UTC)
    # Spread over the last ten days, so each period kind holds some and misses some.
    ages = [timedelta(minutes=m) for m in (30, 95, 300, 1500, 4000, 8000, 14000)]
    events = []
    for i, age in enumerate(ages):
        events += [
            costing(f"{i + 1}", at=now - age, team_alias="chatbot", user_id="alice"),
            costing("0.5", at=now - age, team_alias="chatbot", user_id="bob"),
            costing("2", at=now - age, team_alias="search", user_id="alice"),
        ]
    ingest(world.ingest, *events)
    ingest(world.globex_token, costing("3", at=now - timedelta(hours=2), team_alias="chatbot", user_id="alice"))
    budgets = [
        budget_create(
            organization=world.acme, amount_usd=Decimal(500), period=period, thresholds=[1], name=f"org {period}"
        )
        for period in ("daily", "weekly", "monthly")
    ] + [
        budget_create(
            organization=world.acme, team=world.chatbot, amount_usd=Decimal(100), period="weekly", thresholds=[1]
        ),
        budget_create(
            organization=world.acme, team=world.search, amount_usd=Decimal(100), period="daily", thresholds=[1]
        ),
        budget_create(
            organization=world.acme,
            team=world.chatbot,
            user_id="alice",
            amount_usd=Decimal(50),
            period="monthly",
            thresholds=[1],
        ),
        budget_create(
            organization=world.acme,
            team=world.chatbot,
            user_id="bob",
            amount_usd=Decimal(50),
            period="daily",
            thresholds=[1],
        ),
        budget_create(organization=world.globex, amount_usd=Decimal(50), period="monthly", thresholds=[1]),
    ]
    dirty_rollups_refresh()  # most spend from rollups...
    ingest(world.ingest, costing("0.25", team_alias="chatbot", user_id="alice"))  # ...some from the raw tail
    now = datetime.now(UTC)
    budgets = list(Budget.objects.filter(pk__in=[b.pk for b in budgets]).select_related("organization", "team"))
    expected = {budget.pk: raw_spend(budget, now) for budget in budgets}
    assert len(set(expected.values())) > 4  # the budgets differ: agreeing is not trivial

    grouped = budget_spends(budgets, now)
    assert {pk: spend.spend for pk, spend in grouped.items()} == expected
    for budget in budgets:
        start, end = budget_period(budget, now)
        assert budget_status(budget, now, fresh=True).spend == expected[budget.pk], budget
        assert budget_spend(budget, start, end, now) == expected[budget.pk], budget

    # The budgets page and the team page.
    page = client_for(world.owner).get("/o/acme/budgets/")
    assert {row.budget.pk: row.status.spend for row in page.context["rows"]} == {
        pk: value for pk, value in expected.items() if Budget.objects.get(pk=pk).organization_id == world.acme.pk
    }
    team_page = client_for(world.owner).get("/o/acme/teams/chatbot/")
    for row in team_page.context["rows"]:
        assert row.status.spend == expected[row.budget.pk], row.budget

    # The check API (the ingest token: every team in view, so organization budgets show their spend).
    for alias, user in (("chatbot", "alice"), ("chatbot", "bob"), ("search", "alice")):
        answer = api(world.read).get("/api/v1/budget/check", {"team_alias": alias, "user_id": user}).json()
        assert answer["budgets"]
        for figures in answer["budgets"]:
            assert Decimal(str(figures["spend"])) == expected[figures["budget_id"]], figures

    # Evaluation and its emails (every budget crossed its 1 % threshold).
    budgets_evaluate(now=now)
    for alert in BudgetAlert.objects.select_related("budget__organization", "budget__team"):
        text = _alert_message(alert, ["x@example.com"], now).body
        assert f"Spend so far:       {usd(expected[alert.budget_id])}" in text, alert.budget

    # Prometheus reads rollup rows only: once the tail is rolled up, and user budgets evaluated, it agrees.
    dirty_rollups_refresh()
    budgets_evaluate(now=datetime.now(UTC))
    now = datetime.now(UTC)
    parsed = series(samples(scrape(client).content), "llmcost_budget_spend_usd")
    for budget in budgets:
        scope = "user" if budget.user_id else "team" if budget.team_id else "organization"
        key = labels(
            organization=budget.organization.slug,
            team=budget.team.alias if budget.team else "",
            budget_id=str(budget.pk),
            name=budget.name,
            scope=scope,
            period=budget.period,
        )
        if budget_period(budget, now)[0] == budget_period(budget, now - timedelta(seconds=5))[0]:
            assert parsed[key] == float(raw_spend(budget, now)), budget


# --- the forecast -----------------------------------------------------------------------------------


def past_month(budget: Budget) -> tuple[datetime, datetime]:
    """A whole local month that ended recently (its events are still within retention)."""
    return budget_period(budget, datetime.now(UTC) - timedelta(days=40))


def daily_history(world, start: datetime, days: int, usd_per_day: str) -> None:
    """`usd_per_day` spent at local noon of each of the first `days` days of the period."""
    ingest(world.ingest, *[
        costing(usd_per_day, at=start + timedelta(days=day, hours=12), team_alias="chatbot", request_id=f"h{day}")
        for day in range(days)
    ])  # fmt: skip


def test_the_projection_blends_the_last_week_with_the_period_so_far_in_the_organizations_time_zone(world):
    world.acme.time_zone = "Asia/Tokyo"  # UTC+9, no DST: a local day is 24 real hours
    world.acme.save()
    budget = budget_create(organization=world.acme, team=world.chatbot, amount_usd=Decimal(1000), period="monthly")
    start, end = past_month(budget)
    assert start.astimezone(ZoneInfo("Asia/Tokyo")).hour == 0 and start.hour == 15  # local midnight
    # $2 on each of the first 10 local days; then a busier last week would pull the projection up.
    daily_history(world, start, 10, "2")
    ingest(world.ingest, costing("1", at=start - timedelta(hours=1), team_alias="chatbot", request_id="before"))
    now = start + timedelta(days=10)
    dirty_rollups_refresh()

    status = budget_status(budget, now, fresh=True)

    assert status.spend == Decimal(20)
    assert status.recent_spend == Decimal(14)  # local days 4..10 of the month
    elapsed, left = Decimal(240), Decimal(int((end - now).total_seconds())) / 3600
    rate = (elapsed * (Decimal(20) / elapsed) + 168 * (Decimal(14) / 168)) / (elapsed + 168)
    assert status.projected_spend == (Decimal(20) + rate * left).quantize(Decimal("0.000001"))
    assert not status.projected_over and status.projected_runs_out_on is None


def test_a_projection_over_the_limit_sends_one_forecast_alert_per_period_naming_the_run_out_date(world, settings):
    world.acme.time_zone = "America/Los_Angeles"
    world.acme.save()
    settings.SITE_URL = "https://cost.example.com"
    budget = budget_create(organization=world.acme, team=world.chatbot, amount_usd=Decimal(60), period="monthly")
    start, end = past_month(budget)
    daily_history(world, start, 10, "2")
    now = start + timedelta(days=10)
    status = budget_status(budget, now, fresh=True)
    assert status.spend == 20 and status.projected_over and not status.reached

    budgets_evaluate(now=now)  # 33 % used: no threshold alert yet, but the projection exceeds the limit
    budgets_evaluate(now=now + timedelta(hours=1))
    budgets_evaluate(now=now + timedelta(days=2))

    [alert] = BudgetForecastAlert.objects.all()
    assert (alert.budget_id, alert.period_start, alert.sent_at is not None) == (budget.pk, start, True)
    # $40 left at the blended rate from `now`, as a local date.
    hours_left = (Decimal(60) - 20) / status.spend_rate
    runs_out = (now + timedelta(hours=float(hours_left))).astimezone(ZoneInfo("America/Los_Angeles")).date()
    assert alert.runs_out_on == runs_out == status.projected_runs_out_on
    assert start.astimezone(ZoneInfo("America/Los_Angeles")).date() < runs_out < end.date()
    [message] = mail.outbox
    assert message.subject == (
        f"[llmcost] Acme / chatbot: the monthly budget is projected to run out on {runs_out.isoformat()}"
    )
    assert "owner@acme.test" in message.to
    assert usd(status.projected_spend) in message.body and "$60.00" in message.body
    assert "https://cost.example.com/o/acme/?team=chatbot" in message.body
    assert not BudgetAlert.objects.exists()

    # The next period starts afresh: its own projection, its own alert.
    daily_history_next = [
        costing("5", at=end + timedelta(days=day, hours=12), team_alias="chatbot", request_id=f"n{day}")
        for day in range(3)
    ]
    ingest(world.ingest, *daily_history_next)
    budgets_evaluate(now=end + timedelta(days=3))
    assert BudgetForecastAlert.objects.filter(budget=budget).count() == 2
    assert len([m for m in mail.outbox if "projected to run out" in m.subject]) == 2


def test_no_forecast_alert_once_the_limit_is_reached_or_while_the_projection_stays_under(world):
    budget = budget_create(organization=world.acme, team=world.chatbot, amount_usd=Decimal(15), period="monthly")
    under = budget_create(organization=world.acme, team=world.search, amount_usd=Decimal(1000), period="monthly")
    start, _ = past_month(budget)
    daily_history(world, start, 10, "2")  # $20 spent: over the $15 limit already
    budgets_evaluate(now=start + timedelta(days=10))
    assert not BudgetForecastAlert.objects.exists()
    assert BudgetAlert.objects.filter(budget=budget).count() == 3  # the thresholds say it
    assert not BudgetAlert.objects.filter(budget=under).exists()


def test_pages_and_the_check_api_show_the_projection(world):
    budget = budget_create(
        organization=world.acme, team=world.chatbot, amount_usd=Decimal(10), period="monthly", name="Chatbot budget"
    )
    org_budget = budget_create(organization=world.acme, amount_usd=Decimal(1000), period="monthly")
    ingest(world.ingest, costing("4", team_alias="chatbot"))
    projected = budget_status(budget, fresh=True).projected_spend
    assert projected > 4

    answer = api(world.read).get("/api/v1/budget/check", {"team_alias": "chatbot"}).json()
    figures = {b["budget_id"]: b for b in answer["budgets"]}
    assert Decimal(str(figures[budget.pk]["projected_spend"])) > 4
    assert "projected_runs_out_on" in figures[budget.pk]
    # A token pinned to one team does not see the organization's spend, nor its projection.
    pinned = {b["budget_id"]: b for b in api(world.pinned).get("/api/v1/budget/check").json()["budgets"]}
    assert pinned[org_budget.pk]["projected_spend"] is None
    assert pinned[org_budget.pk]["projected_runs_out_on"] is None
    assert pinned[budget.pk]["projected_spend"] is not None

    for url in ("/o/acme/budgets/", "/o/acme/teams/chatbot/"):
        rows = {row.budget.pk: row for row in client_for(world.owner).get(url).context["rows"]}
        assert rows[budget.pk].status.projected_spend == pytest.approx(projected, abs=Decimal("0.01"))
    assert client_for(world.outsider).get("/o/acme/teams/chatbot/").status_code == 404


def test_pages_name_the_projected_run_out_date(world):
    budget = budget_create(organization=world.acme, team=world.chatbot, amount_usd=Decimal(5), period="monthly")
    ingest(world.ingest, costing("4.5", team_alias="chatbot"))
    status = budget_status(budget, fresh=True)
    if not status.projected_over:  # the period's very first instants: nothing is projected yet
        pytest.skip("no projection over the limit this early in the period")
    shown = status.projected_runs_out_on.strftime("%-d %b")
    assert f"runs out {shown}" in client_for(world.owner).get("/o/acme/budgets/").content.decode()
    team_page = client_for(world.owner).get("/o/acme/teams/chatbot/").content.decode()
    assert f"<dt>Runs out</dt><dd class=\"error-text\">{shown} (projected)</dd>" in team_page


def test_a_forecast_is_offered_once_to_channels_that_take_forecasts(world):
    channel, _ = channel_create(organization=world.acme, kind="webhook", url="https://hooks.example.test/f",
                                event_types=["budget.forecast"])  # fmt: skip
    budget = budget_create(organization=world.acme, team=world.chatbot, amount_usd=Decimal(60), period="monthly")
    start, _ = past_month(budget)
    daily_history(world, start, 10, "2")
    now = start + timedelta(days=10)
    budgets_evaluate(now=now)
    budgets_evaluate(now=now + timedelta(hours=1))
    [delivery] = NotificationDelivery.objects.filter(channel=channel)
    assert delivery.event_type == "budget.forecast"
    assert (delivery.payload["limit"], delivery.payload["budget"]["id"]) == ("60.000000", budget.pk)
    assert delivery.payload["runs_out_on"] == BudgetForecastAlert.objects.get().runs_out_on.isoformat()
