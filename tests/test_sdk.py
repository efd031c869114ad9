"""The Python SDK (sdk/, `metrics_client`) against a real server: gunicorn on the test database.

Every test starts its own server process (tests/live_server.py), so a test can stop it, restart
it, or start it with other limits. Failures a real server will not produce on demand (a 503 from
a load balancer, an answer lost after the server stored the batch) come from a proxy in between.
Scripts that must run as their own interpreter (exit-time flush, fork, the seed's examples) run
in a subprocess, with nothing but the SDK imported.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from decimal import Decimal

import pytest
from metrics_client import AsyncMetricsClient, MetricsClientError, MetricsValidationError, SyncMetricsClient

from metrics.models import BatchRun, CacheStat, UsageEvent
from tests.conftest import make_price
from tests.live_server import FaultProxy, LiveServer
from tests.smtp_sink import free_port
from tests.workers import ROOT

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

EVENTS = "/api/v1/events"
# test-model (conftest): 2 USD in, 8 USD out per million tokens; 1000 in + 500 out = 0.006 USD.
CALL = {"model": "test-model", "prompt_tokens": 1000, "output_tokens": 500, "latency_ms": 120.0}
CALL_COST = Decimal("0.006")
# Short waits between retries, so failure tests take seconds.
QUICK = {"backoff_base": 0.05, "backoff_max": 0.3}


@pytest.fixture
def server(world):
    with LiveServer() as live:
        yield live


@pytest.fixture
def make_client():
    """SyncMetricsClient factory; nothing leaves before flush() unless a test says otherwise."""
    made = []

    def make(base_url: str, api_key: str, **options) -> SyncMetricsClient:
        client = SyncMetricsClient(base_url=base_url, api_key=api_key, **{"flush_interval": 60.0, **QUICK, **options})
        made.append(client)
        return client

    yield make
    for client in made:
        client.close(timeout=2)


def stored_ids(organization) -> list[str]:
    return list(UsageEvent.objects.filter(organization=organization).values_list("request_id", flat=True))


def run_script(source: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `source` in a fresh interpreter of this venv (where `metrics_client` is installed)."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(source)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return done


def last_json_line(output: str) -> dict:
    return json.loads([line for line in output.splitlines() if line.startswith("{")][-1])


# --- batching -----------------------------------------------------------------------------------------


def test_it_sends_many_events_in_few_requests(world, server, make_client):
    client = make_client(server.url, world.ingest, batch_size=100)
    sent = {}
    for n in range(250):
        team = "chatbot" if n % 2 else "search"
        answer = client.track_request(**CALL, total_tokens=1500, user_id=f"user-{n % 5}", team_alias=team,
                                      cache_hit=n % 10 == 0, query_type="reasoning")
        assert answer["status"] == "queued"
        assert answer["tokens"] == 1500
        assert answer["cost"] is None  # priced by the server, later
        sent[answer["request_id"]] = (team, f"user-{n % 5}", n % 10 == 0)

    assert client.flush(timeout=60)

    assert server.requests("POST", EVENTS) == [200, 200, 200]  # 100 + 100 + 50
    events = UsageEvent.objects.filter(organization=world.acme).select_related("team")
    assert sorted(e.request_id for e in events) == sorted(sent)
    for event in events:
        assert (event.team.alias, event.user_id, event.cache_hit) == sent[event.request_id]
        assert event.cost == CALL_COST
        assert event.query_type == "reasoning"
    assert sum(e.cost for e in events) == 250 * CALL_COST
    assert client.stats.as_dict() == {"sent": 250, "duplicates": 0, "rejected": 0, "dropped": 0, "retries": 0,
                                      "failures": 0}


def test_one_client_is_shared_by_many_threads(world, server, make_client):
    client = make_client(server.url, world.ingest, batch_size=50, flush_interval=0.05)
    ids: list[str] = []

    def work(thread: int) -> None:
        for n in range(100):
            ids.append(client.track_request(**CALL, team_alias="chatbot", user_id=f"t{thread}-{n}")["request_id"])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert client.flush(timeout=60)

    assert sorted(stored_ids(world.acme)) == sorted(ids)
    assert len(set(ids)) == 800
    assert client.stats.sent == 800
    assert len(server.requests("POST", EVENTS)) >= 16  # at most 50 events per request


def test_close_sends_what_is_queued_and_later_calls_are_dropped(world, server, make_client):
    client = make_client(server.url, world.ingest)
    for _ in range(5):
        client.track_request(**CALL, team_alias="chatbot")
    client.track_cache_metrics(cache_hit=3, cache_miss=1, avg_lookup_time_ms=1.5, team_alias="chatbot")
    client.track_batch(batch_id="nightly-1", batch_size=5, total_tokens=7500, batch_cost=Decimal("0.03"),
                       batch_latency_ms=900, team_alias="chatbot")
    assert client.pending == 7
    assert UsageEvent.objects.count() == 0  # nothing is due yet: 60 s interval, 500 per batch

    assert client.close() is True

    assert UsageEvent.objects.filter(organization=world.acme, team=world.chatbot).count() == 5
    assert server.requests("POST", EVENTS) == [200]
    assert CacheStat.objects.get(organization=world.acme).cache_hit == 3
    assert BatchRun.objects.get(organization=world.acme, batch_id="nightly-1").batch_cost == Decimal("0.03")
    answer = client.track_request(**CALL)
    assert answer["status"] == "error"
    assert client.stats.dropped == 1


def test_the_interpreter_exit_sends_what_is_queued(world, server):
    done = run_script(
        """
        import json, sys
        from metrics_client import SyncMetricsClient

        client = SyncMetricsClient(flush_interval=3600)
        for n in range(7):
            client.track_request(model="test-model", prompt_tokens=100, output_tokens=50, team_alias="chatbot",
                                 request_id=f"exit-{n}")
        print(json.dumps({"pending": client.pending, "django": "django" in sys.modules}))
        # no flush(), no close(): the exit hook sends them
        """,
        env={"LLMCOST_BASE_URL": server.url, "LLMCOST_API_KEY": world.ingest},
    )
    assert last_json_line(done.stdout) == {"pending": 7, "django": False}
    assert sorted(stored_ids(world.acme)) == [f"exit-{n}" for n in range(7)]


def test_a_forked_child_starts_its_own_sender_and_leaves_the_parents_queue_alone(world, server):
    done = run_script(
        """
        import json, os, threading
        from metrics_client import SyncMetricsClient

        client = SyncMetricsClient(flush_interval=3600)
        client.track_request(model="test-model", team_alias="chatbot", request_id="parent-before-fork")
        assert client.flush(timeout=30)
        client.track_request(model="test-model", team_alias="chatbot", request_id="parent-queued")
        pid = os.fork()
        if pid == 0:
            senders = [t.name for t in threading.enumerate() if t.name == "metrics-client-sender"]
            pending = client.pending
            client.track_request(model="test-model", team_alias="chatbot", request_id="child")
            ok = client.flush(timeout=30)
            print(json.dumps({"child": client.stats.as_dict(), "senders": senders, "pending": pending, "ok": ok}),
                  flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        assert client.flush(timeout=30)
        print(json.dumps({"parent": client.stats.as_dict()}))
        """,
        env={"LLMCOST_BASE_URL": server.url, "LLMCOST_API_KEY": world.ingest},
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    child = next(line for line in lines if "child" in line)
    parent = next(line for line in lines if "parent" in line)
    assert child["senders"] == [] and child["pending"] == 0  # no thread, no inherited queue
    assert child["ok"] and child["child"]["sent"] == 1 and child["child"]["duplicates"] == 0
    assert parent["parent"]["sent"] == 2 and parent["parent"]["duplicates"] == 0
    assert sorted(stored_ids(world.acme)) == ["child", "parent-before-fork", "parent-queued"]


# --- retries --------------------------------------------------------------------------------------------


def test_it_waits_out_a_429_and_sends_again(world, make_client):
    with LiveServer(extra_env={"API_RATE_LIMIT": "2/s"}) as server:
        client = make_client(server.url, world.ingest, batch_size=6)
        ids = [client.track_request(**CALL, team_alias="chatbot")["request_id"] for _ in range(60)]
        started = time.monotonic()
        assert client.flush(timeout=60)
        elapsed = time.monotonic() - started
        statuses = server.requests("POST", EVENTS)

    assert statuses.count(200) == 10  # ten batches, each stored once
    assert statuses.count(429) >= 1
    assert elapsed >= 1.0  # Retry-After (1 s) was waited out, not the 0.05 s backoff
    assert sorted(stored_ids(world.acme)) == sorted(ids)
    # Each 429 was retried; waiting out Retry-After can also outlast the server's keep-alive, and
    # a send on the closed connection is one more (harmless) retry.
    assert statuses.count(429) <= client.stats.retries <= statuses.count(429) * 2
    assert client.stats.sent == 60 and client.stats.failures == 0


def test_it_retries_after_5xx_and_a_lost_answer_is_not_counted_twice(world, server, make_client):
    with FaultProxy(server.url) as proxy:
        client = make_client(proxy.url, world.ingest, batch_size=20)
        # A load balancer without its backend, then one with Retry-After, then the server stores the
        # batch but the answer is lost on the way back.
        proxy.fail(("status", 503, {}), ("status", 502, {"Retry-After": "0"}), ("drop",))
        ids = [client.track_request(**CALL, team_alias="chatbot")["request_id"] for _ in range(20)]
        assert client.flush(timeout=60)

        assert [outcome for _, _, outcome in proxy.seen] == ["503", "502", "dropped after 200", "200"]
        assert server.requests("POST", EVENTS) == [200, 200]
        assert sorted(stored_ids(world.acme)) == sorted(ids)
        assert client.stats.as_dict() == {"sent": 0, "duplicates": 20, "rejected": 0, "dropped": 0, "retries": 3,
                                          "failures": 0}

        # Waiting for the answer: the retry is answered as a duplicate, with the stored cost.
        proxy.fail(("drop",))
        answer = client.track_request(**CALL, team_alias="search", request_id="wait-1", wait=True)
    assert answer["status"] == "success"
    assert answer["duplicate"] is True
    assert answer["cost"] == CALL_COST
    assert UsageEvent.objects.filter(request_id="wait-1").count() == 1


def test_events_survive_the_server_going_down_and_are_stored_once(world, server, make_client):
    client = make_client(server.url, world.ingest, batch_size=10, flush_interval=0.05, max_retries=2)
    before = [client.track_request(**CALL, team_alias="chatbot")["request_id"] for _ in range(5)]
    assert client.flush(timeout=30)

    server.stop(crash=True)
    during = [client.track_request(**CALL, team_alias="search")["request_id"] for _ in range(25)]
    deadline = time.monotonic() + 20
    while client.stats.failures < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.stats.failures >= 2
    assert client.flush(timeout=0.5) is False
    assert client.pending == 25

    server.start()
    assert client.flush(timeout=60)

    stored = stored_ids(world.acme)
    assert sorted(stored) == sorted(before + during)  # every event, each once
    assert UsageEvent.objects.filter(team=world.search).count() == 25
    assert client.stats.sent == 30
    assert client.stats.dropped == 0 and client.stats.rejected == 0


def test_a_batch_over_the_servers_size_limit_is_split(world, make_client):
    with LiveServer(extra_env={"API_MAX_BODY_BYTES": "4096"}) as server:
        client = make_client(server.url, world.ingest, batch_size=40)
        ids = [client.track_request(**CALL, team_alias="chatbot", metadata={"note": "x" * 200})["request_id"]
               for _ in range(40)]
        assert client.flush(timeout=60)
        statuses = server.requests("POST", EVENTS)
    assert 413 in statuses
    assert sorted(stored_ids(world.acme)) == sorted(ids)
    assert client.stats.sent == 40 and client.stats.rejected == 0


# --- the bounded queue --------------------------------------------------------------------------------


def test_a_full_queue_drops_the_oldest_events_and_counts_them(world, server, make_client, caplog):
    client = make_client(server.url, world.ingest, max_queue_size=5)
    with caplog.at_level(logging.WARNING, logger="metrics_client"):
        for n in range(12):
            assert client.track_request(**CALL, team_alias="chatbot", request_id=f"q-{n:02}")["status"] == "queued"
    assert client.stats.dropped == 7
    assert client.pending == 5
    assert "queue full" in caplog.text

    assert client.flush(timeout=30)
    assert sorted(stored_ids(world.acme)) == [f"q-{n:02}" for n in range(7, 12)]


def test_while_the_server_is_down_the_queue_stays_bounded_and_keeps_the_newest(world, server, make_client):
    server.stop(crash=True)
    client = make_client(server.url, world.ingest, max_queue_size=5, batch_size=3, flush_interval=0.01,
                         max_retries=1)
    for n in range(20):
        client.track_request(**CALL, team_alias="chatbot", request_id=f"d-{n:02}")
        time.sleep(0.01)
    assert client.pending <= 5 + 3  # the queue, and the batch being tried
    server.start()
    assert client.flush(timeout=60)

    stored = set(stored_ids(world.acme))
    assert {f"d-{n:02}" for n in range(15, 20)} <= stored  # the newest always survive
    assert len(stored) + client.stats.dropped == 20
    assert client.stats.sent == len(stored) and client.stats.dropped >= 12


# --- errors: strict and default modes -----------------------------------------------------------------


def test_strict_mode_raises_on_a_bad_token(world, server, make_client):
    client = make_client(server.url, "lc_not_a_token", strict=True)
    assert client.track_request(**CALL)["status"] == "queued"  # nothing is known before sending
    with pytest.raises(MetricsClientError) as caught:
        client.flush(timeout=30)
    assert caught.value.status_code == 401

    with pytest.raises(MetricsClientError) as caught:
        client.track_request(**CALL, wait=True)
    assert caught.value.status_code == 401

    reader = make_client(server.url, world.read, strict=True)  # read scope only
    with pytest.raises(MetricsClientError) as caught:
        reader.track_request(**CALL, wait=True)
    assert caught.value.status_code == 403
    assert UsageEvent.objects.count() == 0


def test_strict_mode_raises_on_a_bad_field(world, server, make_client):
    client = make_client(server.url, world.ingest, strict=True)
    with pytest.raises(MetricsValidationError) as caught:
        client.track_request(model="test-model", prompt_tokens="many")
    assert caught.value.errors == {"prompt_tokens": ["must be an integer"]}
    with pytest.raises(MetricsValidationError) as caught:
        client.track_request(model="test-model", promt_tokens=5)
    assert caught.value.errors == {"promt_tokens": ["is not a known field"]}
    with pytest.raises(MetricsValidationError) as caught:
        client.track_request(prompt_tokens=5)
    assert caught.value.errors == {"model": ["is required"]}
    with pytest.raises(MetricsValidationError) as caught:
        client.track_batch(batch_id="b1")
    assert caught.value.errors == {"batch_size": ["is required"]}

    # Rules only the server knows: the batch stores the valid event, flush reports the other.
    client.track_request(model="test-model", prompt_tokens=-5, team_alias="chatbot", request_id="negative")
    client.track_request(**CALL, team_alias="chatbot", request_id="fine")
    with pytest.raises(MetricsValidationError) as caught:
        client.flush(timeout=30)
    assert "prompt_tokens" in caught.value.errors
    assert caught.value.request_ids == ("negative",)
    assert stored_ids(world.acme) == ["fine"]

    with pytest.raises(MetricsValidationError) as caught:
        client.track_request(model="test-model", prompt_tokens=-5, wait=True)
    assert caught.value.status_code == 400
    assert "prompt_tokens" in caught.value.errors
    assert client.stats.rejected == 6


def nested_dict(depth: int) -> dict:
    """A dict `depth` levels deep: deeper than Python's recursion limit lets json encode."""
    value: dict = {}
    for _ in range(depth):
        value = {"inner": value}
    return value


class Unusable:
    """A value whose own comparison fails, as a buggy caller-defined type's might."""

    def __eq__(self, other):
        raise TypeError("cannot compare")

    __hash__ = object.__hash__


def test_values_python_cannot_convert_are_field_errors_not_exceptions(world, make_client, caplog):
    # Nothing here reaches the network: the values are refused before anything is queued.
    caplog.set_level(logging.WARNING, logger="metrics_client")
    client = make_client(f"http://127.0.0.1:{free_port()}", world.ingest)
    assert client.track_request("test-model", latency_ms=10**400)["errors"] == {"latency_ms": ["is too large"]}
    assert client.track_request("test-model", response_cost=10**400)["errors"] == {
        "response_cost": ["is too large"]}
    assert client.track_request("test-model", metadata=nested_dict(5000))["errors"] == {
        "metadata": ["is nested too deeply"]}
    answer = client.track_request("test-model", status=Unusable())
    assert answer["status"] == "error"
    assert answer["errors"]["status"][0].startswith("is not usable (TypeError")
    assert client.track_cache_metrics(1, 2, avg_lookup_time_ms=10**400)["errors"] == {
        "avg_lookup_time_ms": ["is too large"]}
    assert client.track_batch("b1", 10, batch_latency_ms=10**400)["errors"] == {
        "batch_latency_ms": ["is too large"]}
    assert client.stats.rejected == 6
    assert client.pending == 0
    assert caplog.text.count("not recorded") == 6

    strict = make_client(f"http://127.0.0.1:{free_port()}", world.ingest, strict=True)
    with pytest.raises(MetricsValidationError) as caught:
        strict.track_request("test-model", latency_ms=10**400, metadata=nested_dict(5000))
    assert caught.value.errors == {"latency_ms": ["is too large"], "metadata": ["is nested too deeply"]}
    with pytest.raises(MetricsValidationError) as caught:
        strict.track_batch("b1", 10, status=Unusable())
    assert list(caught.value.errors) == ["status"]
    assert strict.stats.rejected == 2


def test_default_mode_never_raises(world, server, make_client, caplog):
    caplog.set_level(logging.WARNING, logger="metrics_client")
    bad_token = make_client(server.url, "lc_not_a_token")
    assert bad_token.track_request(**CALL)["status"] == "queued"
    assert bad_token.flush(timeout=30) is True  # settled: refused, nothing left to send
    assert bad_token.stats.rejected == 1
    answer = bad_token.track_request(**CALL, wait=True)
    assert answer["status"] == "error" and "401" in answer["message"]
    assert "401" in caplog.text

    client = make_client(server.url, world.ingest)
    assert client.track_request(model="test-model", prompt_tokens="many")["errors"] == {
        "prompt_tokens": ["must be an integer"]}
    assert client.track_request(model="test-model", bogus=1)["status"] == "error"
    assert client.track_request(model="test-model", prompt_tokens=-5, team_alias="chatbot")["status"] == "queued"
    assert client.flush(timeout=30) is True
    answer = client.track_request(model="test-model", prompt_tokens=-5, wait=True)
    assert answer["status"] == "error" and "prompt_tokens" in answer["errors"]
    assert client.stats.rejected == 4
    assert UsageEvent.objects.count() == 0

    nowhere = make_client(f"http://127.0.0.1:{free_port()}", world.ingest, max_retries=1)
    assert nowhere.track_request(**CALL)["status"] == "queued"
    assert nowhere.flush(timeout=1) is False
    answer = nowhere.track_request(**CALL, wait=True)  # cannot be sent now: queued instead
    assert answer["status"] == "queued" and "no answer from the server" in answer["message"]
    assert nowhere.close(timeout=0.5) is False
    assert nowhere.stats.dropped == 2
    assert nowhere.track_request(**CALL)["status"] == "error"  # closed
    assert nowhere.stats.dropped == 3


def test_without_a_sender_thread_flush_and_close_keep_to_their_timeout(world, make_client, monkeypatch):
    # At interpreter shutdown no thread can start (Thread.start raises RuntimeError), so flush()
    # and close() send in the caller's thread. With the server away, the default retries would
    # take well over `timeout`; the exit hook must not hang the process that long.
    start_thread = threading.Thread.start

    def start_unless_sender(thread):
        if thread.name == "metrics-client-sender":
            raise RuntimeError("can't create new thread at interpreter shutdown")
        start_thread(thread)

    monkeypatch.setattr(threading.Thread, "start", start_unless_sender)
    client = make_client(f"http://127.0.0.1:{free_port()}", world.ingest, max_retries=5, backoff_base=0.5,
                         backoff_max=30.0)
    for _ in range(3):
        assert client.track_request(**CALL)["status"] == "queued"
    assert client._sender._thread is None  # the inline path is the one under test

    started = time.monotonic()
    assert client.flush(timeout=2) is False
    assert time.monotonic() - started < 3
    assert client.pending == 3  # kept for a later try, not lost

    started = time.monotonic()
    assert client.close(timeout=2) is False
    assert time.monotonic() - started < 3
    assert client.stats.dropped == 3
    assert client.stats.sent == 0


# --- configuration ------------------------------------------------------------------------------------


def test_it_reads_the_address_and_token_from_the_environment(world, server, make_client, monkeypatch):
    monkeypatch.setenv("LLMCOST_BASE_URL", server.url)
    monkeypatch.setenv("LLMCOST_API_KEY", world.ingest)
    from_env = SyncMetricsClient()
    assert from_env.base_url == server.url
    assert from_env.track_request(**CALL, team_alias="chatbot", wait=True)["status"] == "success"
    from_env.close()

    # Arguments win over the environment.
    monkeypatch.setenv("LLMCOST_BASE_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("LLMCOST_API_KEY", "lc_not_a_token")
    explicit = make_client(server.url, world.ingest)
    assert explicit.track_request(**CALL, team_alias="chatbot", wait=True)["status"] == "success"
    env_token = SyncMetricsClient(base_url=server.url)
    assert "401" in env_token.track_request(**CALL, wait=True)["message"]
    env_token.close()
    assert UsageEvent.objects.filter(organization=world.acme).count() == 2


# --- reads ----------------------------------------------------------------------------------------------


def test_reads_need_a_read_token_and_see_only_their_organization(world, server, make_client):
    writer = make_client(server.url, world.ingest)
    acme_ids = []
    for n in range(6):
        acme_ids.append(writer.track_request(
            model="test-model", prompt_tokens=1000 * (n + 1), output_tokens=500, user_id="bob" if n % 2 else "alice",
            team_alias="chatbot" if n < 4 else "search", status="error" if n == 5 else "success",
        )["request_id"])
    assert writer.flush(timeout=30)
    globex_writer = make_client(server.url, world.globex_token)
    globex_ids = [globex_writer.track_request(**CALL, team_alias="chatbot")["request_id"] for _ in range(2)]
    assert globex_writer.flush(timeout=30)
    costs = [Decimal(2 * 1000 * (n + 1) + 8 * 500) / 1_000_000 for n in range(6)]

    reader = make_client(server.url, world.read)
    metrics = reader.get_dashboard_metrics(time_range_hours=24)
    assert metrics["total_requests"] == 6
    assert metrics["total_cost"] == sum(costs)
    assert reader.get_dashboard_metrics(team_alias="search")["total_requests"] == 2
    assert reader.get_dashboard_metrics(model_filter="test-model")["total_requests"] == 6

    recent = reader.get_recent_requests(limit=3)
    assert [row["request_id"] for row in recent] == acme_ids[:-4:-1]  # newest first
    assert {row["user_id"] for row in reader.get_recent_requests(limit=50, user_id="bob")} == {"bob"}
    assert [row["request_id"] for row in reader.get_recent_requests(status="error")] == [acme_ids[5]]
    assert len(reader.get_recent_requests(limit=50, min_cost=costs[3])) == 3
    assert writer.check_budget(team_alias="chatbot")["allowed"] is True

    # An ingest-only token, a wrong token: refused, even outside strict mode (a read has no fallback).
    with pytest.raises(MetricsClientError) as caught:
        writer.get_dashboard_metrics()
    assert caught.value.status_code == 403
    with pytest.raises(MetricsClientError) as caught:
        make_client(server.url, "lc_not_a_token").get_recent_requests()
    assert caught.value.status_code == 401

    # The other organization's token sees its own events only, whatever it asks for.
    outsider = make_client(server.url, world.globex_token)
    assert outsider.get_dashboard_metrics()["total_requests"] == 2
    assert sorted(row["request_id"] for row in outsider.get_recent_requests(limit=100)) == sorted(globex_ids)
    with pytest.raises(MetricsClientError) as caught:
        outsider.get_recent_requests(limit=100, team_alias="search")  # acme's team: no such team for globex
    assert caught.value.status_code == 404
    with pytest.raises(MetricsClientError) as caught:
        outsider.get_dashboard_metrics(team_alias="search")
    assert caught.value.status_code == 404


# --- the async twin -------------------------------------------------------------------------------------


def test_the_async_client_has_the_same_methods_as_coroutines(world, server):
    async def main():
        async with AsyncMetricsClient(base_url=server.url, api_key=world.both, flush_interval=60.0) as client:
            queued = [await client.track_request(**CALL, team_alias="chatbot", user_id="async") for _ in range(5)]
            assert await client.flush(timeout=30)
            answer = await client.track_request(**CALL, team_alias="search", wait=True)
            cache = await client.track_cache_metrics(cache_hit=150, cache_miss=50, avg_lookup_time_ms=2.5,
                                                     team_alias="chatbot", wait=True)
            batch = await client.track_batch(batch_id="batch_123", batch_size=10, total_tokens=5000,
                                             batch_cost=Decimal("0.125"), batch_latency_ms=3500, team_alias="chatbot")
            metrics = await client.get_dashboard_metrics(time_range_hours=24)
            recent = await client.get_recent_requests(limit=3)
            budget = await client.check_budget(team_alias="chatbot")
        return client, queued, answer, cache, batch, metrics, recent, budget

    client, queued, answer, cache, batch, metrics, recent, budget = asyncio.run(main())

    assert {q["status"] for q in queued} == {"queued"}
    assert answer["status"] == "success" and answer["cost"] == CALL_COST and answer["tokens"] == 1500
    assert cache["status"] == "success"
    assert batch == {"status": "queued", "message": "Queued; sent in the background", "batch_id": "batch_123"}
    assert metrics["total_requests"] == 6 and metrics["total_cost"] == 6 * CALL_COST
    assert recent[0]["request_id"] == answer["request_id"]
    assert budget["allowed"] is True
    assert sorted(stored_ids(world.acme)) == sorted([q["request_id"] for q in queued] + [answer["request_id"]])
    assert CacheStat.objects.get(organization=world.acme).cache_hit == 150
    assert BatchRun.objects.get(organization=world.acme).batch_cost == Decimal("0.125")  # sent at close
    assert client.stats.sent == 8


def test_it_sends_cache_writes_and_other_usage_sync_and_async(world, server, make_client):
    usage = {"input_audio_tokens": 300, "output_reasoning_tokens": 200}
    client = make_client(server.url, world.both)
    answer = client.track_request(**CALL, cache_write_tokens=100, usage=usage, team_alias="chatbot",
                                  request_id="sync-wait", wait=True)
    client.track_request(**CALL, cache_write_tokens=50, usage={"output_audio_tokens": 10}, team_alias="chatbot",
                         request_id="sync-queued")
    assert client.flush(timeout=30)

    async def main():
        async with AsyncMetricsClient(base_url=server.url, api_key=world.both, flush_interval=60.0) as aio:
            waited = await aio.track_request(**CALL, cache_write_tokens=100, usage=usage, team_alias="chatbot",
                                             request_id="async-wait", wait=True)
            await aio.track_request(**CALL, usage={"input_image_tokens": 5}, team_alias="chatbot",
                                    request_id="async-queued")
            assert await aio.flush(timeout=30)
            return waited

    waited = asyncio.run(main())

    assert answer["status"] == waited["status"] == "success"
    stored = {e.request_id: e for e in UsageEvent.objects.filter(organization=world.acme)}
    assert (stored["sync-wait"].cache_write_tokens, stored["sync-wait"].usage) == (100, usage)
    assert (stored["sync-queued"].cache_write_tokens, stored["sync-queued"].usage) == (50, {"output_audio_tokens": 10})
    assert (stored["async-wait"].cache_write_tokens, stored["async-wait"].usage) == (100, usage)
    assert stored["async-queued"].usage == {"input_image_tokens": 5}


@pytest.mark.parametrize(
    "usage, message",
    [
        ("lots", "must be a dict"),
        ({"input_audio_tokens": "300"}, "input_audio_tokens must be an integer"),
        ({"input_audio_tokens": 1.5}, "input_audio_tokens must be a whole number"),
        ({"input_audio_tokens": -1}, "input_audio_tokens must not be negative"),
        ({"input_audio_tokens": True}, "input_audio_tokens must be an integer"),
        ({"": 1}, "keys must be non-empty strings"),
    ],
)
def test_it_checks_usage_before_queueing(world, make_client, usage, message):
    client = make_client("http://127.0.0.1:9", world.ingest, strict=True)  # nothing is sent
    with pytest.raises(MetricsValidationError) as caught:
        client.track_request(**CALL, usage=usage)
    assert list(caught.value.errors) == ["usage"]
    assert message in caught.value.errors["usage"][0]
    assert client.stats.rejected == 1


def test_the_server_names_a_usage_key_it_does_not_know(world, server, make_client):
    client = make_client(server.url, world.ingest, strict=True)
    with pytest.raises(MetricsValidationError) as caught:
        client.track_request(**CALL, usage={"input_smell_tokens": 3}, wait=True)
    assert caught.value.status_code == 400
    assert "usage.input_smell_tokens" in caught.value.errors
    assert stored_ids(world.acme) == []


# --- the seed's examples, as written ------------------------------------------------------------------

SEED_EXAMPLES = '''
from metrics_client import SyncMetricsClient

client = SyncMetricsClient(base_url="http://localhost:8000")

# Track after model inference
result = client.track_request(
    model="models/gemini-2.5-flash",
    prompt_tokens=100,
    output_tokens=1746,
    total_tokens=1846,
    latency_ms=13596.617,
    user_id="krrish@berri.ai",
    team_alias="internal-chatbot-team",
    cache_hit=False,
    query_type="reasoning"
)

client.track_cache_metrics(
    cache_hit=150,
    cache_miss=50,
    avg_lookup_time_ms=2.5,
    team_alias="internal-chatbot-team"
)

client.track_batch(
    batch_id="batch_123",
    batch_size=10,
    total_tokens=5000,
    batch_cost=0.125,
    batch_latency_ms=3500,
    team_alias="internal-chatbot-team"
)

from metrics_client import SyncMetricsClient

# Initialize once at startup
metrics_client = SyncMetricsClient(base_url="http://localhost:8000")

# After your model inference completes
def get_model_response(user_query):
    import time
    import uuid

    start_time = time.time()
    request_id = str(uuid.uuid4())

    # Your model inference code
    response = model.invoke(user_query)

    latency_ms = (time.time() - start_time) * 1000

    # Track to metrics backend
    try:
        metrics_client.track_request(
            model="models/gemini-2.5-flash",
            prompt_tokens=len(user_query.split()),
            output_tokens=len(response.split()),
            total_tokens=len(user_query.split()) + len(response.split()),
            latency_ms=latency_ms,
            user_id="user@example.com",
            request_id=request_id,
            team_alias="your-team",
            cache_hit=False
        )
    except Exception as e:
        print(f"Failed to track metrics: {e}")

    return response

# In your model selection module (model_selector.py)

from metrics_client import SyncMetricsClient
import time
import uuid

class ModelSelector:
    def __init__(self):
        self.metrics_client = SyncMetricsClient(
            base_url="http://localhost:8000"
        )

    def select_and_invoke(self, query, user_id, team_alias):
        request_id = str(uuid.uuid4())
        start_time = time.time()

        # Your logic to select model
        model = self.select_best_model(query)

        # Invoke model
        response = self.invoke_model(model, query)

        latency_ms = (time.time() - start_time) * 1000

        # Track metrics
        self.metrics_client.track_request(
            model=model,
            prompt_tokens=len(query.split()),
            output_tokens=len(response.split()),
            total_tokens=len(query.split()) + len(response.split()),
            latency_ms=latency_ms,
            user_id=user_id,
            request_id=request_id,
            team_alias=team_alias,
            status="success"
        )

        return response
'''

# Stand-ins for the LLM the seed's examples call, then what the test checks.
SEED_DRIVER = '''
class _Model:
    def invoke(self, query):
        return "four words of answer"

class _Selector(ModelSelector):
    def select_best_model(self, query):
        return "test-model"

    def invoke_model(self, model, query):
        return "an answer in six words here"

model = _Model()
get_model_response("how much does this cost")
_Selector().select_and_invoke("pick a model for me", user_id="carol", team_alias="chatbot")

answer = client.track_request(model="models/gemini-2.5-flash", prompt_tokens=100, output_tokens=1746,
                              total_tokens=1846, latency_ms=13596.617, user_id="krrish@berri.ai",
                              team_alias="internal-chatbot-team", cache_hit=False, query_type="reasoning",
                              wait=True)

import json, sys
print(json.dumps({"result": result, "answer": answer, "django": "django" in sys.modules}, default=str))
# No flush: the seed's examples never call one; the exit hook sends what is queued.
'''


def test_the_seeds_examples_work_as_written(world, server):
    make_price("gemini-2.5-flash", input="0.30", output="2.50", provider="google")
    source = SEED_EXAMPLES.replace("http://localhost:8000", server.url) + SEED_DRIVER
    done = run_script(source, env={"LLMCOST_API_KEY": world.ingest})
    out = last_json_line(done.stdout)
    assert "Failed to track metrics" not in done.stdout
    assert out["django"] is False

    result = out["result"]
    assert result["status"] == "queued" and result["tokens"] == 1846
    answer = out["answer"]  # the seed's "Expected Response", when asked to wait for it
    assert answer["status"] == "success" and answer["message"] == "Metrics tracked successfully"
    assert answer["tokens"] == 1846 and Decimal(answer["cost"]) == Decimal("0.004395")

    seed_call = UsageEvent.objects.select_related("team").get(request_id=result["request_id"])
    assert (seed_call.model_requested, seed_call.prompt_tokens, seed_call.output_tokens) == (
        "models/gemini-2.5-flash", 100, 1746)
    assert (seed_call.user_id, seed_call.team.alias, seed_call.query_type) == (
        "krrish@berri.ai", "internal-chatbot-team", "reasoning")
    assert seed_call.cost == Decimal("0.004395")
    assert seed_call.latency_ms == pytest.approx(13596.617)
    helper_call = UsageEvent.objects.select_related("team").get(user_id="user@example.com")
    assert (helper_call.team.alias, helper_call.prompt_tokens, helper_call.output_tokens) == ("your-team", 5, 4)
    selector_call = UsageEvent.objects.select_related("team").get(user_id="carol")
    assert (selector_call.team, selector_call.model, selector_call.status) == (world.chatbot, "test-model", "success")
    assert selector_call.cost == Decimal(2 * 5 + 8 * 6) / 1_000_000
    assert UsageEvent.objects.filter(organization=world.acme).count() == 4
    assert CacheStat.objects.get(organization=world.acme).cache_miss == 50
    run = BatchRun.objects.get(organization=world.acme, batch_id="batch_123")
    assert (run.batch_size, run.total_tokens, run.batch_cost) == (10, 5000, Decimal("0.125"))
