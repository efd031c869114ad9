"""Budget alert emails: each threshold once per budget and period, to the right people, with the facts.

Most tests run `budgets_evaluate(now=...)` at a fixed moment of a day two days ago (a daily UTC
budget), so periods never roll over under a test; events are ingested through the API.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from smtplib import SMTPServerDisconnected
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.mail.backends.locmem import EmailBackend as LocmemBackend

from billing.models import Budget, BudgetAlert
from billing.pricing.formatting import usd
from billing.selectors import budget_period
from billing.services import budget_alert_recipients, budget_create, budgets_evaluate
from teams.services import member_add
from tests.budget_support import costing as costing_at
from tests.budget_support import fast_passwords, ingest, private_cache
from tests.conftest import event, make_price
from tests.smtp_sink import free_port, smtp_sink

LOCMEM = "django.core.mail.backends.locmem.EmailBackend"
SMTP = "django.core.mail.backends.smtp.EmailBackend"


@pytest.fixture(autouse=True)
def _mail_and_cache(settings):
    settings.EMAIL_BACKEND = LOCMEM
    settings.BUDGET_SPEND_CACHE_SECONDS = 0
    settings.SITE_URL = "https://cost.example.com"
    settings.DEFAULT_FROM_EMAIL = "llmcost <alerts@cost.example.com>"
    fast_passwords(settings)
    private_cache(settings)
    mail.outbox = []
    FlakyBackend.failures_left = 0


# --- helpers -----------------------------------------------------------------------------------------

DAY = datetime.combine(datetime.now(UTC).date() - timedelta(days=2), time.min, tzinfo=UTC)  # a past UTC day
NOON = DAY + timedelta(hours=12)


def costing(usd: str, at: datetime = DAY + timedelta(hours=6), **overrides) -> dict:
    """An event costing exactly `usd`, by default at 06:00 on DAY."""
    return costing_at(usd, at, **overrides)


def team_budget(world, amount="10", **options) -> Budget:
    options.setdefault("period", "daily")
    return budget_create(organization=world.acme, team=world.chatbot, amount_usd=Decimal(amount), **options)


def alerts(budget: Budget) -> list[tuple[int, bool]]:
    """(threshold, sent) of the budget's alerts, by threshold."""
    return [(a.threshold, a.sent_at is not None) for a in budget.alerts.order_by("threshold")]


def subjects() -> list[str]:
    return sorted(message.subject for message in mail.outbox)


def parts(message) -> tuple[str, str]:
    html = [content for content, mimetype in message.alternatives if mimetype == "text/html"]
    assert len(html) == 1, message.alternatives
    return message.body, html[0]


class FlakyBackend(LocmemBackend):
    """Delivers to mail.outbox, except that the next `failures_left` sends raise as SMTP would."""

    failures_left = 0

    def send_messages(self, messages):
        if FlakyBackend.failures_left > 0:
            FlakyBackend.failures_left -= 1
            raise SMTPServerDisconnected("Connection unexpectedly closed")
        return super().send_messages(messages)


# --- thresholds --------------------------------------------------------------------------------------


def test_it_sends_the_50_percent_alert_when_spend_is_exactly_half(world):
    budget = team_budget(world, "10")
    ingest(world.ingest, costing("5"))

    assert budgets_evaluate(now=NOON) == 1

    assert alerts(budget) == [(50, True)]
    alert = budget.alerts.get()
    assert alert.spend_usd == Decimal(5) and alert.limit_usd == Decimal(10)
    assert alert.period_start == DAY
    assert len(mail.outbox) == 1
    assert "50%" in mail.outbox[0].subject


def test_it_sends_the_100_percent_alert_when_the_limit_is_reached_exactly(world):
    budget = team_budget(world, "10", thresholds=[100])
    ingest(world.ingest, costing("4"), costing("6"))
    budgets_evaluate(now=NOON)
    assert alerts(budget) == [(100, True)]
    assert len(mail.outbox) == 1


def test_it_sends_nothing_just_below_a_threshold(world):
    budget = team_budget(world, "10")
    ingest(world.ingest, costing("4.999998"))

    assert budgets_evaluate(now=NOON) == 0

    assert alerts(budget) == []
    assert mail.outbox == []


