"""Private Redis and PostgreSQL servers for the fault tests, started and stopped by the tests themselves.

The machine's shared servers (port 5432 and 6379) are never touched: each fault test runs its own
`redis-server` or its own PostgreSQL cluster (`initdb` + `pg_ctl` in a temporary directory, trust
authentication) on a free port, and stops, kills or restarts it as the scenario needs. As root,
PostgreSQL's programs run as the `postgres` user (initdb refuses root).

Missing programs skip the test, or fail it under CI=true, so a broken image cannot pass by skipping.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.smtp_sink import free_port


def unavailable(reason: str):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"fault tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(f"fault tests need {reason}")


def wait_until(condition, *, what: str, timeout: float = 30.0, interval: float = 0.05):
    """Poll `condition` until it returns something true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class PrivateRedis:
    """`redis-server` on a free port, no persistence: a restart loses everything, as a crash would."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            unavailable("redis-server (apt-get install redis-server)")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="llmcost-redis-")
        self.process: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, db=db, socket_connect_timeout=1, socket_timeout=2)

    def answers(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except Exception:
            return False

    def start(self) -> PrivateRedis:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--logfile", str(Path(self.dir) / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        wait_until(self.answers, what=f"redis-server on port {self.port}", timeout=15)
        return self

    def stop(self) -> None:
        """Kill it (SIGKILL): whatever it held, the queue included, is gone."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _postgres_bin() -> Path | None:
    for name in ("initdb", "pg_ctl"):
        found = shutil.which(name)
        if found:
            return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


class PrivatePostgres:
    """A PostgreSQL cluster of its own in a temporary directory, on a free port, trust authentication."""

    def __init__(self) -> None:
        bindir = _postgres_bin()
        if bindir is None or not (bindir / "pg_ctl").exists():
            unavailable("PostgreSQL's initdb and pg_ctl (apt-get install postgresql)")
        self.bindir = bindir
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="llmcost-pg-"))
        self.data = self.dir / "data"
        self.user: str | None = None
        if os.geteuid() == 0:  # initdb refuses to run as root
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                unavailable("a 'postgres' user to run PostgreSQL as (initdb refuses root)")
            self.user = "postgres"
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)

    def url(self, database: str = "llmcost") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60) -> str:
        result = subprocess.run([str(self.bindir / args[0]), *args[1:]], capture_output=True, text=True,
                                timeout=timeout, user=self.user, cwd=self.dir)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def start(self) -> PrivatePostgres:
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                      "--no-sync", "--no-instructions")
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "postgres.log"), "-o", options,
                  "-w", "-t", "30", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        """`fast` ends the sessions and stops; `immediate` is a crash (recovery at the next start)."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def create_database(self, name: str = "llmcost") -> None:
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)

    def log(self) -> str:
        path = self.dir / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> PrivatePostgres:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def kill_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
