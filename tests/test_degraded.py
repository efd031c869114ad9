"""Degraded dependencies, in process: the fail-open cache on a Redis that is not there, and which
database errors mean "unavailable" (503) rather than a bug (500).

The end-to-end outages, with real servers started and stopped, are in tests/test_faults_*.py.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

import psycopg2
import pytest
from django.db import InterfaceError, OperationalError
from prometheus_client.parser import text_string_to_metric_families

from llmcost_project.cache import FailOpenRedisCache
from llmcost_project.db import database_unavailable
from metrics.models import UsageEvent
from tests.budget_support import fast_passwords
from tests.conftest import api, event
from tests.smtp_sink import free_port
from tests.workers import ROOT

SCRAPE_TOKEN = "scrape-token-for-tests-0123456789"


def nowhere() -> str:
    """A Redis URL where nothing listens: connections are refused, as with Redis stopped."""
    return f"redis://127.0.0.1:{free_port()}/0"


@pytest.fixture
def redis_away(settings):
    fast_passwords(settings)
    settings.CACHES = {"default": {"BACKEND": "llmcost_project.cache.FailOpenRedisCache", "LOCATION": nowhere(),
                                   "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}}}
    settings.PROMETHEUS_SCRAPE_TOKEN = SCRAPE_TOKEN
    settings.PROMETHEUS_MULTIPROC_DIR = ""


def degraded_redis_operations(client) -> float:
    body = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {SCRAPE_TOKEN}").content.decode()
    return sum(sample.value for family in text_string_to_metric_families(body)
               if family.name == "llmcost_degraded_operations" for sample in family.samples
               if sample.name.endswith("_total") and sample.labels.get("dependency") == "redis")


def test_an_unreachable_redis_is_a_cache_that_forgets_at_once():
    backend = FailOpenRedisCache(nowhere(), {"OPTIONS": {"socket_connect_timeout": 0.5}})
    started = time.monotonic()
    assert backend.get("k", "default") == "default"
    backend.set("k", 1)
    assert backend.get_many(["k"]) == {}
    assert backend.has_key("k") is False
    assert backend.add("k", 1) is True  # stored, then forgotten
    with pytest.raises(ValueError, match="not found"):
        backend.incr("k")  # as for a missing key: the rate limit's counter starts again
    assert backend.delete("k") is False
    assert backend.set_many({"a": 1, "b": 2}) == ["a", "b"]  # the keys not stored
    assert backend.get_or_set("k", 5) == 5
    assert time.monotonic() - started < 1


@pytest.mark.django_db
def test_ingest_reads_and_the_rate_limit_work_without_redis_and_say_so(world, redis_away, client):
    before = degraded_redis_operations(client)
    for n in range(5):
        response = api(world.ingest).post("/api/v1/metrics/track", event(request_id=f"no-redis-{n}"), format="json")
        assert response.status_code == 200, response.content
    assert api(world.both).get("/api/v1/budget/check", {"team_alias": "chatbot"}).status_code == 200
    assert api(world.both).get("/api/v1/dashboard/metrics").json()["total_requests"] == 5
    assert UsageEvent.objects.filter(request_id__startswith="no-redis-").count() == 5
    assert degraded_redis_operations(client) >= before + 5


@pytest.mark.django_db
def test_readyz_is_degraded_but_ready_without_redis(redis_away, settings, client):
    settings.REDIS_URL = nowhere()
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "degraded",
                               "checks": {"database": "ok", "redis": "error: ConnectionError"}}


# --- which database errors are an outage -------------------------------------------------------------


def wrapped(driver_error: Exception, kind=OperationalError) -> Exception:
    """The driver's error as Django raises it (django.db.utils.DatabaseErrorWrapper)."""
    error = kind(*driver_error.args)
    error.__cause__ = driver_error
    return error


def test_a_refused_postgresql_connection_is_an_outage():
    with pytest.raises(psycopg2.OperationalError) as refused:
        psycopg2.connect(host="127.0.0.1", port=free_port(), dbname="x", user="x", connect_timeout=2)
    assert database_unavailable(wrapped(refused.value))
    assert database_unavailable(InterfaceError("connection already closed"))


def test_a_locked_sqlite_database_is_an_outage_but_an_overflow_is_a_bug(tmp_path):
    path = tmp_path / "db.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError) as locked:
        sqlite3.connect(path, timeout=0, isolation_level=None).execute("BEGIN IMMEDIATE")
    assert database_unavailable(wrapped(locked.value))

    with pytest.raises(sqlite3.OperationalError) as overflow:
        holder.execute("SELECT sum(x) FROM (SELECT 9223372036854775807 AS x UNION ALL SELECT 1)")
    assert not database_unavailable(wrapped(overflow.value)), "an overflow stays a 500: retrying cannot help"
    with pytest.raises(sqlite3.OperationalError) as missing:
        holder.execute("SELECT * FROM no_such_table")
    assert not database_unavailable(wrapped(missing.value))
    holder.close()


def test_with_redis_url_set_the_cache_fails_open(tmp_path):
    """The settings module configures the fail-open backend whenever REDIS_URL is set."""
    script = ("import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'llmcost_project.settings'); "
              "django.setup(); from django.core.cache import caches; cache = caches['default']; "
              "print(type(cache).__name__, cache.get('x', 'miss'), cache.add('x', 1))")
    env = {**os.environ, "REDIS_URL": nowhere(), "LLMCOST_VAR_DIR": str(tmp_path), "DEBUG": "false",
           "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["FailOpenRedisCache", "miss", "True"]
    assert "redis unreachable" in result.stderr  # logged


class DatabaseAwayMiddleware:
    """Stands for a middleware that reads the database (a session save, say) while it is away: it
    connects to a PostgreSQL port where nothing listens, through Django's own backend."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        from django.db.utils import ConnectionHandler

        away = ConnectionHandler({"default": {"ENGINE": "django.db.backends.postgresql", "HOST": "127.0.0.1",
                                              "PORT": free_port(), "NAME": "x", "USER": "x",
                                              "OPTIONS": {"connect_timeout": 2}}})
        away["default"].ensure_connection()
        return self.get_response(request)


@pytest.mark.django_db
def test_a_database_error_in_a_middleware_is_a_503_too(settings):
    from django.test import Client

    settings.MIDDLEWARE = [*settings.MIDDLEWARE[:2], f"{__name__}.DatabaseAwayMiddleware", *settings.MIDDLEWARE[2:]]
    client = Client(raise_request_exception=False)

    api_answer = client.get("/api/v1/dashboard/metrics")
    assert api_answer.status_code == 503 and api_answer["Retry-After"] == "5"
    assert api_answer.json() == {"status": "error",
                                 "message": "The database is temporarily unavailable; try again shortly."}
    page = client.get("/accounts/login/")
    assert page.status_code == 503 and page["Retry-After"] == "5"
    assert page["Content-Type"].startswith("text/html") and b"Service unavailable" in page.content
