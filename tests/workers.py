"""Real Celery workers for tests: separate processes on the configured broker and test database.

The embedded run uses SQLite (a file test database) and kombu's filesystem broker; the CI run
uses PostgreSQL and Redis. Either way the worker is a real `celery worker` process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def test_database_url() -> str:
    """DATABASE_URL naming the database this test run is using (the test database)."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        name = db["NAME"]
        if name == ":memory:" or "mode=memory" in str(name):
            raise RuntimeError("worker tests need a file SQLite test database")
        return f"sqlite:///{name}"
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


@contextmanager
def celery_worker(*, concurrency: int = 1, name: str = "w1", extra_env: dict | None = None, ready_timeout=30):
    """Start `celery worker` (prefork pool) and yield the Popen; stop it afterwards whatever happened."""
    env = {**os.environ, "DATABASE_URL": test_database_url(), **(extra_env or {})}
    log = open(Path(env["LLMCOST_VAR_DIR"]) / f"worker-{name}-{os.getpid()}.log", "w+")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "llmcost_project", "worker", "--pool", "prefork",
         "--concurrency", str(concurrency), "--hostname", f"{name}@%h", "--loglevel", "INFO",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + ready_timeout
        while "ready." not in _read(log):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"celery worker did not start:\n{_read(log)[-3000:]}")
            time.sleep(0.2)
        process.log = log  # type: ignore[attr-defined]
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()


def worker_log(process) -> str:
    return _read(process.log)


def pool_children(process) -> list[int]:
    """PIDs of the prefork pool's child processes (the ones that run tasks)."""
    out = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


def _read(log) -> str:
    log.flush()
    with open(log.name) as f:
        return f.read()
