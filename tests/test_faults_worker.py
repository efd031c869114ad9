"""A worker killed mid-task, Redis restarted with its queue lost, the beat restarted: no work is lost.

Rollups and budget alerts are found from the database on every periodic run (DirtyHour marks, budget
rows and their BudgetAlert rows), never carried only by a queued message. So after the worst case —
the task's process SIGKILLed mid-rollup, the broker restarted empty (the rollup's unacknowledged
message and everything queued gone), the beat restarted — every dirty hour is still rolled up to
exactly the raw sums and every due alert is sent, once.

A private `redis-server` (tests/private_services.py) is the broker, so the test can kill it; the
worker is a real `celery worker` (tests/workers.py) on the test database, the beat a real Celery beat
with the project's schedule at a 2-second interval (a minute is too long for a test), and alerts go
over SMTP to a sink (tests/smtp_sink.py).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from billing.models import BudgetAlert
from billing.services import budget_create
from metrics.models import DirtyHour, HourlyRollup, UsageEvent
from tests import workers
from tests.budget_support import costing, fast_passwords, ingest
from tests.private_services import PrivateRedis, kill_group
from tests.rollup_support import HOUR, assert_rollups_equal_raw, hour_of, no_dirty_marks, post_events, random_event
from tests.smtp_sink import smtp_sink
from tests.workers import ROOT, celery_worker, pool_children, worker_log

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

WAIT_SECONDS = 90
BEAT_SECONDS = 2.0
# The project's beat schedule (settings.CELERY_BEAT_SCHEDULE), every entry due every BEAT_SECONDS.
BEAT_SCRIPT = textwrap.dedent(f"""
    import sys
    from llmcost_project.celery import app
    app.conf.beat_schedule = {{
        name: {{**entry, "schedule": {BEAT_SECONDS}}} for name, entry in app.conf.beat_schedule.items()
    }}
    app.Beat(schedule=sys.argv[1], loglevel="INFO", max_interval=0.5).run()
""")


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    fast_passwords(settings)


def start_beat(env: dict, schedule: Path, log: Path) -> subprocess.Popen:
    with open(log, "a") as out:
        return subprocess.Popen([sys.executable, "-c", BEAT_SCRIPT, str(schedule)], cwd=ROOT,
                                env={**os.environ, "DATABASE_URL": workers.test_database_url(), **env},
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def backlog(rng: random.Random, *, hours: int, per_hour: int, now: datetime) -> list[dict]:
    """`per_hour` events in each of `hours` distinct past hours of the last 20 days."""
    chosen = rng.sample(range(1, 20 * 24), hours)
    return [random_event(rng, moment=hour_of(now) - k * HOUR + timedelta(seconds=rng.uniform(0, 3599.9)),
                         request_id=f"backlog-{k}-{j}", teams=("chatbot", "search"))
            for k in chosen for j in range(per_hour)]


def test_a_killed_worker_and_a_lost_queue_lose_no_rollup_and_no_alert(world, tmp_path):
    post_events(world.ingest, backlog(random.Random(5), hours=400, per_hour=3, now=datetime.now(UTC)))
    total_hours = DirtyHour.objects.count()
    assert total_hours == 400
    budget_create(organization=world.globex, team=world.globex_chatbot, amount_usd=Decimal(10), period="monthly")
    schedule, beat_log = tmp_path / "celerybeat-schedule", tmp_path / "beat.log"

    def logs() -> str:
        return f"--- worker ---\n{worker_log(worker)[-5000:]}\n--- beat ---\n{beat_log.read_text()[-3000:]}"

    def wait_until(condition, what: str, timeout: float = WAIT_SECONDS, interval: float = 0.1):
        deadline = time.monotonic() + timeout
        while not (value := condition()):
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout}s waiting for {what}\n{logs()}")
            if worker.poll() is not None:
                pytest.fail(f"the worker exited while waiting for {what}\n{logs()}")
            time.sleep(interval)
        return value

    with PrivateRedis() as redis_server, smtp_sink() as sink:
        env = {
            "CELERY_BROKER_URL": redis_server.url(0),
            "REDIS_URL": redis_server.url(1),
            "EMAIL_URL": sink.url,
            "BUDGET_SPEND_CACHE_SECONDS": "0",
            "SITE_URL": "https://cost.example.com",
            "BUDGET_FORECAST_ALERTS": "0",  # the threshold alert alone (forecasts: test_budget_forecast)
        }
        with celery_worker(concurrency=1, extra_env=env) as worker:
            [child] = pool_children(worker)
            beat = start_beat(env, schedule, beat_log)
            try:
                # The beat's rollup under way in the worker's only process: some hours done, not all.
                wait_until(lambda: 0 < DirtyHour.objects.count() < total_hours, "the rollup to be under way",
                           interval=0.005)
                os.kill(child, signal.SIGSTOP)  # frozen mid-rollup
                at_kill = DirtyHour.objects.count()
                kill_group(beat)
                redis_server.stop()  # SIGKILL, no persistence: the rollup's message and all queued work gone
                os.kill(child, signal.SIGKILL)
                assert 0 < at_kill < total_hours

                # Meanwhile another organization's alert falls due: no message about it exists anywhere.
                ingest(world.globex_token, costing("6"))
                assert BudgetAlert.objects.count() == 0 and sink.messages == []

                redis_server.start()  # back, empty
                beat = start_beat(env, schedule, beat_log)  # restarted on its schedule file
                # The same worker process reconnects to the restarted broker and takes the beat's new runs.
                wait_until(no_dirty_marks, "every dirty hour to be rolled up")
                received = sink.wait_for(1, timeout=WAIT_SECONDS)
                time.sleep(3 * BEAT_SECONDS)  # more beat runs: a second alert would be sent now
                received = sink.messages
                assert worker.poll() is None and child not in pool_children(worker)
                log, full_worker_log = logs(), worker_log(worker)
            finally:
                kill_group(beat)

    # The worker process that lost its broker reconnected by itself (no restart) and ran the new runs.
    assert "Connection to broker lost" in full_worker_log and full_worker_log.count("Connected to redis://") >= 2, log
    assert "signal 9 (SIGKILL)" in full_worker_log, log
    assert [m.subject for m in received] == ["[llmcost] Globex / chatbot: 50% of the monthly budget reached"], log
    assert received[0].rcpt_tos == ["boss@globex.test"]
    assert BudgetAlert.objects.count() == 1
    # Nothing lost or counted twice: every hour and day equals the raw sums.
    assert UsageEvent.objects.filter(organization=world.acme).count() == 1200
    acme_hours = HourlyRollup.objects.filter(organization=world.acme, is_team_total=True)
    assert acme_hours.values("start").distinct().count() == 400
    assert sum(acme_hours.values_list("requests", flat=True)) == 1200
    assert_rollups_equal_raw()
