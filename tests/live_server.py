"""A real llmcost web server for client tests, and a proxy that fails the way networks do.

`LiveServer` runs gunicorn (the production web process) in a subprocess on the test database,
shared with the test as Celery worker tests share it (tests/workers.py): a file SQLite database
or the PostgreSQL test database, so use it from `django_db(transaction=True)` tests. It can be
stopped (gracefully or killed) and started again on the same port, as a deploy or a crash would.

`FaultProxy` forwards requests to a server. For the requests a test chooses it instead answers
like a load balancer whose backend is away (503, 502, with or without Retry-After), or forwards
the request and then drops the connection before the answer, so the server has stored what the
client never heard about.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.smtp_sink import free_port
from tests.workers import ROOT, test_database_url

ACCESS_LOG_FORMAT = 'ACCESS %(m)s %(U)s %(s)s'


class LiveServer:
    def __init__(self, *, extra_env: dict | None = None, port: int | None = None, threads: int = 4):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.threads = threads
        self.env = {
            **os.environ,
            "DATABASE_URL": test_database_url(),
            # Each server start sees the database as it is now, not through another test's cache.
            "BUDGET_SPEND_CACHE_SECONDS": "0",
            "CACHE_KEY_PREFIX": f"llmcost-live-{uuid.uuid4().hex[:12]}",
            "PYTHONUNBUFFERED": "1",  # the access log is read while the server runs
            **(extra_env or {}),
        }
        self.log_path = Path(self.env["LLMCOST_VAR_DIR"]) / f"gunicorn-{self.port}-{uuid.uuid4().hex[:6]}.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> LiveServer:
        log = open(self.log_path, "a")  # noqa: SIM115 -- the server writes to it until stopped
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "llmcost_project.wsgi:application",
             "--bind", f"127.0.0.1:{self.port}", "--workers", "1", "--worker-class", "gthread",
             "--threads", str(self.threads), "--graceful-timeout", "5",
             "--access-logfile", "-", "--access-logformat", ACCESS_LOG_FORMAT, "--error-logfile", "-"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"gunicorn did not start on {self.url}:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        return self

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, *, crash: bool = False) -> None:
        """Stop the server: SIGTERM (graceful), or SIGKILL to the whole process group (a crash)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGKILL if crash else signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def requests(self, method: str, path: str, *, settle: float = 0.3) -> list[int]:
        """Statuses of the requests the server answered for `method path`, in order (from its access log).

        gunicorn logs a request just after answering it, so the log is read until it has not
        grown for `settle` seconds.
        """
        seen, quiet_since = None, time.monotonic()
        while True:
            log = self.log()
            if log != seen:
                seen, quiet_since = log, time.monotonic()
            elif time.monotonic() - quiet_since >= settle:
                break
            time.sleep(0.05)
        statuses = []
        for line in seen.splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[0] == "ACCESS" and parts[1] == method and parts[2] == path:
                statuses.append(int(parts[3]))
        return statuses

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
              "host", "content-length", "date", "server"}


class FaultProxy:
    """Forwards to `upstream`; `fail(...)` queues what to do instead for the next requests, in order.

    A fault is ("status", code, headers) — answer without forwarding — or ("drop",) — forward,
    then close the connection without answering. `seen` lists (method, path, what happened).
    """

    def __init__(self, upstream: str):
        host_port = upstream.split("://", 1)[1].rstrip("/")
        self.upstream_host, port = host_port.rsplit(":", 1)
        self.upstream_port = int(port)
        self.faults: deque[tuple] = deque()
        self.seen: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _ProxyHandler)
        self._server.daemon_threads = True
        self._server.proxy = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)

    def fail(self, *faults: tuple) -> None:
        with self._lock:
            self.faults.extend(faults)

    def _next_fault(self) -> tuple | None:
        with self._lock:
            return self.faults.popleft() if self.faults else None

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()


class _ProxyHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def log_message(self, format, *args):
        pass

    def _handle(self):
        proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fault = proxy._next_fault()
        if fault is not None and fault[0] == "status":
            _, code, headers = fault
            proxy.seen.append((self.command, self.path, str(code)))
            self._answer(code, dict(headers), b'{"status": "error", "message": "backend unavailable"}')
            return
        upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
        try:
            headers = {name: value for name, value in self.headers.items() if name.lower() not in HOP_BY_HOP}
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            response = upstream.getresponse()
            data = response.read()
        finally:
            upstream.close()
        if fault is not None and fault[0] == "drop":
            proxy.seen.append((self.command, self.path, f"dropped after {response.status}"))
            self.close_connection = True  # the client never hears the answer
            return
        proxy.seen.append((self.command, self.path, str(response.status)))
        kept = {name: value for name, value in response.getheaders() if name.lower() not in HOP_BY_HOP}
        self._answer(response.status, kept, data)

    def _answer(self, code: int, headers: dict, data: bytes) -> None:
        self.send_response(code)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
