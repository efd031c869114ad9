"""PostgreSQL goes away under a running web server: 503 with Retry-After, never a 500, and nothing lost.

The test starts a PostgreSQL cluster of its own (tests/private_services.py), migrates it, and runs
gunicorn on it (tests/live_server.py). It stops the cluster mid-run and starts it again: meanwhile
every request that needs the database is answered 503 with Retry-After (the API's error shape for
/api/ and /v1/, a plain page elsewhere), and the SDK keeps its events queued; afterwards the same
server process answers again by itself, and every event the SDK tracked is stored exactly once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import httpx
import psycopg2
import pytest
from metrics_client import SyncMetricsClient
from prometheus_client.parser import text_string_to_metric_families

from tests.live_server import LiveServer
from tests.private_services import PrivatePostgres, wait_until
from tests.workers import ROOT

pytestmark = pytest.mark.slow

SCRAPE_TOKEN = "scrape-token-for-fault-tests-0123456789"
CALL = {"model": "gpt-4o", "prompt_tokens": 1000, "output_tokens": 500, "latency_ms": 120.0}


def manage(env: dict, *args: str) -> str:
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, f"manage.py {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def stored_request_ids(pg: PrivatePostgres) -> dict[str, int]:
    with psycopg2.connect(pg.url()) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT request_id, count(*) FROM metrics_usageevent GROUP BY request_id")
        return dict(cursor.fetchall())


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text[:500]
    assert response.headers["Retry-After"] == "5"
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["status"] == "error" and "database" in body["message"], body


@pytest.fixture
def private_postgres():
    with PrivatePostgres() as pg:
        pg.create_database()
        env = {**os.environ, "DATABASE_URL": pg.url(), "REDIS_URL": "", "CELERY_BROKER_URL": "memory://"}
        manage(env, "migrate", "--no-input", "-v0")
        manage(env, "create_org", "acme")
        token = manage(env, "create_token", "acme", "--scopes", "ingest,read").strip().splitlines()[-1]
        yield pg, token


def test_ingest_answers_503_while_postgres_is_down_and_the_sdk_loses_nothing(private_postgres):
    pg, token = private_postgres
    server_env = {"DATABASE_URL": pg.url(), "REDIS_URL": "", "CELERY_BROKER_URL": "memory://",
                  "PROMETHEUS_SCRAPE_TOKEN": SCRAPE_TOKEN}
    with LiveServer(extra_env=server_env) as server:
        http = httpx.Client(base_url=server.url, timeout=10, headers={"Authorization": f"Bearer {token}"})
        client = SyncMetricsClient(base_url=server.url, api_key=token, batch_size=10, flush_interval=0.2,
                                   backoff_base=0.05, backoff_max=0.5, max_retries=2)
        tracked = []

        def track(count: int) -> None:
            for _ in range(count):
                request_id = f"pg-{uuid.uuid4().hex}"
                tracked.append(request_id)
                client.track_request(**CALL, request_id=request_id)

        try:
            track(15)
            assert client.flush(timeout=15) is True
            direct = f"direct-{uuid.uuid4().hex}"
            assert http.post("/api/v1/metrics/track", json={**CALL, "request_id": direct}).status_code == 200

            pg.stop("fast")

            # Every kind of request that needs the database: 503 + Retry-After, in the error shape.
            assert_unavailable(http.post("/api/v1/metrics/track", json=CALL))
            assert_unavailable(http.post("/api/v1/events", json={"events": [CALL, CALL]}))
            assert_unavailable(http.get("/api/v1/dashboard/metrics"))
            assert_unavailable(http.get("/api/v1/budget/check"))
            assert_unavailable(http.post("/api/v1/integrations/litellm", json=[]))
            page = httpx.get(f"{server.url}/o/acme/", cookies={"sessionid": "x" * 32}, timeout=10)
            assert page.status_code == 503 and page.headers["Retry-After"] == "5"
            assert page.headers["Content-Type"].startswith("text/html") and "Service unavailable" in page.text
            ready = httpx.get(f"{server.url}/readyz", timeout=10)
            assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
            assert " 500 " not in "\n".join(line for line in server.log().splitlines() if line.startswith("ACCESS"))

            # The SDK keeps tracking: its batches are answered 503 and stay queued.
            track(25)
            assert client.flush(timeout=1.5) is False
            assert client.stats.dropped == 0 and client.stats.rejected == 0
            assert client.pending > 0

            pg.start()

            # The same server process answers again by itself (CONN_HEALTH_CHECKS replaces the connection).
            wait_until(lambda: httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200,
                       what="readyz to answer 200 once PostgreSQL is back")
            track(10)
            assert client.flush(timeout=30) is True, client.stats
            assert client.stats.dropped == 0 and client.stats.rejected == 0
        finally:
            client.close(timeout=2)

        stored = stored_request_ids(pg)
        assert {rid: n for rid, n in stored.items() if rid in tracked} == dict.fromkeys(tracked, 1), \
            "every event tracked is stored exactly once"
        assert stored[direct] == 1 and len(stored) == len(tracked) + 1

        metrics = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {SCRAPE_TOKEN}"}, timeout=10)
        counted = sum(
            sample.value
            for family in text_string_to_metric_families(metrics.text) if family.name == "llmcost_degraded_operations"
            for sample in family.samples if sample.labels.get("dependency") == "database"
            and sample.name.endswith("_total")
        )
        assert counted >= 6, "every 503 is counted on /metrics"
        warnings = [line for line in server.log().splitlines() if "database unreachable" in line]
        assert 1 <= len(warnings) <= 3, "logged, but not once per request:\n" + "\n".join(warnings)
        assert "Traceback" not in server.log(), "an outage is not logged as an error per request"
        http.close()


def test_reserve_answers_as_each_budget_says_while_postgres_is_down(private_postgres):
    """A gateway that reserved before the outage gets its budgets' `on_error` answer, degraded,
    never a 500 or a hold; a token never seen gets 503; afterwards reservations work again."""
    pg, token = private_postgres
    env = {**os.environ, "DATABASE_URL": pg.url(), "REDIS_URL": "", "CELERY_BROKER_URL": "memory://"}
    manage(env, "create_team", "acme", "chatbot")
    manage(env, "create_team", "acme", "search")
    manage(env, "create_budget", "acme", "--team", "chatbot", "--amount", "1", "--period", "monthly", "--hard",
           "--on-error", "deny", "--name", "chatbot-deny")  # fmt: skip
    manage(env, "create_budget", "acme", "--team", "search", "--amount", "1", "--period", "monthly", "--hard",
           "--name", "search-allow")
    stranger = manage(env, "create_token", "acme", "--scopes", "ingest").strip().splitlines()[-1]
    server_env = {"DATABASE_URL": pg.url(), "REDIS_URL": "", "CELERY_BROKER_URL": "memory://"}
    with LiveServer(extra_env=server_env) as server:
        http = httpx.Client(base_url=server.url, timeout=10, headers={"Authorization": f"Bearer {token}"})

        def reserve(alias: str, bearer: str = token) -> httpx.Response:
            return http.post("/api/v1/budget/reserve", json={"team_alias": alias, "amount": "0.10"},
                             headers={"Authorization": f"Bearer {bearer}"})  # fmt: skip

        for alias in ("chatbot", "search"):
            answer = reserve(alias).json()
            assert answer["allowed"] is True and answer["degraded"] is False and answer["reservation_id"]

        pg.stop("fast")
        denied, allowed = reserve("chatbot"), reserve("search")
        assert denied.status_code == allowed.status_code == 200, denied.text
        assert denied.json()["degraded"] is True and denied.json()["allowed"] is False
        assert denied.json()["reservation_id"] is None
        assert [b["name"] for b in denied.json()["budgets"]] == ["chatbot-deny"]
        assert allowed.json()["degraded"] is True and allowed.json()["allowed"] is True
        unseen = reserve("never-reserved")  # no budgets known for it: the default, allow
        assert unseen.status_code == 200 and unseen.json() == {
            "allowed": True, "degraded": True, "reservation_id": None, "expires_at": None, "budgets": [],
        }  # fmt: skip
        assert_unavailable(reserve("chatbot", bearer=stranger))  # never recognised: nothing to answer for
        assert " 500 " not in "\n".join(line for line in server.log().splitlines() if line.startswith("ACCESS"))

        pg.start()
        wait_until(lambda: httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200,
                   what="readyz to answer 200 once PostgreSQL is back")
        answer = reserve("chatbot").json()
        assert answer["degraded"] is False and answer["allowed"] is True
        with psycopg2.connect(pg.url()) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM billing_reservation")
            assert cursor.fetchone()[0] == 3, "no hold was taken while the database was away"
        http.close()