def test_it_sends_each_threshold_once_per_period_however_often_it_runs(world):
    budget = team_budget(world, "10")
    ingest(world.ingest, costing("6"))
    for minute in range(3):
        budgets_evaluate(now=NOON + timedelta(minutes=minute))
    assert alerts(budget) == [(50, True)]
    assert len(mail.outbox) == 1

    ingest(world.ingest, costing("2.5", at=NOON + timedelta(minutes=5)))
    for minute in range(10, 13):
        budgets_evaluate(now=NOON + timedelta(minutes=minute))
    assert alerts(budget) == [(50, True), (80, True)]
    assert subjects() == [
        "[llmcost] Acme / chatbot: 50% of the daily budget reached",
        "[llmcost] Acme / chatbot: 80% of the daily budget reached",
    ]
    assert list(budget.alerts.values_list("attempts", flat=True)) == [1, 1]


def test_it_creates_one_alert_per_threshold_when_spend_jumps_past_several(world):
    budget = team_budget(world, "10")
    ingest(world.ingest, costing("12"))

    assert budgets_evaluate(now=NOON) == 3
    budgets_evaluate(now=NOON + timedelta(minutes=1))

    assert alerts(budget) == [(50, True), (80, True), (100, True)]
    assert subjects() == [
        "[llmcost] Acme / chatbot: 100% of the daily budget reached",
        "[llmcost] Acme / chatbot: 50% of the daily budget reached",
        "[llmcost] Acme / chatbot: 80% of the daily budget reached",
    ]


def test_it_alerts_again_in_the_next_period(world):
    budget = team_budget(world, "10")
    ingest(world.ingest, costing("6"), costing("7", at=DAY + timedelta(days=1, hours=6)))

    budgets_evaluate(now=NOON)
    budgets_evaluate(now=NOON + timedelta(days=1))
    budgets_evaluate(now=NOON + timedelta(days=1, minutes=1))

    rows = list(budget.alerts.order_by("period_start", "threshold").values_list("period_start", "threshold"))
    assert rows == [(DAY, 50), (DAY + timedelta(days=1), 50)]
    assert len(mail.outbox) == 2
    assert all(alert.sent_at is not None for alert in budget.alerts.all())


def test_it_counts_only_the_budgets_own_team_user_and_organization(world):
    chatbot = team_budget(world, "10")
    alice = team_budget(world, "10", user_id="alice@acme.test")
    organization = budget_create(organization=world.acme, amount_usd=Decimal(20), period="daily")
    globex = budget_create(organization=world.globex, team=world.globex_chatbot, amount_usd=Decimal(10), period="daily")
    ingest(
        world.ingest,
        costing("4", team_alias="search"),  # another team
        costing("3", user_id="bob@acme.test"),  # another user in the team
        costing("1"),  # alice in chatbot
    )
    ingest(world.globex_token, costing("9"))  # globex's own "chatbot" team

    budgets_evaluate(now=NOON)

    assert alerts(chatbot) == []  # $4 of $10
    assert alerts(alice) == []  # $1 of $10
    assert alerts(organization) == []  # $8 of $20 (globex's $9 is not acme's)
    assert alerts(globex) == [(50, True), (80, True)]  # $9 of $10
    assert all("Globex" in message.subject for message in mail.outbox)

    ingest(world.ingest, costing("4", team_alias="search"), costing("1"))
    budgets_evaluate(now=NOON + timedelta(minutes=1))
    assert alerts(chatbot) == [(50, True)]  # $5 of $10
    assert alerts(alice) == []  # $2 of $10
    assert alerts(organization) == [(50, True)]  # $13 of $20


def test_it_ignores_inactive_budgets(world):
    budget = team_budget(world, "10")
    Budget.objects.filter(pk=budget.pk).update(is_active=False)
    ingest(world.ingest, costing("20"))
    budgets_evaluate(now=NOON)
    assert alerts(budget) == []
    assert mail.outbox == []


# --- recipients --------------------------------------------------------------------------------------


