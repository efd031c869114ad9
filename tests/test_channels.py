"""Notification channels against a real HTTP receiver: each budget threshold reaches each channel once,
signed, retried through 5xx, timeouts and refused connections, failed at once on a 4xx, given up
after the retry window; Slack gets its own shape; racing senders deliver once.

Tests run `budgets_evaluate(now=...)` and `deliveries_send(now=...)` at chosen moments of a day two
days ago, so retries are driven by the clock the test passes, not by waiting.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.db import connection

from billing import notifications
from billing.models import BudgetAlert, NotificationChannel, NotificationDelivery
from billing.notifications import channel_create, channel_test, deliveries_send, notify
from billing.services import budget_create, budgets_evaluate
from tests.budget_support import costing as costing_at
from tests.budget_support import fast_passwords, ingest, private_cache
from tests.http_receiver import http_receiver
from tests.smtp_sink import free_port

DAY = datetime.combine(datetime.now(UTC).date() - timedelta(days=2), time.min, tzinfo=UTC)
NOON = DAY + timedelta(hours=12)
Status = NotificationDelivery.Status


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.BUDGET_SPEND_CACHE_SECONDS = 0
    settings.SITE_URL = "https://cost.example.com"
    fast_passwords(settings)
    private_cache(settings)
    mail.outbox = []


def costing(usd: str) -> dict:
    return costing_at(usd, DAY + timedelta(hours=6), team_alias="chatbot")


def team_budget(world, amount="10", **options):
    options.setdefault("period", "daily")
    return budget_create(organization=world.acme, team=world.chatbot, amount_usd=Decimal(amount), **options)


def webhook(world, url, **options):
    return channel_create(organization=world.acme, kind="webhook", url=url, **options)


def verify(secret: str, request) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, request.headers["x-llmcost-signature"])


# --- webhooks ---------------------------------------------------------------------------------------


def test_it_retries_a_failing_webhook_with_the_same_signed_delivery_until_it_answers(world):
    budget = team_budget(world, thresholds=[50])
    ingest(world.ingest, costing("6"))
    with http_receiver(500, 503) as receiver:
        _, secret = webhook(world, receiver.url)
        budgets_evaluate(now=NOON)  # creates the alert and its delivery, and tries it once: 500
        assert len(receiver.requests) == 1
        deliveries_send(now=NOON + timedelta(seconds=10))  # the first pause (30 s) has not passed
        assert len(receiver.requests) == 1
        deliveries_send(now=NOON + timedelta(seconds=31))  # 503
        deliveries_send(now=NOON + timedelta(seconds=50))  # the second pause (1 min) has not passed
        assert len(receiver.requests) == 2
        deliveries_send(now=NOON + timedelta(minutes=2))  # 200
        budgets_evaluate(now=NOON + timedelta(minutes=5))  # nothing new: the threshold was crossed once
        deliveries_send(now=NOON + timedelta(hours=2))
        requests = list(receiver.requests)

    assert len(requests) == 3
    delivery = NotificationDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.last_error) == (Status.DELIVERED, 3, "")
    assert delivery.budget_alert == BudgetAlert.objects.get(budget=budget)
    assert {r.headers["x-llmcost-delivery"] for r in requests} == {str(delivery.uuid)}
    assert {r.headers["x-llmcost-event"] for r in requests} == {"budget.threshold"}
    assert len({r.body for r in requests}) == 1, "a retry must post the same bytes"
    assert all(verify(secret, r) for r in requests)
    assert not verify("another-secret", requests[0])
    assert all(r.headers["content-type"] == "application/json" for r in requests)

    body = json.loads(requests[0].body)
    assert body["event"] == "budget.threshold" and body["delivery"] == str(delivery.uuid) and body["test"] is False
    assert body["organization"] == {"slug": "acme", "name": "Acme"}
    assert body["team"]["alias"] == "chatbot"
    assert body["budget"] == {"id": budget.pk, "name": "", "user_id": None, "period": "daily", "hard": False}
    assert body["period"] == {"start": DAY.isoformat(), "end": (DAY + timedelta(days=1)).isoformat()}
    assert body["threshold"] == 50
    assert Decimal(body["spend"]) == 6 and Decimal(body["limit"]) == 10 and body["currency"] == "USD"
    assert "projection" in body
    assert body["link"] == "https://cost.example.com/o/acme/teams/chatbot/"
    assert "50%" in body["summary"] and "$6.00" in body["summary"]


def test_it_delivers_each_threshold_once_to_each_channel_however_often_budgets_are_evaluated(world):
    budget = team_budget(world, thresholds=[50, 80, 100])
    ingest(world.ingest, costing("8.5"))  # past 50 % and 80 %
    with http_receiver() as hook, http_receiver() as slack:
        webhook(world, hook.url)
        channel_create(organization=world.acme, kind="slack", url=slack.url)
        for minute in range(4):
            budgets_evaluate(now=NOON + timedelta(minutes=minute))
        ingest(world.ingest, costing("2"))  # now past 100 %
        for minute in range(4, 7):
            budgets_evaluate(now=NOON + timedelta(minutes=minute))
        hooks, slacks = list(hook.requests), list(slack.requests)

    thresholds = sorted(json.loads(r.body)["threshold"] for r in hooks)
    assert thresholds == [50, 80, 100]
    assert len(slacks) == 3
    assert NotificationDelivery.objects.filter(budget_alert__budget=budget).count() == 6
    assert set(NotificationDelivery.objects.values_list("status", flat=True)) == {Status.DELIVERED}
    # Offering an event again (a re-run, a second worker) adds nothing: the unique row decides.
    alert = BudgetAlert.objects.get(budget=budget, threshold=50)
    assert notifications.budget_alert_notify(alert, period_end=DAY + timedelta(days=1)) == 0


def test_it_posts_slacks_incoming_webhook_shape(world):
    team_budget(world, thresholds=[80], name="Chatbot daily")
    ingest(world.ingest, costing("8.5"))
    with http_receiver() as slack:
        channel_create(organization=world.acme, kind="slack", url=slack.url)
        budgets_evaluate(now=NOON)
        (request,) = slack.wait_for(1)
    body = json.loads(request.body)
    assert set(body) == {"text", "blocks"}
    assert "80%" in body["text"] and "Chatbot daily" in body["text"] and "$8.50" in body["text"]
    assert body["blocks"][0]["type"] == "section" and body["blocks"][0]["text"]["type"] == "mrkdwn"
    assert all(block["type"] in {"section", "context"} for block in body["blocks"])
    fields = " ".join(f["text"] for f in body["blocks"][1]["fields"])
    assert "$8.50" in fields and "$10.00" in fields and "chatbot" in fields
    assert (
        "<https://cost.example.com/o/acme/teams/chatbot/|Open in llmcost>" in body["blocks"][-1]["elements"][0]["text"]
    )


def test_it_fails_a_4xx_at_once_but_retries_a_429(world):
    team_budget(world, thresholds=[50])
    ingest(world.ingest, costing("6"))
    with http_receiver(then=404) as gone, http_receiver(429) as busy:
        webhook(world, gone.url, name="gone")
        webhook(world, busy.url, name="busy")
        budgets_evaluate(now=NOON)
        deliveries_send(now=NOON + timedelta(minutes=5))
        deliveries_send(now=NOON + timedelta(minutes=10))
        assert len(gone.requests) == 1 and len(busy.requests) == 2
    failed = NotificationDelivery.objects.get(channel__name="gone")
    assert failed.status == Status.FAILED and failed.attempts == 1 and failed.last_status_code == 404
    assert "HTTP 404" in failed.last_error and "receiver says no" in failed.last_error
    delivered = NotificationDelivery.objects.get(channel__name="busy")
    assert delivered.status == Status.DELIVERED and delivered.attempts == 2


def test_it_retries_refused_connections_and_timeouts_then_gives_up_after_the_retry_window(world, monkeypatch):
    monkeypatch.setattr(notifications, "REQUEST_TIMEOUT_SECONDS", 0.3)
    team_budget(world, thresholds=[50])
    ingest(world.ingest, costing("6"))
    with http_receiver(then=200, delay=1.0) as slow:
        webhook(world, f"http://127.0.0.1:{free_port()}/nobody-listens", name="refused")
        webhook(world, slow.url, name="slow")
        budgets_evaluate(now=NOON)
        refused = NotificationDelivery.objects.get(channel__name="refused")
        timed_out = NotificationDelivery.objects.get(channel__name="slow")
        assert refused.status == Status.PENDING and "refused" in refused.last_error.lower(), refused.last_error
        assert timed_out.status == Status.PENDING and "timed out" in timed_out.last_error.lower(), timed_out.last_error
        assert refused.next_attempt_at == NOON + timedelta(seconds=30)

        for hours in (1, 6, 23):
            deliveries_send(now=NOON + timedelta(hours=hours))
        assert NotificationDelivery.objects.filter(status=Status.PENDING).count() == 2
        deliveries_send(now=NOON + timedelta(hours=24, minutes=1))

    for delivery in NotificationDelivery.objects.all():
        assert delivery.status == Status.FAILED and delivery.attempts == 5
        assert delivery.last_error.startswith("Gave up after 24 h"), delivery.last_error
    deliveries_send(now=NOON + timedelta(hours=30))  # a failed delivery is never tried again
    assert set(NotificationDelivery.objects.values_list("attempts", flat=True)) == {5}


def test_it_pauses_longer_after_each_failure_up_to_an_hour():
    pauses = [notifications.retry_pause(n).total_seconds() for n in range(1, 10)]
    assert pauses == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]


@pytest.mark.django_db(transaction=True)
def test_it_delivers_once_when_several_senders_race(world, monkeypatch):
    team_budget(world, thresholds=[50, 80])
    ingest(world.ingest, costing("8.5"))
    with http_receiver(delay=0.2) as receiver:
        webhook(world, receiver.url)
        # Evaluate without sending, so the racing senders below find both deliveries waiting.
        monkeypatch.setattr("billing.services.deliveries_send", lambda **kw: 0)
        budgets_evaluate(now=NOON)
        assert NotificationDelivery.objects.filter(status=Status.PENDING).count() == 2

        barrier = threading.Barrier(4)
        errors = []

        def send():
            try:
                barrier.wait(timeout=10)
                deliveries_send(now=NOON)
            except BaseException as exc:  # reported in the test's thread
                errors.append(exc)
            finally:
                connection.close()

        threads = [threading.Thread(target=send) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors, errors
        requests = receiver.wait_for(2)

    assert len(requests) == 2
    assert len({r.headers["x-llmcost-delivery"] for r in requests}) == 2
    assert list(NotificationDelivery.objects.values_list("status", "attempts")) == [(Status.DELIVERED, 1)] * 2


def test_it_sends_only_what_a_channel_is_limited_to(world):
    org_budget = budget_create(organization=world.acme, amount_usd=Decimal(10), period="daily", thresholds=[50])
    team_budget(world, thresholds=[50])
    ingest(world.ingest, costing("6"))
    with http_receiver() as receiver:
        webhook(world, receiver.url, name="everything")
        chatbot, _ = webhook(world, receiver.url, name="chatbot", teams=[world.chatbot])
        search, _ = webhook(world, receiver.url, name="search", teams=[world.search])
        forecasts, _ = webhook(world, receiver.url, name="forecasts", event_types=["budget.forecast"])
        paused, _ = webhook(world, receiver.url, name="paused")
        NotificationChannel.objects.filter(pk=paused.pk).update(is_active=False)
        globex, _ = channel_create(organization=world.globex, kind="webhook", url=receiver.url)
        budgets_evaluate(now=NOON)

    got = sorted(
        (name, alias or "")
        for name, alias in NotificationDelivery.objects.values_list(
            "channel__name", "budget_alert__budget__team__alias"
        )
    )
    # The organization budget sums every team: only channels not limited to teams get it.
    assert got == [("chatbot", "chatbot"), ("everything", ""), ("everything", "chatbot")]
    assert not NotificationDelivery.objects.filter(budget_alert__budget=org_budget, channel=chatbot).exists()
    assert not NotificationDelivery.objects.filter(channel__in=[search, forecasts, paused, globex]).exists()


def test_notify_is_generic_over_event_types(world):
    with http_receiver() as receiver:
        webhook(world, receiver.url, event_types=["spend.anomaly"])
        payload = {"team": {"alias": "chatbot"}, "summary": "chatbot spent 5x its usual hour", "spend": "12.5"}
        assert notify(organization=world.acme, team=world.chatbot, event_type="spend.anomaly", key="h1",
                      payload=payload) == 1  # fmt: skip
        assert notify(organization=world.acme, team=world.chatbot, event_type="spend.anomaly", key="h1",
                      payload=payload) == 0  # fmt: skip
        assert notify(organization=world.acme, team=world.chatbot, event_type="budget.forecast", key="f1",
                      payload=payload) == 0  # fmt: skip
        deliveries_send()
        (request,) = receiver.wait_for(1)
    assert request.headers["x-llmcost-event"] == "spend.anomaly"
    assert json.loads(request.body)["summary"] == "chatbot spent 5x its usual hour"
    with pytest.raises(ValueError, match="Unknown event type"):
        notify(organization=world.acme, team=None, event_type="budget.nonsense", key="x", payload={})


def test_it_emails_an_email_channels_addresses(world):
    team_budget(world, thresholds=[50])
    ingest(world.ingest, costing("6"))
    channel_create(organization=world.acme, kind="email", emails=["ml-leads@acme.test", "oncall@acme.test"])
    budgets_evaluate(now=NOON)
    channel_messages = [m for m in mail.outbox if "ml-leads@acme.test" in m.to]
    assert len(channel_messages) == 1
    (message,) = channel_messages
    assert message.to == ["ml-leads@acme.test", "oncall@acme.test"]
    assert "50%" in message.subject and "$6.00" in message.body
    assert "https://cost.example.com/o/acme/teams/chatbot/" in message.body
    assert NotificationDelivery.objects.get().status == Status.DELIVERED
    # The owners' and admins' own alert email still goes out as before.
    assert any(m.to == ["owner@acme.test"] for m in mail.outbox)


def test_a_test_delivery_is_sent_at_once_and_kept_apart(world):
    with http_receiver() as receiver:
        channel, secret = webhook(world, receiver.url)
        delivery = channel_test(channel)
        (request,) = receiver.wait_for(1)
    assert delivery.status == Status.DELIVERED and delivery.is_test and delivery.budget_alert is None
    assert verify(secret, request)
    assert json.loads(request.body)["test"] is True


# --- channels ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/hook", "file:///etc/passwd", "javascript:alert(1)", "gopher://x", "example.com/hook", ""],
)
def test_it_refuses_channel_urls_that_are_not_http(world, url):
    with pytest.raises(ValidationError) as error:
        webhook(world, url)
    assert "url" in error.value.message_dict
    assert not NotificationChannel.objects.exists()


def test_it_generates_a_secret_per_channel_and_refuses_foreign_teams_and_unknown_events(world):
    one, secret_one = webhook(world, "https://hooks.example.com/a")
    _, secret_two = webhook(world, "http://hooks.example.com/b")
    assert secret_one != secret_two and len(secret_one) >= 40
    assert one.secret == secret_one  # stored so it can sign
    with pytest.raises(ValidationError) as error:
        webhook(world, "https://hooks.example.com/c", teams=[world.globex_chatbot])
    assert "teams" in error.value.message_dict
    with pytest.raises(ValidationError) as error:
        webhook(world, "https://hooks.example.com/c", event_types=["budget.nonsense"])
    assert "event_types" in error.value.message_dict
    with pytest.raises(ValidationError) as error:
        channel_create(organization=world.acme, kind="email", emails=[])
    assert "emails" in error.value.message_dict
