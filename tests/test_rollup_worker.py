"""Rollups computed by REAL Celery workers: exact totals, a worker SIGKILLed mid-rollup, two workers at once,
and events arriving while a worker rolls up.

Each test starts `celery worker` processes (tests/workers.py) on the test database. With Redis, the workers
use a Redis database of their own (see rollup_support.isolated_broker_url) so that another test run sharing
the server cannot take these tasks. Every wait is bounded and fails with the worker logs.
"""

from __future__ import annotations

import ast
import os
import random
import re
import signal
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.db import connection

from metrics.models import DailyRollup, DirtyDay, DirtyHour, HourlyRollup, UsageEvent
from metrics.tasks import rollups_refresh
from tests.rollup_support import (
    DAY,
    HOUR,
    assert_dashboard_equals_raw,
    assert_rollups_equal_raw,
    day_of,
    expected_rollups,
    get_dashboard,
    hour_of,
    iso,
    isolated_broker_url,
    no_dirty_marks,
    post_events,
    random_event,
    random_events,
    raw_rows,
    rollup_table,
)
from tests.workers import celery_worker, pool_children, worker_log

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

WAIT_SECONDS = 60


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def broker():
    """(extra_env for the workers, broker URL to publish to, or None for the configured one)."""
    url = isolated_broker_url(settings.CELERY_BROKER_URL)
    if url is None:
        yield {}, None
        return
    app = rollups_refresh.app
    with app.connection_for_write(url) as connection:  # start from an empty queue: no stale messages
        connection.default_channel.queue_purge(app.conf.task_default_queue)
    yield {"CELERY_BROKER_URL": url}, url


def enqueue(broker_url):
    if broker_url is None:
        return rollups_refresh.delay()
    with rollups_refresh.app.connection_for_write(broker_url) as connection:
        return rollups_refresh.apply_async(connection=connection)


def logs(*workers) -> str:
    return "\n".join(f"--- worker {i} log ---\n{worker_log(w)[-4000:]}" for i, w in enumerate(workers, 1))


def wait_until(condition, *workers, what: str, timeout: float = WAIT_SECONDS, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}\n{logs(*workers)}")
        for w in workers:
            if w.poll() is not None:
                pytest.fail(f"a worker exited while waiting for {what}\n{logs(*workers)}")
        time.sleep(interval)


def succeeded(worker, task_id: str) -> bool:
    return f"rollups_refresh[{task_id}] succeeded" in worker_log(worker)


def received_count(worker, task_id: str) -> int:
    return worker_log(worker).count(f"rollups_refresh[{task_id}] received")


def spread_over_hours(rng, *, hours: int, per_hour: int, days: int, prefix: str, now: datetime) -> list[dict]:
    """`per_hour` events in each of `hours` distinct past hours chosen among the last `days` days."""
    chosen = rng.sample(range(1, days * 24), hours)
    return [
        random_event(rng, moment=hour_of(now) - k * HOUR + timedelta(seconds=rng.uniform(0, 3599.9)),
                     request_id=f"{prefix}-{k}-{j}")
        for k in chosen for j in range(per_hour)
    ]


def assert_unmarked_buckets_equal_raw() -> None:
    """Wherever no mark says "stale", hourly and daily rows equal the raw sums (marked buckets may lag)."""
    dirty_hours = set(DirtyHour.objects.values_list("organization_id", "hour"))
    # A day is stale while it is marked, or while any of its hours is (the hour marks its day when rolled up).
    dirty_days = set(DirtyDay.objects.values_list("organization_id", "day")) | {(o, day_of(h)) for o, h in dirty_hours}
    for model_class, bucket_of, dirty in ((HourlyRollup, hour_of, dirty_hours), (DailyRollup, day_of, dirty_days)):
        expected = expected_rollups(bucket_of, daily=model_class is DailyRollup)
        want = {k: v for k, v in expected.items() if (k[0], k[1]) not in dirty}
        got, count = rollup_table(model_class)
        assert count == len(got), f"{model_class.__name__}: duplicate rows"
        got = {k: v for k, v in got.items() if (k[0], k[1]) not in dirty}
        assert set(got) == set(want), f"{model_class.__name__}: rows differ outside the dirty buckets"
        for key, w in want.items():
            assert (got[key]["requests"], got[key]["cost"], got[key]["total_tokens"]) == (
                w["requests"], w["cost"], w["total_tokens"]), f"{model_class.__name__} {key} is stale but unmarked"