@pytest.fixture
def people(world):
    """Admins with different team visibility, and people who must never get acme's alerts."""
    member_add(organization=world.acme, email="admin@acme.test", role="admin")
    member_add(organization=world.acme, email="chat-admin@acme.test", role="admin", teams=[world.chatbot])
    member_add(organization=world.acme, email="search-admin@acme.test", role="admin", teams=[world.search])
    member_add(organization=world.acme, email="limited-viewer@acme.test", role="viewer", teams=[world.chatbot])
    member_add(organization=world.globex, email="globex-admin@globex.test", role="admin")
    # Globex's owner also belongs to acme, but only as a member.
    member_add(organization=world.acme, email="boss@globex.test", role="member")
    return world


NEVER = {
    "member@acme.test",
    "viewer@acme.test",
    "limited-viewer@acme.test",
    "boss@globex.test",
    "globex-admin@globex.test",
}


def test_it_alerts_owners_and_admins_who_see_the_team_plus_extra_addresses(people):
    world = people
    budget = team_budget(world, "10", extra_emails=["finance@acme.test"])
    ingest(world.ingest, costing("5"))

    budgets_evaluate(now=NOON)

    expected = ["admin@acme.test", "chat-admin@acme.test", "finance@acme.test", "owner@acme.test"]
    assert budget_alert_recipients(budget) == expected
    [message] = mail.outbox
    assert sorted(message.to + message.cc + message.bcc) == expected
    assert budget.alerts.get().recipients == expected


def test_it_alerts_only_the_owners_and_admins_who_see_the_whole_organization_for_an_organization_budget(people):
    # The email lists every team's users; admins limited to some teams must not read it.
    world = people
    budget = budget_create(organization=world.acme, amount_usd=Decimal(10), period="daily")
    ingest(world.ingest, costing("5", team_alias="search", user_id="searcher@acme.test"))

    budgets_evaluate(now=NOON)

    [message] = mail.outbox
    recipients = set(message.to + message.cc + message.bcc)
    assert recipients == {"admin@acme.test", "owner@acme.test"}
    assert not recipients & (NEVER | {"chat-admin@acme.test", "search-admin@acme.test"})
    assert "searcher@acme.test" in message.body
    assert budget.alerts.get().sent_at is not None


def test_it_alerts_only_globex_people_for_a_globex_budget(people):
    world = people
    budget_create(organization=world.globex, team=world.globex_chatbot, amount_usd=Decimal(10), period="daily")
    ingest(world.globex_token, costing("5"))

    budgets_evaluate(now=NOON)

    [message] = mail.outbox
    assert sorted(message.to + message.cc + message.bcc) == ["boss@globex.test", "globex-admin@globex.test"]


def test_it_does_not_alert_a_deactivated_admin(people):
    world = people
    get_user_model().objects.filter(email="admin@acme.test").update(is_active=False)
    team_budget(world, "10")
    ingest(world.ingest, costing("5"))

    budgets_evaluate(now=NOON)

    [message] = mail.outbox
    assert "admin@acme.test" not in message.to + message.cc + message.bcc
    assert "owner@acme.test" in message.to


# --- what the email says -----------------------------------------------------------------------------


