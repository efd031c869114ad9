"""Redis goes away under a running web server: ingest, reads and the budget check keep working.

A private `redis-server` (tests/private_services.py) is the server's cache; the test kills it
mid-run and starts it again. The web server is gunicorn on the test database (tests/live_server.py).
While Redis is away every request must still be answered as usual (the caches and the per-token rate
limit fail open), quickly, with the degradation counted on /metrics, logged without a line per
request, and reported by /readyz; once Redis is back the caches are used again by themselves.
"""

from __future__ import annotations

import time
import uuid
from decimal import Decimal

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from billing.services import budget_create
from metrics.models import UsageEvent
from tests.budget_support import fast_passwords
from tests.conftest import event
from tests.live_server import LiveServer
from tests.private_services import PrivateRedis, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SCRAPE_TOKEN = "scrape-token-for-fault-tests-0123456789"


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    fast_passwords(settings)


def degraded_count(server: LiveServer, dependency: str = "redis") -> float:
    """The sum of llmcost_degraded_operations_total for `dependency`, as /metrics reports it."""
    response = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {SCRAPE_TOKEN}"}, timeout=10)
    assert response.status_code == 200, response.text[:500]
    total = 0.0
    for family in text_string_to_metric_families(response.text):
        if family.name == "llmcost_degraded_operations":
            total += sum(s.value for s in family.samples
                         if s.name.endswith("_total") and s.labels.get("dependency") == dependency)
    return total


def cache_keys(redis_server: PrivateRedis, server: LiveServer) -> list[bytes]:
    with redis_server.client(db=1) as client:
        return client.keys(f"{server.env['CACHE_KEY_PREFIX']}:*")


def test_ingest_reads_and_budget_checks_keep_working_while_redis_is_down(world):
    budget_create(organization=world.acme, team=world.chatbot, amount_usd=Decimal(100), period="monthly")
    with PrivateRedis() as redis_server:
        env = {
            "REDIS_URL": redis_server.url(1),
            "CELERY_BROKER_URL": redis_server.url(0),
            "PROMETHEUS_SCRAPE_TOKEN": SCRAPE_TOKEN,
            "BUDGET_SPEND_CACHE_SECONDS": "30",  # the budget check and ingest answers read the cache
        }
        with LiveServer(extra_env=env) as server:
            http = httpx.Client(base_url=server.url, timeout=10)
            ingest = {"Authorization": f"Bearer {world.ingest}"}
            read = {"Authorization": f"Bearer {world.both}"}

            # Redis up: the rate limiter and the caches write to it.
            assert http.post("/api/v1/metrics/track", json=event(), headers=ingest).status_code == 200
            assert http.get("/readyz").json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}
            assert cache_keys(redis_server, server), "the rate limiter's counters live in Redis"
            assert degraded_count(server) == 0

            redis_server.stop()

            request_ids = [f"redis-down-{uuid.uuid4().hex[:8]}-{n}" for n in range(30)]
            started = time.monotonic()
            for request_id in request_ids[:20]:
                before = time.monotonic()
                response = http.post("/api/v1/metrics/track", json=event(request_id=request_id), headers=ingest)
                assert response.status_code == 200, response.text
                assert response.json()["request_id"] == request_id
                assert time.monotonic() - before < 2, "a down Redis costs milliseconds, not seconds"
            batch = http.post("/api/v1/events", json={"events": [event(request_id=r) for r in request_ids[20:]]},
                              headers=ingest)
            assert batch.status_code == 200 and batch.json()["accepted"] == 10, batch.text
            budget = http.get("/api/v1/budget/check", params={"team_alias": "chatbot"}, headers=read)
            assert budget.status_code == 200 and budget.json()["allowed"] is True, budget.text
            dashboard = http.get("/api/v1/dashboard/metrics", params={"time_range_hours": 24}, headers=read)
            assert dashboard.status_code == 200, dashboard.text
            assert dashboard.json()["total_requests"] == 31
            recent = http.get("/api/v1/requests/recent", params={"limit": 5}, headers=read)
            assert recent.status_code == 200 and len(recent.json()) == 5, recent.text
            assert time.monotonic() - started < 20

            ready = http.get("/readyz")
            assert ready.status_code == 200, "ingest works: the process stays in the load balancer"
            body = ready.json()
            assert body["status"] == "degraded" and body["checks"]["database"] == "ok"
            assert body["checks"]["redis"].startswith("error: "), body

            assert degraded_count(server) >= 20, "every degraded operation is counted"
            assert set(UsageEvent.objects.filter(request_id__in=request_ids).values_list("request_id", flat=True)) \
                == set(request_ids)
            warnings = [line for line in server.log().splitlines() if "redis unreachable" in line]
            assert 1 <= len(warnings) <= 3, "logged, but not once per request:\n" + "\n".join(warnings)

            # Redis back (empty, as after a crash): within a second the caches are used again.
            redis_server.start()
            wait_until(lambda: http.get("/readyz").json()["status"] == "ok", what="readyz to report ok again")
            time.sleep(1.1)  # the cache skips Redis for a second after its last failure
            assert http.post("/api/v1/metrics/track", json=event(), headers=ingest).status_code == 200
            assert cache_keys(redis_server, server), "the rate limiter writes to Redis again"
            counted = degraded_count(server)
            for _ in range(3):
                assert http.post("/api/v1/metrics/track", json=event(), headers=ingest).status_code == 200
                assert http.get("/api/v1/budget/check", params={"team_alias": "chatbot"},
                                headers=read).status_code == 200
            assert degraded_count(server) == counted, "nothing degraded once Redis answers"
            http.close()
