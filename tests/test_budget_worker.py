"""Budget alerts from real Celery workers: racing workers still create and send each alert once.

The workers are separate processes on the test database; their email goes over SMTP to an
aiosmtpd sink this test starts, so what is counted is what really left the workers.
"""

from __future__ import annotations

import re
import time
import uuid
from decimal import Decimal

import pytest

from billing.models import BudgetAlert
from billing.services import budget_create
from billing.tasks import budgets_evaluate
from tests.budget_support import costing, fast_passwords, ingest
from tests.smtp_sink import free_port, smtp_sink
from tests.workers import celery_worker, worker_log

WAIT_SECONDS = 60
SUCCEEDED = re.compile(r"Task billing\.tasks\.budgets_evaluate\[[0-9a-f-]+\] succeeded")
RECEIVED = re.compile(r"Task billing\.tasks\.budgets_evaluate\[[0-9a-f-]+\] received")


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    fast_passwords(settings)


@pytest.fixture
def queue(settings):
    """The queue the test's workers consume and its tasks go to.

    On a shared broker (the CI Redis) a queue of this test's own, so no other process's worker
    takes its tasks; the embedded filesystem broker is already private to the run (and would
    leave a file per queue in ./control), so it keeps the default queue there.
    """
    if settings.CELERY_BROKER_URL.startswith("filesystem"):
        yield "celery"
        return
    name = f"budget-test-{uuid.uuid4().hex[:12]}"
    yield name
    from kombu import Exchange, Queue

    from llmcost_project.celery import app

    with app.connection_for_write() as connection:  # leave no queue or binding keys on the broker
        bound = Queue(name, Exchange(name), routing_key=name).bind(connection.default_channel)
        bound.declare()  # the channel forgets bindings it did not declare itself
        bound.delete()


def logs(*workers) -> str:
    return "\n".join(f"--- worker {i + 1} ---\n{worker_log(w)[-4000:]}" for i, w in enumerate(workers))


def wait_for_tasks(count: int, *workers) -> None:
    """Bounded wait until the workers together finished `count` budgets_evaluate tasks."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        text = [worker_log(w) for w in workers]
        if any("raised unexpected" in t or "Traceback" in t for t in text):
            pytest.fail(f"a task failed in a worker:\n{logs(*workers)}")
        if sum(len(SUCCEEDED.findall(t)) for t in text) >= count:
            return
        for w in workers:
            if w.poll() is not None:
                pytest.fail(f"a worker exited:\n{logs(*workers)}")
        time.sleep(0.2)
    pytest.fail(f"{count} budgets_evaluate tasks did not finish within {WAIT_SECONDS}s:\n{logs(*workers)}")


def worker_env(sink_url: str, queue: str) -> dict:
    return {
        "CELERY_WORKER_QUEUES": queue,  # celery's CLI reads `worker --queues` from this variable
        "EMAIL_URL": sink_url,
        "DEFAULT_FROM_EMAIL": "llmcost <alerts@cost.example.com>",
        "SITE_URL": "https://cost.example.com",
        "BUDGET_SPEND_CACHE_SECONDS": "0",
        "BUDGET_FORECAST_ALERTS": "0",  # these tests count threshold alerts (forecasts: test_budget_forecast)
    }


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_it_creates_and_sends_each_threshold_once_when_two_workers_race(world, queue):
    budget = budget_create(
        organization=world.acme,
        team=world.chatbot,
        amount_usd=Decimal(10),
        period="monthly",
        extra_emails=["finance@acme.test"],
    )
    ingest(world.ingest, costing("8.5"))  # past 50 % and 80 %, short of 100 %
    tasks = 12

    with (
        smtp_sink() as sink,
        celery_worker(name="w1", extra_env=worker_env(sink.url, queue)) as w1,
        celery_worker(name="w2", extra_env=worker_env(sink.url, queue)) as w2,
    ):
        assert all(f".> {queue} " in worker_log(w) for w in (w1, w2)), logs(w1, w2)  # consuming our queue
        for _ in range(tasks):
            budgets_evaluate.apply_async(queue=queue)
        wait_for_tasks(tasks, w1, w2)
        received = sink.wait_for(2, timeout=10)
        time.sleep(1)  # a duplicate would arrive now, if there were one
        received = sink.messages
        per_worker = [len(RECEIVED.findall(worker_log(w))) for w in (w1, w2)]
        assert all(per_worker), f"one worker got no task {per_worker}:\n{logs(w1, w2)}"
        log_text = logs(w1, w2)

    assert sorted(m.subject for m in received) == [
        "[llmcost] Acme / chatbot: 50% of the monthly budget reached",
        "[llmcost] Acme / chatbot: 80% of the monthly budget reached",
    ], log_text
    for message in received:
        assert sorted(message.rcpt_tos) == ["finance@acme.test", "owner@acme.test"]
        assert message.part("text/plain") and message.part("text/html")
        assert "$8.50" in message.part("text/plain")
    rows = list(BudgetAlert.objects.filter(budget=budget).order_by("threshold"))
    assert [a.threshold for a in rows] == [50, 80]
    assert all(a.sent_at is not None for a in rows)
    assert [a.attempts for a in rows] == [1, 1], "an alert was claimed more than once"
    assert BudgetAlert.objects.count() == 2


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_it_keeps_an_alert_a_worker_could_not_send_and_sends_it_when_mail_is_back(world, queue):
    budget = budget_create(
        organization=world.acme, team=world.chatbot, amount_usd=Decimal(10), period="monthly", thresholds=[50]
    )
    ingest(world.ingest, costing("6"))

    dead = f"smtp://127.0.0.1:{free_port()}"  # nothing listens there
    with celery_worker(name="w1", extra_env=worker_env(dead, queue)) as worker:
        budgets_evaluate.apply_async(queue=queue)
        wait_for_tasks(1, worker)
        log_text = logs(worker)
    alert = BudgetAlert.objects.get(budget=budget)
    assert alert.sent_at is None, log_text
    assert alert.attempts == 1
    assert "Connection" in alert.last_error or "refused" in alert.last_error.lower(), alert.last_error

    with smtp_sink() as sink, celery_worker(name="w1", extra_env=worker_env(sink.url, queue)) as worker:
        budgets_evaluate.apply_async(queue=queue)
        wait_for_tasks(1, worker)
        received = sink.wait_for(1, timeout=10)
        log_text = logs(worker)
    assert [m.subject for m in received] == ["[llmcost] Acme / chatbot: 50% of the monthly budget reached"], log_text
    alert.refresh_from_db()
    assert alert.sent_at is not None and alert.attempts == 2 and alert.last_error == ""