def test_it_rolls_up_in_a_real_worker_to_exactly_the_raw_sums(world, broker):
    env, url = broker
    rng = random.Random(11)
    now = datetime.now(UTC) - timedelta(seconds=2)
    post_events(world.ingest, random_events(rng, count=300, newest=now, span=timedelta(hours=70), prefix="a",
                                            models=("test-model", "test-model-mini", "mystery-model")))
    post_events(world.globex_token, random_events(rng, count=60, newest=now, span=timedelta(hours=70),
                                                  prefix="g", models=("test-model",)))
    assert DirtyHour.objects.count() > 60

    with celery_worker(extra_env=env) as worker:
        task = enqueue(url)
        wait_until(lambda: succeeded(worker, task.id), worker, what="rollups_refresh to succeed")

    assert no_dirty_marks()
    assert_rollups_equal_raw()
    for token, organization in ((world.read, world.acme), (world.globex_token, world.globex)):
        for start, end in ((now - 3 * DAY, now + timedelta(seconds=1)), (day_of(now) - 2 * DAY, day_of(now))):
            body = get_dashboard(token, start=iso(start), end=iso(end))
            assert_dashboard_equals_raw(body, raw_rows(organization=organization, start=start, end=end),
                                        label=f"worker {organization.slug}")


def test_it_loses_and_doubles_nothing_when_the_worker_is_killed_mid_rollup(world, broker):
    env, url = broker
    rng = random.Random(23)
    now = datetime.now(UTC)
    post_events(world.ingest, spread_over_hours(rng, hours=400, per_hour=3, days=20, prefix="k", now=now))
    total_hours = DirtyHour.objects.count()
    assert total_hours == 400

    with celery_worker(concurrency=1, extra_env=env) as worker:
        [child] = pool_children(worker)
        task = enqueue(url)
        # Poll until the rollup is under way: some, not all, hours recomputed; then freeze and kill the child.
        remaining = wait_until(
            lambda: (lambda n: n if 0 < n < total_hours else 0)(DirtyHour.objects.count()),
            worker, what="the rollup to be under way", interval=0.005,
        )
        os.kill(child, signal.SIGSTOP)  # frozen: the count below is the state it is killed in
        at_kill = DirtyHour.objects.count()
        os.kill(child, signal.SIGKILL)
        assert 0 < at_kill <= remaining < total_hours, (at_kill, remaining)
        assert not succeeded(worker, task.id)

        # acks_late + task_reject_on_worker_lost: the pool replaces the child and the same message is
        # delivered again; the rerun finishes the job. (Observed on both the filesystem broker and Redis:
        # the task is redelivered by itself; nothing is enqueued a second time here.)
        wait_until(lambda: succeeded(worker, task.id), worker, what="the redelivered rollups_refresh to succeed")
        wait_until(no_dirty_marks, worker, what="every DirtyHour and DirtyDay to be cleared")
        log = worker_log(worker)
        assert received_count(worker, task.id) == 2, log[-3000:]
        assert re.search(r"signal 9|SIGKILL|WorkerLostError", log), log[-3000:]
        assert child not in pool_children(worker)

    # Nothing lost or counted twice: every hour and day equals the raw sums, one row per key.
    assert UsageEvent.objects.count() == 1200
    assert HourlyRollup.objects.filter(is_team_total=True).values("start").distinct().count() == 400
    assert sum(HourlyRollup.objects.filter(is_team_total=True).values_list("requests", flat=True)) == 1200
    assert sum(DailyRollup.objects.filter(is_team_total=True).values_list("requests", flat=True)) == 1200
    assert_rollups_equal_raw()


def test_it_ends_with_exactly_the_right_rows_when_two_workers_refresh_at_once(world, broker):
    env, url = broker
    rng = random.Random(37)
    now = datetime.now(UTC)
    post_events(world.ingest, spread_over_hours(rng, hours=150, per_hour=2, days=10, prefix="c1", now=now))
    post_events(world.globex_token, spread_over_hours(rng, hours=60, per_hour=2, days=10, prefix="c2", now=now))

    with celery_worker(name="w1", extra_env=env) as w1, celery_worker(name="w2", extra_env=env) as w2:
        tasks = [enqueue(url), enqueue(url)]
        wait_until(lambda: all(succeeded(w1, t.id) or succeeded(w2, t.id) for t in tasks), w1, w2,
                   what="both rollups_refresh tasks to succeed")
        # Each worker ran one of them (prefetch 1, concurrency 1): they did run side by side.
        ran = [sum(received_count(w, t.id) for t in tasks) for w in (w1, w2)]
        assert ran == [1, 1], (ran, logs(w1, w2))

        # Wherever no mark remains the rows are already right; a bucket one worker had to skip (the other
        # held it) stays marked for the next scheduled run, which is what a third run here stands for.
        assert_unmarked_buckets_equal_raw()
        if not no_dirty_marks():
            third = enqueue(url)
            wait_until(lambda: succeeded(w1, third.id) or succeeded(w2, third.id), w1, w2,
                       what="a third rollups_refresh")

    assert no_dirty_marks()
    assert_rollups_equal_raw()


