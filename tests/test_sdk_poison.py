"""The SDK's queue never jams: a record the server fails on is dropped, the records behind it arrive.

The server here is a stand-in for a broken one (a stdlib http.server in a thread): it answers 500
to any batch that contains a marked request id (or batch id), and otherwise answers like the real
API and remembers what it stored. A real llmcost server does not fail on an event on demand; the
SDK's handling of the real server's answers is tested in tests/test_sdk.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from metrics_client import AsyncMetricsClient, SyncMetricsClient

pytestmark = pytest.mark.slow

CALL = {"model": "test-model", "prompt_tokens": 1000, "output_tokens": 500, "latency_ms": 120.0}
# Short waits between retries, and few of them, so each test takes a second or two.
QUICK = {"backoff_base": 0.02, "backoff_max": 0.1, "max_retries": 2, "flush_interval": 60.0}


class BrokenServer:
    """Answers 500 to a batch containing a poison id, or to everything while `fail_all` is set."""

    def __init__(self) -> None:
        self.poison: set[str] = set()
        self.fail_all = False
        self.recover_after: int | None = None  # fail_all ends once this many requests were answered
        self.stored: Counter[str] = Counter()  # request or batch id -> times stored
        self.answers: list[tuple[str, int, int]] = []  # (path, records in the request, status)
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.broken = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="broken-server", daemon=True)

    def answer(self, path: str, body) -> tuple[int, dict]:
        if path == "/api/v1/events":
            ids = [event["request_id"] for event in body["events"]]
        elif path == "/api/v1/metrics/batch":
            ids = [body["batch_id"]]
        else:
            return 404, {"status": "error", "message": "Not found."}
        with self.lock:
            failing = self.fail_all or bool(self.poison.intersection(ids))
            self.answers.append((path, len(ids), 500 if failing else 200))
            if self.recover_after is not None and len(self.answers) >= self.recover_after:
                self.fail_all = False
            if failing:
                return 500, {"status": "error", "message": "Internal server error."}
            duplicate = [self.stored[i] > 0 for i in ids]
            self.stored.update(ids)
        if path == "/api/v1/metrics/batch":
            return 200, {"status": "success", "batch_id": ids[0], "duplicate": duplicate[0]}
        results = [{"index": n, "request_id": i, "duplicate": d, "cost": 0.006}
                   for n, (i, d) in enumerate(zip(ids, duplicate, strict=True))]
        return 200, {"status": "success", "accepted": duplicate.count(False), "duplicates": duplicate.count(True),
                     "rejected": [], "results": results}

    def __enter__(self) -> BrokenServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        broken: BrokenServer = self.server.broken  # type: ignore[attr-defined]
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        status, answer = broken.answer(self.path, body)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        pass


@pytest.fixture
def broken():
    with BrokenServer() as server:
        yield server


def ids(prefix: str, count: int) -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"{prefix}-{run}-{n}" for n in range(count)]


def assert_poison_dropped_and_others_stored_once(broken, stats, caplog, good: list[str], poison: str) -> None:
    assert broken.stored == Counter(good), "every good event stored exactly once, the poison one never"
    assert stats.sent == len(good)
    assert stats.failures == 1 and stats.dropped == 0 and stats.rejected == 0
    dropped = [r.getMessage() for r in caplog.records if poison in r.getMessage()]
    assert dropped and "not sent" in dropped[0] and "500" in dropped[0], caplog.text


def test_it_drops_the_one_event_the_server_fails_on_and_sends_the_rest(broken, caplog):
    caplog.set_level(logging.INFO, logger="metrics_client")
    request_ids = ids("p", 40)
    poison = request_ids[13]
    broken.poison.add(poison)
    client = SyncMetricsClient(base_url=broken.url, api_key="lc_test", batch_size=40, **QUICK)
    try:
        for request_id in request_ids:
            client.track_request(**CALL, request_id=request_id)
        assert client.flush(timeout=20) is True
        good = [i for i in request_ids if i != poison]
        assert_poison_dropped_and_others_stored_once(broken, client.stats, caplog, good, poison)
        # The search is a halving, not an event at a time: a few dozen requests, not one per event.
        assert len(broken.answers) < 30, broken.answers

        # The queue moves on: what is tracked afterwards is sent as usual.
        later = ids("later", 5)
        for request_id in later:
            client.track_request(**CALL, request_id=request_id)
        assert client.flush(timeout=10) is True
        assert all(broken.stored[i] == 1 for i in later)
    finally:
        client.close(timeout=2)


def test_the_async_client_drops_the_poison_event_too(broken, caplog):
    caplog.set_level(logging.INFO, logger="metrics_client")
    request_ids = ids("a", 9)
    poison = request_ids[0]  # the first: found before anything else is stored
    broken.poison.add(poison)

    async def run():
        async with AsyncMetricsClient(base_url=broken.url, api_key="lc_test", batch_size=9, **QUICK) as client:
            for request_id in request_ids:
                await client.track_request(**CALL, request_id=request_id)
            assert await client.flush(timeout=20) is True
            return client.stats

    stats = asyncio.run(run())
    assert_poison_dropped_and_others_stored_once(broken, stats, caplog, request_ids[1:], poison)


def test_a_server_that_fails_on_everything_loses_nothing(broken):
    broken.fail_all = True
    request_ids = ids("all", 16)
    client = SyncMetricsClient(base_url=broken.url, api_key="lc_test", batch_size=16, **QUICK)
    try:
        for request_id in request_ids:
            client.track_request(**CALL, request_id=request_id)
        assert client.flush(timeout=2) is False  # kept and retried, never dropped
        assert client.stats.dropped == 0 and client.stats.sent == 0
        assert client.pending == 16
        tries = len(broken.answers)
        assert tries < 150, "a failing server is not sent a request per event per round"

        broken.fail_all = False  # fixed: everything arrives, once
        assert client.flush(timeout=10) is True
        assert broken.stored == Counter(request_ids)
        assert client.stats.sent == 16 and client.stats.dropped == 0
    finally:
        client.close(timeout=2)


# The first two rounds against a server failing on everything: 14 requests (the batch of 16 with its
# retries, halves down to the first event, its retries, the rest kept), then 10 more (the first
# event set aside, the second searched down to and given its retries). Recovering after any of them,
# in particular just after a lone event's last failed retry, the server must get every event once.
@pytest.mark.parametrize("recover_after", range(1, 25))
def test_a_server_that_recovers_after_any_answer_loses_nothing(broken, recover_after):
    broken.fail_all = True
    broken.recover_after = recover_after
    request_ids = ids("recover", 16)
    client = SyncMetricsClient(base_url=broken.url, api_key="lc_test", batch_size=16, **QUICK)
    try:
        for request_id in request_ids:
            client.track_request(**CALL, request_id=request_id)
        assert client.flush(timeout=10) is True
        assert broken.stored == Counter(request_ids), broken.answers
        assert client.stats.sent == 16 and client.stats.dropped == 0
    finally:
        client.close(timeout=2)


def test_a_batch_run_the_server_fails_on_does_not_block_the_events_behind_it(broken, caplog):
    caplog.set_level(logging.INFO, logger="metrics_client")
    [batch_id] = ids("batch", 1)
    broken.poison.add(batch_id)
    request_ids = ids("behind", 5)
    client = SyncMetricsClient(base_url=broken.url, api_key="lc_test", **QUICK)
    try:
        client.track_batch(batch_id=batch_id, batch_size=10, total_tokens=5000, batch_cost=0.125,
                           batch_latency_ms=3500)
        for request_id in request_ids:
            client.track_request(**CALL, request_id=request_id)
        assert client.flush(timeout=20) is True
        assert broken.stored == Counter(request_ids)
        assert client.stats.failures >= 1 and client.stats.dropped == 0
        assert any(batch_id in r.getMessage() and "not sent" in r.getMessage() for r in caplog.records), caplog.text
    finally:
        client.close(timeout=2)
