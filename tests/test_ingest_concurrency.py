"""Retries of the same request ids arriving at the same moment are stored once, and each is answered.

Real threads with their own database connections, so the unique constraint and ON CONFLICT do the
work (not a check-then-insert that only looks right one request at a time).
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from django.db import connection

from metrics.models import BatchRun, UsageEvent
from teams.models import Team
from tests.conftest import api, event

THREADS = 8
IDS = [f"retry-{i}" for i in range(50)]

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """The world's four users are created with passwords: hash them cheaply in these tests."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def in_threads(work, n=THREADS):
    """Run work(i) in n threads released together; return their results (exceptions re-raised)."""
    barrier = threading.Barrier(n)
    results, errors = [None] * n, []

    def run(i):
        try:
            barrier.wait(timeout=10)
            results[i] = work(i)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results


def test_it_stores_concurrent_batches_of_the_same_ids_once(world):
    token = world.ingest

    def send(i):
        # Each thread sends the ids in its own order, naming a team nobody has created yet.
        ids = IDS[i:] + IDS[:i]
        items = [event(request_id=rid, team_alias="race-team", latency_ms=i) for rid in ids]
        client = api(token)
        client.raise_request_exception = False
        response = client.post("/api/v1/events", items, format="json")
        return response.status_code, response.json()

    answers = in_threads(send)

    assert [status for status, _ in answers] == [200] * THREADS, answers
    assert UsageEvent.objects.filter(request_id__in=IDS).count() == len(IDS)
    assert UsageEvent.objects.count() == len(IDS)
    # Every id was answered "stored" exactly once across all threads, "duplicate" every other time.
    kept = Counter(r["request_id"] for _, body in answers for r in body["results"] if not r["duplicate"])
    assert kept == Counter(IDS)
    assert sum(body["accepted"] for _, body in answers) == len(IDS)
    assert sum(body["duplicates"] for _, body in answers) == len(IDS) * (THREADS - 1)
    assert Team.objects.filter(organization=world.acme, alias="race-team").count() == 1
    assert set(UsageEvent.objects.values_list("team__alias", flat=True)) == {"race-team"}


def test_it_stores_concurrent_single_events_with_one_id_once(world):
    token = world.ingest

    def send(i):
        client = api(token)
        client.raise_request_exception = False
        response = client.post("/api/v1/metrics/track", event(request_id="one-call", latency_ms=i), format="json")
        return response.status_code, response.json()

    answers = in_threads(send)

    assert [status for status, _ in answers] == [200] * THREADS, answers
    assert sorted(body["duplicate"] for _, body in answers) == [False] + [True] * (THREADS - 1)
    assert {body["cost"] for _, body in answers} == {0.006}
    assert UsageEvent.objects.filter(request_id="one-call").count() == 1


def test_it_stores_the_same_ids_once_per_organization_under_concurrency(world):
    tokens = [world.ingest, world.globex_token] * (THREADS // 2)

    def send(i):
        client = api(tokens[i])
        client.raise_request_exception = False
        response = client.post("/api/v1/events", [event(request_id=rid) for rid in IDS[:10]], format="json")
        return response.status_code

    assert in_threads(send) == [200] * THREADS
    assert UsageEvent.objects.filter(organization=world.acme).count() == 10
    assert UsageEvent.objects.filter(organization=world.globex).count() == 10


def test_it_stores_a_concurrently_repeated_batch_id_once(world):
    token = world.ingest

    def send(i):
        client = api(token)
        client.raise_request_exception = False
        body = {"batch_id": "batch_123", "batch_size": 10 + i, "team_alias": "batch-race"}
        response = client.post("/api/v1/metrics/batch", body, format="json")
        return response.status_code, response.json()

    answers = in_threads(send)

    assert [status for status, _ in answers] == [200] * THREADS, answers
    assert sorted(body["duplicate"] for _, body in answers) == [False] + [True] * (THREADS - 1)
    assert BatchRun.objects.count() == 1
    assert Team.objects.filter(alias="batch-race").count() == 1