def test_it_writes_an_html_and_text_email_with_the_facts_of_the_alert(world, settings):
    settings.BUDGET_FORECAST_ALERTS = False  # the threshold alert's email alone (forecasts: test_budget_forecast)
    zone = "America/New_York"
    world.acme.name = "Acme & Sons"
    world.acme.time_zone = zone
    world.acme.save()
    make_price("other-model", input="1", output="1")
    budget = team_budget(world, "10", period="monthly")
    # A quarter of the way through a past local month.
    start, end = budget_period(budget, datetime.now(UTC) - timedelta(days=9))
    now = start + (end - start) / 4
    # The forecast: $5 so far, $2 of it in the last 7 days (the $3 came on the first day), blended
    # per hour elapsed E with the last week's 168 hours: 5 + hours left × (5 + 2) / (E + 168).
    elapsed, left = ((now - start).total_seconds() / 3600, (end - now).total_seconds() / 3600)
    projected = Decimal(5) + Decimal(left) * 7 / (Decimal(elapsed) + 168)
    ingest(
        world.ingest,
        costing("3", at=start + timedelta(hours=1)),
        costing("1.5", at=start + timedelta(days=1), user_id="bob@acme.test"),
        event(
            model="other-model",
            prompt_tokens=250_000,
            output_tokens=250_000,
            user_id="bob@acme.test",
            timestamp=(start + timedelta(days=2)).isoformat(),
        ),  # $0.50
        costing("40", at=start - timedelta(minutes=1)),  # last month: not part of this period
        costing("40", at=start + timedelta(hours=2), team_alias="search"),  # another team
    )

    budgets_evaluate(now=now)

    [message] = mail.outbox
    assert message.subject == "[llmcost] Acme & Sons / chatbot: 50% of the monthly budget reached"
    assert message.from_email == "llmcost <alerts@cost.example.com>"
    text, html = parts(message)
    local_start = start.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M")
    local_end = end.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M")
    assert local_start.endswith("00:00") and local_end.endswith("00:00")
    dashboard = "https://cost.example.com/o/acme/?team=chatbot"
    for body, organization in ((text, "Acme & Sons"), (html, "Acme &amp; Sons")):
        assert organization in body
        assert "chatbot" in body
        assert local_start in body and local_end in body and zone in body
        assert "$5.00" in body  # spend
        assert "$10.00" in body  # limit
        assert "50.0%" in body  # used
        assert usd(projected) in body  # projected at period end
        assert "test-model: $4.50 (2 requests)" in body
        assert "other-model: $0.50 (1 requests)" in body
        assert "alice@acme.test: $3.00 (1 requests)" in body
        assert "bob@acme.test: $2.00 (2 requests)" in body
        assert "search" not in body
        assert "$40" not in body and "$85" not in body
    assert f"Dashboard: {dashboard}" in text
    assert f'href="{dashboard}"' in html
    assert "Monthly" in text
    assert "&amp;" not in text
    assert text.index("test-model") < text.index("other-model")  # costliest first
    assert text.index("alice@acme.test") < text.index("bob@acme.test")


def test_it_names_the_user_of_a_user_budget_and_links_an_organization_budget_to_the_whole_organization(world):
    user_budget = team_budget(world, "10", user_id="alice@acme.test")
    organization_budget = budget_create(organization=world.acme, amount_usd=Decimal(100), period="daily")
    ingest(world.ingest, costing("6"), costing("50", team_alias="search", user_id="carol@acme.test"))

    budgets_evaluate(now=NOON)

    by_budget = {}
    for message in mail.outbox:
        key = "user" if "alice@acme.test" in message.subject else "organization"
        by_budget[key] = message
    assert set(by_budget) == {"user", "organization"}
    text, html = parts(by_budget["user"])
    assert by_budget["user"].subject == "[llmcost] Acme / chatbot / alice@acme.test: 50% of the daily budget reached"
    assert "User:         alice@acme.test" in text
    assert "carol" not in text and "carol" not in html  # not this user's spend
    assert "$6.00" in text
    text, html = parts(by_budget["organization"])
    assert by_budget["organization"].subject == "[llmcost] Acme: 50% of the daily budget reached"
    assert "Team:" not in text
    assert "Dashboard: https://cost.example.com/o/acme/\n" in text
    assert "$56.00" in text
    assert alerts(user_budget) == [(50, True)] and alerts(organization_budget) == [(50, True)]


# --- failed sends are kept and retried ---------------------------------------------------------------


def test_it_records_a_refused_smtp_connection_and_retries_until_it_succeeds(world, settings):
    settings.EMAIL_BACKEND = SMTP
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", free_port(), 5
    budget = team_budget(world, "10")
    ingest(world.ingest, costing("5"))

    budgets_evaluate(now=NOON)
    alert = budget.alerts.get()
    assert alert.sent_at is None
    assert alert.attempts == 1
    assert "ConnectionRefusedError" in alert.last_error
    assert alert.claimed_at is None  # free for the next run

    budgets_evaluate(now=NOON + timedelta(minutes=1))
    alert.refresh_from_db()
    assert (alert.sent_at, alert.attempts) == (None, 2)
    assert BudgetAlert.objects.count() == 1  # retried, not re-created

    settings.EMAIL_BACKEND = LOCMEM  # the mail server is back
    budgets_evaluate(now=NOON + timedelta(minutes=2))
    alert.refresh_from_db()
    assert alert.sent_at is not None
    assert alert.attempts == 3
    assert alert.last_error == ""
    assert alert.recipients == ["owner@acme.test"]
    assert len(mail.outbox) == 1

    budgets_evaluate(now=NOON + timedelta(minutes=3))
    assert len(mail.outbox) == 1