def test_it_never_leaves_a_stale_hour_unmarked_while_events_arrive_during_a_worker_rollup(world, broker):
    # Real concurrency between ingest (this process) and the rollup (the worker): every event stored while
    # its hour is being recomputed must leave that hour dirty, so no bucket is ever stale without a mark.
    env, url = broker
    rng = random.Random(41)
    now = datetime.now(UTC)
    post_events(world.ingest, spread_over_hours(rng, hours=150, per_hour=2, days=10, prefix="base", now=now))
    hours = sorted(set(DirtyHour.objects.values_list("hour", flat=True)))

    with celery_worker(extra_env=env) as worker:
        task = enqueue(url)
        wait_until(lambda: DirtyHour.objects.count() < len(hours), worker, what="the rollup to start",
                   interval=0.01)
        sent = 0
        while not succeeded(worker, task.id) and sent < 300:
            batch = [random_event(rng, moment=rng.choice(hours) + timedelta(seconds=rng.uniform(0, 3599.9)),
                                  request_id=f"live-{sent + i}") for i in range(5)]
            post_events(world.ingest, batch)
            sent += len(batch)
        wait_until(lambda: succeeded(worker, task.id), worker, what="the first rollups_refresh to succeed")

        assert_unmarked_buckets_equal_raw()

        second = enqueue(url)
        wait_until(lambda: succeeded(worker, second.id), worker, what="the second rollups_refresh to succeed")

    assert no_dirty_marks()
    assert UsageEvent.objects.count() == 300 + sent
    assert_rollups_equal_raw()


def test_it_keeps_accepting_events_while_a_worker_rolls_up(world, broker):
    # Gateways post events all the time; a rollup run (up to its 50 s budget, e.g. after a reprice or an
    # outage) must not hold ingest up until it ends. Several POSTs must complete while it is running.
    env, url = broker
    rng = random.Random(43)
    now = datetime.now(UTC)
    # PostgreSQL rolls up dozens of hours per statement: it needs a bigger backlog to be caught running.
    hours, days = (200, 10) if connection.vendor == "sqlite" else (1500, 70)
    post_events(world.ingest, spread_over_hours(rng, hours=hours, per_hour=1, days=days, prefix="base", now=now))
    total = DirtyHour.objects.count()

    with celery_worker(extra_env=env) as worker:
        task = enqueue(url)
        wait_until(lambda: DirtyHour.objects.count() < total, worker, what="the rollup to start", interval=0.01)
        during, slowest = 0, 0.0
        while not succeeded(worker, task.id) and during < 20:
            started = time.monotonic()
            post_events(world.ingest, [random_event(rng, moment=now - HOUR, request_id=f"live-{during}")])
            slowest = max(slowest, time.monotonic() - started)
            if not succeeded(worker, task.id):
                during += 1
        wait_until(lambda: succeeded(worker, task.id), worker, what="rollups_refresh to succeed")

    assert during >= 3, (
        f"only {during} POSTs completed while the rollup ran (the slowest took {slowest:.2f}s): "
        "ingest waits for the whole rollup"
    )


def test_it_shares_a_backlog_between_the_pool_processes_and_recomputes_each_hour_once(world, broker):
    # A backlog of more than a chunk: on PostgreSQL the beat run queues helper runs (ROLLUP_WORKERS in
    # all) that split the chunks; SQLite has one writer at a time, so one run does it all.
    env, url = broker
    rng = random.Random(47)
    now = datetime.now(UTC)
    post_events(world.ingest, spread_over_hours(rng, hours=400, per_hour=1, days=20, prefix="s", now=now))
    marked = DirtyHour.objects.count()
    assert marked == 400
    runs = settings.ROLLUP_WORKERS if connection.vendor == "postgresql" else 1

    with celery_worker(concurrency=2, extra_env=env) as worker:
        enqueue(url)
        results = wait_until(lambda: (lambda r: r if len(r) == runs else None)(finished_runs(worker)), worker,
                             what=f"{runs} rollups_refresh runs to succeed")
        if not no_dirty_marks():  # a day re-marked while another run held it: the next beat run's work
            third = enqueue(url)
            wait_until(lambda: succeeded(worker, third.id), worker, what="one more rollups_refresh")

    # Every hour was recomputed by exactly one of the runs.
    assert sum(result["hours"] for result in results) == marked, results
    assert no_dirty_marks()
    assert_rollups_equal_raw()


def finished_runs(worker) -> list[dict]:
    """What each succeeded rollups_refresh returned, from the worker's log."""
    found = re.findall(r"rollups_refresh\[[0-9a-f-]+\] succeeded in [0-9.]+s: (\{[^}]*\})", worker_log(worker))
    return [ast.literal_eval(text) for text in found]