def test_it_sends_the_other_alerts_when_one_send_raises_and_retries_that_one(world, settings):
    settings.BUDGET_FORECAST_ALERTS = False  # threshold alerts only (forecasts: test_budget_forecast)
    settings.EMAIL_BACKEND = "tests.test_budget_alerts.FlakyBackend"
    FlakyBackend.failures_left = 1
    budget = team_budget(world, "10")
    ingest(world.ingest, costing("9"))

    budgets_evaluate(now=NOON)
    assert len(mail.outbox) == 1
    failed = budget.alerts.get(sent_at__isnull=True)
    assert failed.last_error == "SMTPServerDisconnected: Connection unexpectedly closed"
    assert failed.attempts == 1

    budgets_evaluate(now=NOON + timedelta(minutes=1))
    assert alerts(budget) == [(50, True), (80, True)]
    assert subjects() == [
        "[llmcost] Acme / chatbot: 50% of the daily budget reached",
        "[llmcost] Acme / chatbot: 80% of the daily budget reached",
    ]
    failed.refresh_from_db()
    assert (failed.attempts, failed.last_error) == (2, "")


def test_it_retries_a_failed_alert_after_its_period_ended_with_that_periods_figures(world, settings):
    settings.EMAIL_BACKEND = "tests.test_budget_alerts.FlakyBackend"
    FlakyBackend.failures_left = 1
    budget = team_budget(world, "10")
    ingest(world.ingest, costing("6"), costing("1", at=DAY + timedelta(days=1, hours=6)))

    budgets_evaluate(now=DAY + timedelta(hours=23, minutes=59))  # fails: the mail server is down
    assert alerts(budget) == [(50, False)]
    budgets_evaluate(now=NOON + timedelta(days=1))  # the next day: the mail server is back

    assert alerts(budget) == [(50, True)]
    [message] = mail.outbox
    text, _ = parts(message)
    day = DAY.strftime("%Y-%m-%d")
    assert f"{day} 00:00 to {(DAY + timedelta(days=1)).strftime('%Y-%m-%d')} 00:00" in text
    assert "$6.00" in text  # the spend of the day the alert is about
    assert "60.0%" in text


# --- a real SMTP server ------------------------------------------------------------------------------


def test_it_delivers_the_alert_to_a_real_smtp_server_with_both_parts(world, settings):
    budget = team_budget(world, "10", extra_emails=["finance@acme.test"])
    ingest(world.ingest, costing("8"))
    with smtp_sink() as sink:
        settings.EMAIL_BACKEND = SMTP
        settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = sink.host, sink.port, 10
        settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
        settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""

        budgets_evaluate(now=NOON)

        received = sink.wait_for(2, timeout=10)
    assert len(received) == 2, [r.subject for r in received]
    assert sorted(r.subject for r in received) == [
        "[llmcost] Acme / chatbot: 50% of the daily budget reached",
        "[llmcost] Acme / chatbot: 80% of the daily budget reached",
    ]
    for delivered in received:
        assert delivered.mail_from == "alerts@cost.example.com"
        assert sorted(delivered.rcpt_tos) == ["finance@acme.test", "owner@acme.test"]
        assert delivered.message.get_content_type() == "multipart/alternative"
        text, html = delivered.part("text/plain"), delivered.part("text/html")
        assert "Spend so far:       $8.00" in text and "Limit:              $10.00" in text
        assert "<strong>$8.00</strong>" in html and "https://cost.example.com/o/acme/?team=chatbot" in html
    assert alerts(budget) == [(50, True), (80, True)]
