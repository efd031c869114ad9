#!/usr/bin/env python
"""Ingest benchmark: the real server (gunicorn + PostgreSQL) against raw COPY of the same rows.

    make bench-ingest
    .venv/bin/python tests/benchmarks/bench_ingest.py [--events 200000] [--clients 4]
        [--workers 2] [--threads 2] [--track-requests 5000] [--track-clients 50]

What it does, in one run, on a fresh database (`llmcost_bench`, dropped at the end):

1. migrate, sync_prices, create_org, create_team (×5), create_token — the management commands.
2. starts gunicorn on a free loopback port and waits for /healthz.
3. batch ingest: N pre-generated events, pre-serialised as 1,000-event JSON bodies, POSTed to
   /api/v1/events by C concurrent keep-alive clients (a hand-written asyncio HTTP/1.1 client, so
   the load generator stays cheap); every answer must be 200 with accepted == 1000, and the table
   must then hold exactly N rows.
4. raw COPY: the same N rows (exported in memory from what the API stored) are loaded with COPY
   into `metrics_usageevent_copybench (LIKE metrics_usageevent INCLUDING ALL)`.
5. /track latency: 50 concurrent clients POST single events (the seed's shape) to
   /api/v1/metrics/track; p50/p99 latency measured client-side. First a closed loop (each client
   sends again as soon as it is answered: the server's ceiling, and latency = queueing at
   saturation), then open loops paced to half that rate (--track-pace / --track-rate) and to a
   stated rate (--track-fixed-rate, 100 requests/s), whose latency counts from each request's
   scheduled send time. On 2 cores the closed loop cannot meet a 25 ms p99: 50 clients waiting on
   a server that answers R requests/s wait 50/R s on average (Little's law), so even the mean
   reaches 25 ms only above R = 2,000/s, i.e. under 1 ms of CPU per request for gunicorn,
   PostgreSQL and the load generator together.
6. prints a summary block for README.md, stops gunicorn and drops the database.

CPU use of the client, the gunicorn workers and PostgreSQL is sampled from /proc during each
phase, so one can see that the load generator is not the bottleneck.

Everything is bounded: each phase has a deadline, each socket read a timeout, and an alarm
stops the whole run (cleaning up) after --max-seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
import psycopg2.errors

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
HOST = "127.0.0.1"

# Real catalog names, in the spellings gateways send (bare, Gemini's "models/…", "provider/…").
MODELS = [
    ("gpt-4o", 25),
    ("gpt-4o-mini", 25),
    ("claude-sonnet-4-5", 15),
    ("gemini-2.5-flash", 15),
    ("models/gemini-2.5-flash", 10),
    ("openai/gpt-4.1", 10),
]
TEAMS = ["chatbot", "search", "support-bot", "analytics", "code-assist"]
USERS = [f"user{i:02d}@example.com" for i in range(50)]
QUERY_TYPES = ["chat", "completion", "summarise", "classify", "extract"]
ERRORS = [
    "RateLimitError: 429 Too Many Requests",
    "APITimeoutError: Request timed out after 60s",
    "InternalServerError: 500 upstream error",
    "BadRequestError: context_length_exceeded",
]


class BenchFailure(Exception):
    pass


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- setup -----------------------------------------------------------------------------------


def admin_connect(args):
    # Bounded: DROP DATABASE waits until every backend of the cluster absorbs a signal barrier,
    # which a backend stuck in COPY FROM STDIN (someone else's) never does.
    conn = psycopg2.connect(
        host=args.pg_host,
        port=args.pg_port,
        user=args.pg_user,
        dbname="postgres",
        options="-c statement_timeout=90000",
    )
    conn.autocommit = True
    return conn


def bench_dsn(args) -> str:
    return f"postgres://{args.pg_user}@{args.pg_host}:{args.pg_port}/{args.db_name}"


def bench_connect(args):
    return psycopg2.connect(
        host=args.pg_host,
        port=args.pg_port,
        user=args.pg_user,
        dbname=args.db_name,
        options="-c statement_timeout=600000",
    )


def _drop(cur, db_name: str) -> None:
    try:
        cur.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
    except psycopg2.errors.QueryCanceled:
        cur.execute(
            "SELECT pid, datname, wait_event, left(query, 60) FROM pg_stat_activity "
            "WHERE state = 'active' AND pid <> pg_backend_pid() AND wait_event IN ('ClientRead', 'relation')"
        )
        suspects = "; ".join(f"pid {pid} in {db} waiting on {wait}: {query}" for pid, db, wait, query in cur.fetchall())
        raise BenchFailure(
            f"DROP DATABASE {db_name} did not finish in 90 s: PostgreSQL waits for every backend to absorb a "
            f"signal barrier, and some cannot (busy in COPY FROM STDIN or a lock wait): {suspects or 'none found'}"
        ) from None


def recreate_database(args) -> None:
    conn = admin_connect(args)
    try:
        with conn.cursor() as cur:
            _drop(cur, args.db_name)
            cur.execute(f'CREATE DATABASE "{args.db_name}"')
    finally:
        conn.close()


def drop_database(args) -> None:
    conn = admin_connect(args)
    try:
        with conn.cursor() as cur:
            _drop(cur, args.db_name)
    finally:
        conn.close()


def server_env(args) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("REDIS_URL", None)  # the throttle's cache stays in-process, as in a plain deployment
    env.update(
        DATABASE_URL=bench_dsn(args),
        DEBUG="false",
        SECRET_KEY=args.secret_key,
        SECURE_SSL_REDIRECT="false",
        ALLOWED_HOSTS=HOST,
        API_RATE_LIMIT="10000000/min",
        # Connections outlive the run: a backend replaced mid-phase would take its CPU time with it
        # (see cpu_used), and the figures would understate PostgreSQL's share.
        DB_CONN_MAX_AGE="3600",
        PYTHONUNBUFFERED="1",
    )
    return env


def manage(args, *command: str) -> str:
    result = subprocess.run(
        [PYTHON, "manage.py", *command],
        cwd=ROOT,
        env=server_env(args),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise BenchFailure(f"manage.py {' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def prepare_database(args) -> str:
    log(f"creating database {args.db_name}; migrate, sync_prices, create_org, create_team, create_token")
    recreate_database(args)
    manage(args, "migrate", "--no-input", "-v0")
    log("  " + manage(args, "sync_prices").strip())
    manage(args, "create_org", "bench", "--name", "Benchmark")
    for alias in TEAMS:
        manage(args, "create_team", "bench", alias)
    out = manage(args, "create_token", "bench", "--scopes", "ingest", "--name", "bench")
    token = out.strip().splitlines()[-1].strip()
    if not token or " " in token:
        raise BenchFailure(f"could not read the token from create_token's output: {out!r}")
    return token


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _die_with_parent() -> None:
    """In the child before exec: gunicorn gets SIGTERM if this script dies without cleaning up."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def start_server(args, workdir: Path) -> Server:
    port = free_port()
    worker_class = args.worker_class or ("gthread" if args.threads > 1 else "sync")
    command = [
        PYTHON,
        "-m",
        "gunicorn",
        "llmcost_project.wsgi:application",
        "--bind",
        f"{HOST}:{port}",
        "--workers",
        str(args.workers),
        "--worker-class",
        worker_class,
        "--threads",
        str(args.threads),
        "--timeout",
        "120",
        "--keep-alive",
        "5",
        "--log-level",
        "warning",
    ]
    log_path = workdir / "gunicorn.log"
    log(f"starting gunicorn on {HOST}:{port}: {args.workers} {worker_class} worker(s) × {args.threads} thread(s)")
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=server_env(args),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    server = Server(proc, port, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchFailure(f"gunicorn exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(0.2)
    raise BenchFailure(f"gunicorn did not answer /healthz within 60 s:\n{server.log_tail()}")


def stop_server(server: Server | None) -> None:
    if server is None or server.proc.poll() is not None:
        return
    pgid = server.proc.pid  # start_new_session: gunicorn leads its own process group
    try:
        os.killpg(pgid, signal.SIGTERM)
        server.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        server.proc.wait(timeout=10)
    except ProcessLookupError:
        pass


# --- CPU accounting from /proc ---------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: str) -> tuple[str, int, int] | None:
    """(comm, ppid, utime+stime ticks) of one process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    return comm, int(fields[1]), int(fields[11]) + int(fields[12])


def _serves_bench(pid: str, db_name: str) -> bool:
    """A PostgreSQL process working for this run: background processes, and backends of its database.

    Backends of other databases (other people's test runs on a shared machine) count as "other".
    """
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    is_backend = "(" in title or "[local]" in title
    return not is_backend or f" {db_name} " in title


def cpu_snapshot(server_pid: int | None, db_name: str) -> dict:
    """CPU seconds used so far by this client, each gunicorn and PostgreSQL process, and the machine."""
    procs: dict[tuple[str, int], float] = {}  # (kind, pid) -> seconds
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _proc_stat(entry)
        if stat is None:
            continue
        comm, ppid, ticks = stat
        if server_pid is not None and (int(entry) == server_pid or ppid == server_pid):
            procs[("gunicorn", int(entry))] = ticks / CLK_TCK
        elif comm == "postgres" and _serves_bench(entry, db_name):
            procs[("postgres", int(entry))] = ticks / CLK_TCK
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    times = os.times()
    return {"client": times.user + times.system, "busy": (sum(parts[:8]) - idle) / CLK_TCK, "procs": procs}


def cpu_used(before: dict, after: dict, wall: float) -> dict[str, float]:
    """Cores busy during the interval; a process that ended meanwhile (a closed PostgreSQL backend)
    is missed, one that started is counted whole."""
    used = {"client": (after["client"] - before["client"]) / wall, "busy": (after["busy"] - before["busy"]) / wall}
    for kind in ("gunicorn", "postgres"):
        used[kind] = (
            sum(seconds - before["procs"].get(key, 0.0) for key, seconds in after["procs"].items() if key[0] == kind)
            / wall
        )
    used["other"] = max(0.0, used["busy"] - used["client"] - used["gunicorn"] - used["postgres"])
    return used


def cpu_report(used: dict[str, float]) -> str:
    return (
        f"CPU (cores busy, of {os.cpu_count()}): client {used['client']:.2f}, gunicorn {used['gunicorn']:.2f}, "
        f"postgres {used['postgres']:.2f}, other processes/kernel {used['other']:.2f}, "
        f"whole machine {used['busy']:.2f}"
    )


def wait_for_quiet(args, server_pid: int | None = None) -> float:
    """Wait (at most --quiet-wait seconds) until other processes use < 0.25 cores; returns their use.

    The machine may be shared (other test runs); a benchmark next to them measures them too.
    """
    started = time.monotonic()
    logged = -1
    while True:
        before = cpu_snapshot(server_pid, args.db_name)
        time.sleep(1.0)
        other = cpu_used(before, cpu_snapshot(server_pid, args.db_name), 1.0)["other"]
        waited = time.monotonic() - started
        if other < 0.25:
            return other
        if waited >= args.quiet_wait:
            log(f"  still busy after {waited:.0f} s ({other:.2f} cores used by other processes); going on")
            return other
        if waited // 15 != logged:
            logged = waited // 15
            log(f"  the machine is busy ({other:.2f} cores used by other processes); waiting")


# --- the load generator ----------------------------------------------------------------------


class Connection:
    """One HTTP/1.1 connection: hand-written requests, Content-Length bodies, keep-alive when allowed."""

    def __init__(self, port: int, timeout: float):
        self.port = port
        self.timeout = timeout
        self.reader = self.writer = None
        self.connects = 0

    async def _open(self):
        self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection(HOST, self.port), self.timeout)
        self.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connects += 1

    def close(self):
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, data: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            await self._open()
        try:
            self.writer.write(data)
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), self.timeout)
            status = int(head[9:12])
            length, keep_alive = None, True
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    keep_alive = False
            if length is None:
                raise BenchFailure("response without Content-Length")
            body = await asyncio.wait_for(self.reader.readexactly(length), self.timeout)
        except BaseException:
            self.close()
            raise
        if not keep_alive:  # gunicorn's sync workers close after every response
            self.close()
        return status, body


def http_request(path: str, port: int, token: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode("latin-1") + body


def percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    """Nearest-rank percentile of an already sorted list."""
    rank = math.ceil(pct / 100 * len(sorted_values))
    return sorted_values[min(len(sorted_values), max(1, rank)) - 1]


@dataclass
class PhaseResult:
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    connects: int = 0
    cpu: str = ""
    used: dict = field(default_factory=dict)
    timed_out: bool = False


async def _run_batches(
    port: int, requests: list[bytes], expected: list[int], clients: int, deadline: float, timeout: float
) -> PhaseResult:
    result = PhaseResult()
    queue = iter(range(len(requests)))

    async def client():
        conn = Connection(port, timeout)
        try:
            for i in queue:  # shared iterator: each batch is sent exactly once
                if time.monotonic() > deadline:
                    result.timed_out = True
                    return
                started = time.perf_counter()
                try:
                    status, body = await conn.request(requests[i])
                except (OSError, asyncio.IncompleteReadError, TimeoutError, BenchFailure) as exc:
                    result.failures.append(f"batch {i}: {exc.__class__.__name__}: {exc}")
                    continue
                result.latencies.append(time.perf_counter() - started)
                if status != 200:
                    result.failures.append(f"batch {i}: HTTP {status}: {body[:300]!r}")
                    continue
                answer = json.loads(body)
                if answer.get("accepted") != expected[i] or answer.get("duplicates") or answer.get("rejected"):
                    result.failures.append(
                        f"batch {i}: accepted={answer.get('accepted')} duplicates={answer.get('duplicates')} "
                        f"rejected={str(answer.get('rejected'))[:300]}"
                    )
                    continue
                result.ok += expected[i]
        finally:
            result.connects += conn.connects
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    result.wall = time.perf_counter() - started
    return result


async def _run_track(
    port: int, requests: list[bytes], clients: int, deadline: float, timeout: float, rate: float | None
) -> PhaseResult:
    """Closed loop (each client sends its next request as soon as the last is answered), or, with
    `rate`, an open loop paced to `rate` requests/s whose latency counts from the scheduled time."""
    result = PhaseResult()
    queue = iter(range(len(requests)))
    t0 = time.perf_counter()

    async def client():
        conn = Connection(port, timeout)
        try:
            for i in queue:
                if time.monotonic() > deadline:
                    result.timed_out = True
                    return
                if rate:
                    scheduled = t0 + i / rate
                    delay = scheduled - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    started = scheduled
                else:
                    started = time.perf_counter()
                try:
                    status, body = await conn.request(requests[i])
                except (OSError, asyncio.IncompleteReadError, TimeoutError, BenchFailure) as exc:
                    result.failures.append(f"track {i}: {exc.__class__.__name__}: {exc}")
                    continue
                result.latencies.append(time.perf_counter() - started)
                if status != 200:
                    result.failures.append(f"track {i}: HTTP {status}: {body[:300]!r}")
                    continue
                answer = json.loads(body)
                if answer.get("status") != "success" or answer.get("duplicate") or not answer.get("priced"):
                    result.failures.append(f"track {i}: {body[:300]!r}")
                    continue
                result.ok += 1
        finally:
            result.connects += conn.connects
            conn.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    result.wall = time.perf_counter() - t0
    return result


def run_phase(coro_factory, server_pid: int, db_name: str) -> PhaseResult:
    before = cpu_snapshot(server_pid, db_name)
    t = time.perf_counter()
    result = asyncio.run(coro_factory())
    wall = time.perf_counter() - t
    result.used = cpu_used(before, cpu_snapshot(server_pid, db_name), wall)
    result.cpu = cpu_report(result.used)
    return result


# --- the events --------------------------------------------------------------------------------


def generate_events(count: int, rng: random.Random, *, prefix: str = "") -> list[dict]:
    """Realistic calls: a model mix, teams, users, cached prompts, some errors, the last hour."""
    now = datetime.now(UTC)
    names = [name for name, _ in MODELS]
    weights = [weight for _, weight in MODELS]
    events = []
    for _ in range(count):
        failed = rng.random() < 0.03
        prompt = min(60_000, int(rng.lognormvariate(6.5, 1.0)) + 5)
        output = 0 if failed else min(8_000, int(rng.lognormvariate(5.0, 0.9)) + 1)
        cached = 0 if rng.random() < 0.6 else rng.randint(0, prompt)
        latency = round(150 + output * rng.uniform(8, 25) + rng.uniform(0, 400), 1)
        event = {
            "model": rng.choices(names, weights)[0],
            "prompt_tokens": prompt,
            "output_tokens": output,
            "total_tokens": prompt + output,
            "cached_tokens": cached,
            "latency_ms": latency,
            "time_to_first_token_ms": round(latency * rng.uniform(0.05, 0.3), 1),
            "cache_hit": rng.random() < 0.1,
            "user_id": rng.choice(USERS),
            "team_alias": rng.choice(TEAMS),
            "query_type": rng.choice(QUERY_TYPES),
            "status": "error" if failed else "success",
            "request_id": prefix + str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "timestamp": (now - timedelta(seconds=rng.uniform(0, 3600))).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        if failed:
            event["error_message"] = rng.choice(ERRORS)
        if cached and rng.random() < 0.5:  # prompt caching writes as well as reads
            event["cache_write_tokens"] = rng.randint(0, prompt - cached)
        if output and rng.random() < 0.1:  # reasoning models report their thinking tokens
            event["usage"] = {"output_reasoning_tokens": rng.randint(0, output)}
        events.append(event)
    return events


def seed_shape(event: dict) -> dict:
    """The seed's /metrics/track body: naive UTC timestamp 'YYYY-MM-DD HH:MM:SS', no cached tokens."""
    body = {
        key: event[key]
        for key in (
            "model",
            "prompt_tokens",
            "output_tokens",
            "total_tokens",
            "latency_ms",
            "time_to_first_token_ms",
            "cache_hit",
            "user_id",
            "team_alias",
            "query_type",
            "status",
            "request_id",
        )
    }
    body["timestamp"] = event["timestamp"][:19].replace("T", " ")
    if "error_message" in event:
        body["error_message"] = event["error_message"]
    return body


def batch_bodies(events: list[dict], size: int) -> list[bytes]:
    return [
        json.dumps({"events": events[i : i + size]}, separators=(",", ":")).encode()
        for i in range(0, len(events), size)
    ]


# --- database checks and COPY ------------------------------------------------------------------


def count_rows(args, where: str = "TRUE") -> int:
    conn = bench_connect(args)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM metrics_usageevent WHERE {where}")
            return cur.fetchone()[0]
    finally:
        conn.close()


def checkpoint(args) -> None:
    conn = bench_connect(args)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("CHECKPOINT")
    finally:
        conn.close()


def copy_benchmark(args, expected: int) -> tuple[float, float]:
    """COPY the rows the API stored into a twin table; returns (seconds, CSV megabytes).

    The CSV is built in memory from the very values the API wrote (every column but the id), so
    both paths store identical rows; the twin has the same indexes and unique constraint
    (LIKE … INCLUDING ALL copies no foreign keys; the API table has three).
    """
    conn = bench_connect(args)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'metrics_usageevent' AND column_name <> 'id' ORDER BY ordinal_position"
            )
            columns = ", ".join(f'"{name}"' for (name,) in cur.fetchall())
            cur.execute("DROP TABLE IF EXISTS metrics_usageevent_copybench")
            cur.execute("CREATE TABLE metrics_usageevent_copybench (LIKE metrics_usageevent INCLUDING ALL)")
            conn.commit()
            csv = io.BytesIO()
            cur.copy_expert(
                f"COPY (SELECT {columns} FROM metrics_usageevent WHERE request_id NOT LIKE 'warmup-%' "
                "AND request_id NOT LIKE 'track-%' ORDER BY id) TO STDOUT WITH (FORMAT csv)",
                csv,
            )
            conn.commit()
        checkpoint(args)
        csv.seek(0)
        started = time.perf_counter()
        with conn.cursor() as cur:
            cur.copy_expert(f"COPY metrics_usageevent_copybench ({columns}) FROM STDIN WITH (FORMAT csv)", csv)
        conn.commit()
        seconds = time.perf_counter() - started
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM metrics_usageevent_copybench")
            copied = cur.fetchone()[0]
        if copied != expected:
            raise BenchFailure(f"COPY stored {copied} rows, expected {expected}")
        return seconds, len(csv.getvalue()) / 1e6
    finally:
        conn.close()


# --- the run -------------------------------------------------------------------------------------


@dataclass
class TrackResult:
    ok: int
    rate: float  # achieved
    offered: float | None
    p50: float
    p99: float
    used: dict


def track_phase(
    args, server: Server, token: str, events: list[dict], rate: float | None, failures: list[str]
) -> TrackResult:
    requests = [
        http_request("/api/v1/metrics/track", server.port, token, json.dumps(e, separators=(",", ":")).encode())
        for e in events
    ]
    if rate:  # never more than the time bound allows
        requests = requests[: max(1, int(rate * args.track_seconds))]
    wait_for_quiet(args, server.proc.pid)
    mode = "closed loop"
    if rate:
        mode = f"paced at {rate:,.0f} req/s (latency counted from each request's scheduled time)"
    log(
        f"/track: {len(requests):,} requests (at most {args.track_seconds:.0f} s), {args.track_clients} clients, {mode}"
    )
    # Paced runs are sized to fit the bound; their last requests get a few seconds to finish.
    deadline = args.track_seconds + (5 if rate else 0)
    result = run_phase(
        lambda: _run_track(server.port, requests, args.track_clients, time.monotonic() + deadline, 30, rate),
        server.proc.pid,
        args.db_name,
    )
    lat = sorted(result.latencies)
    p50, p99 = percentile(lat, 50) * 1000, percentile(lat, 99) * 1000
    achieved = len(lat) / result.wall
    log(
        f"  {len(lat):,} requests in {result.wall:.2f} s = {achieved:,.0f} req/s; p50 {p50:.1f} ms, "
        f"p90 {percentile(lat, 90) * 1000:.1f} ms, p99 {p99:.1f} ms, max {lat[-1] * 1000 if lat else 0:.1f} ms; "
        f"{result.connects} TCP connection(s)"
    )
    log("  " + result.cpu)
    if result.ok:
        per_request = 1000 * (result.used["gunicorn"] + result.used["postgres"]) * result.wall / result.ok
        log(f"  server CPU per request: {per_request:.1f} ms (gunicorn + PostgreSQL)")
    failures.extend(result.failures[:10])
    if len(result.failures) > 10:
        failures.append(f"... and {len(result.failures) - 10} more /track failures")
    return TrackResult(result.ok, achieved, rate, p50, p99, result.used)


def warm_up(args, server: Server, token: str) -> int:
    """A few small batches through every worker: imports, price book, prepared connections."""
    rng = random.Random(7)
    events = generate_events(40 * max(4, args.workers * args.threads), rng, prefix="warmup-")
    bodies = batch_bodies(events, 20)
    requests = [http_request("/api/v1/events", server.port, token, body) for body in bodies]
    expected = [len(json.loads(body)["events"]) for body in bodies]
    result = run_phase(
        lambda: _run_batches(
            server.port, requests, expected, max(4, args.workers * args.threads), time.monotonic() + 60, 60
        ),
        server.proc.pid,
        args.db_name,
    )
    if result.failures:
        raise BenchFailure("warm-up failed: " + "; ".join(result.failures[:5]) + "\n" + server.log_tail())
    return result.ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events for the batch phase (default 200,000)")
    parser.add_argument("--batch-size", type=int, default=1000, help="events per POST (default 1,000)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent batch clients (default 4)")
    parser.add_argument("--track-requests", type=int, default=5000, help="single-event requests (default 5,000)")
    parser.add_argument("--track-clients", type=int, default=50, help="concurrent /track clients (default 50)")
    parser.add_argument("--track-seconds", type=float, default=20.0, help="time bound of the /track phase")
    parser.add_argument(
        "--track-rate",
        type=float,
        default=None,
        help="after the closed loop, a paced (open-loop) /track run at this many requests/s; "
        "default: --track-pace of the closed loop's rate; 0: skip",
    )
    parser.add_argument(
        "--track-fixed-rate",
        type=float,
        default=100.0,
        help="one more paced /track run at this stated aggregate rate (requests/s, default 100; 0: skip), "
        "so runs on different machines and loads compare at the same offered load",
    )
    parser.add_argument(
        "--track-pace",
        type=float,
        default=0.5,
        help="the paced run's rate as a fraction of the closed loop's (default 0.5)",
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="threads per worker; >1 selects gthread, 1 sync workers (default 2: 2 gthread workers × 2 threads "
        "measured best on 2 cores, ahead of 2 or 4 sync workers and of 2×4 or 3×2 gthread)",
    )
    parser.add_argument("--worker-class", default=None, help="override gunicorn's worker class")
    parser.add_argument("--db-name", default="llmcost_bench")
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--pg-user", default="postgres")
    parser.add_argument("--batch-seconds", type=float, default=300.0, help="time bound of the batch phase")
    parser.add_argument("--max-seconds", type=int, default=1200, help="the whole run stops after this")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each phase, wait up to this long for other processes to go quiet",
    )
    parser.add_argument("--keep-db", action="store_true", help="leave llmcost_bench in place (for profiling)")
    args = parser.parse_args(argv)
    if args.events < args.batch_size or args.events % args.batch_size:
        parser.error("--events must be a positive multiple of --batch-size")
    if not 1 <= args.batch_size <= 1000:
        parser.error("--batch-size must be 1..1000 (the API's limit)")
    args.secret_key = secrets.token_urlsafe(50)

    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGALRM, stop)
    signal.alarm(args.max_seconds)

    server = None
    failures: list[str] = []
    summary: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="llmcost-bench-"))
    try:
        token = prepare_database(args)

        rng = random.Random(2024)
        t = time.perf_counter()
        events = generate_events(args.events, rng)
        bodies = batch_bodies(events, args.batch_size)
        track_events = [seed_shape(e) for e in generate_events(3 * args.track_requests, rng, prefix="track-")]
        log(
            f"generated {args.events:,} events in {len(bodies)} bodies "
            f"({sum(map(len, bodies)) / 1e6:.1f} MB) and {len(track_events):,} /track bodies "
            f"in {time.perf_counter() - t:.1f} s"
        )
        del events

        server = start_server(args, workdir)
        warmed = warm_up(args, server, token)
        log(f"warm-up: {warmed} events")

        # --- batch ingest
        batch_requests = [http_request("/api/v1/events", server.port, token, body) for body in bodies]
        expected = [args.batch_size] * len(batch_requests)
        del bodies
        checkpoint(args)
        wait_for_quiet(args, server.proc.pid)
        log(f"batch ingest: {args.events:,} events, {args.clients} clients × {args.batch_size:,}-event batches")
        batch = run_phase(
            lambda: _run_batches(
                server.port, batch_requests, expected, args.clients, time.monotonic() + args.batch_seconds, 120
            ),
            server.proc.pid,
            args.db_name,
        )
        batch_requests = None
        rate = batch.ok / batch.wall
        lat = sorted(batch.latencies)
        log(
            f"  {batch.ok:,} events in {batch.wall:.2f} s = {rate:,.0f} events/s; per batch p50 "
            f"{percentile(lat, 50) * 1000:.0f} ms, p99 {percentile(lat, 99) * 1000:.0f} ms; "
            f"{batch.connects} TCP connection(s)"
        )
        log("  " + batch.cpu)
        batch_cpu_ms = 1000 * (batch.used["gunicorn"] + batch.used["postgres"]) * batch.wall / (batch.ok / 1000)
        log(
            f"  server CPU per 1,000 events: {batch_cpu_ms:.0f} ms (gunicorn "
            f"{1000 * batch.used['gunicorn'] * batch.wall / (batch.ok / 1000):.0f} + PostgreSQL "
            f"{1000 * batch.used['postgres'] * batch.wall / (batch.ok / 1000):.0f}) → at most "
            f"{os.cpu_count() * 1_000_000 / batch_cpu_ms:,.0f} events/s on {os.cpu_count()} idle cores"
        )
        if batch.timed_out:
            failures.append(f"batch phase hit its {args.batch_seconds:.0f} s bound")
        failures.extend(batch.failures[:10])
        stored = count_rows(args, "request_id NOT LIKE 'warmup-%'")
        if stored != args.events:
            failures.append(f"the table holds {stored:,} benchmark rows, expected {args.events:,}")
        else:
            log(f"  row count check: {stored:,} rows = N")
        unpriced = count_rows(args, "NOT is_priced")
        if unpriced:
            failures.append(f"{unpriced:,} events were not priced (model names not in the catalog?)")

        # --- raw COPY of the same rows
        wait_for_quiet(args, server.proc.pid)
        copy_seconds, megabytes = copy_benchmark(args, stored)
        copy_rate = stored / copy_seconds
        ratio = 100 * rate / copy_rate
        log(
            f"raw COPY: {stored:,} rows ({megabytes:.0f} MB CSV) in {copy_seconds:.2f} s = {copy_rate:,.0f} events/s"
            f" → API = {ratio:.1f} % of COPY"
        )

        # --- single-event latency: closed loop (saturation), then paced below saturation
        closed = track_phase(args, server, token, track_events[: args.track_requests], None, failures)
        paced = None
        pace = args.track_rate if args.track_rate is not None else round(closed.rate * args.track_pace / 10) * 10
        if pace and pace > 0:
            paced = track_phase(
                args, server, token, track_events[args.track_requests : 2 * args.track_requests], pace, failures
            )
        fixed = None
        if args.track_fixed_rate > 0:
            fixed = track_phase(
                args, server, token, track_events[2 * args.track_requests :], args.track_fixed_rate, failures
            )
        total = count_rows(args)
        stored_total = args.events + warmed + closed.ok + (paced.ok if paced else 0) + (fixed.ok if fixed else 0)
        if total != stored_total:
            failures.append(f"the table holds {total:,} rows, expected {stored_total:,}")

        worker_class = args.worker_class or ("gthread" if args.threads > 1 else "sync")
        summary = [
            f"batch ingest: {rate:,.0f} events/s ({args.clients} clients × {args.batch_size:,}-event batches, "
            f"{args.events:,} events)",
            f"raw COPY:     {copy_rate:,.0f} events/s   → API = {ratio:.1f} % of COPY",
            f"/track:       p50 {closed.p50:.1f} ms, p99 {closed.p99:.1f} ms at {args.track_clients} concurrent "
            f"clients, closed loop ({closed.rate:,.0f} req/s, the server's ceiling)",
            f"server:       gunicorn, {args.workers} {worker_class} worker(s) × {args.threads} thread(s); "
            f"PostgreSQL {server_version(args)}; {os.cpu_count()} CPU cores shared with the load generator",
            f"server CPU:   {batch_cpu_ms:.0f} ms per 1,000 batched events (gunicorn + PostgreSQL), "
            f"so at most {os.cpu_count() * 1_000_000 / batch_cpu_ms:,.0f} events/s on {os.cpu_count()} idle cores",
        ]
        for position, run, how in ((3, paced, "half the closed loop's rate"), (4, fixed, "the stated rate")):
            if run:
                summary.insert(
                    position,
                    f"/track:       p50 {run.p50:.1f} ms, p99 {run.p99:.1f} ms at {args.track_clients} "
                    f"concurrent clients, paced to {run.offered:,.0f} req/s ({how}; {run.rate:,.0f} req/s answered)",
                )
        noise = max(run.used["other"] for run in (batch, closed, paced, fixed) if run)
        if noise > 0.25:
            summary.append(
                f"caution:      other processes used up to {noise:.2f} cores during the run; "
                "the figures understate a quiet machine"
            )
        targets = [
            ("batch ingest ≥ 20,000 events/s", rate >= 20_000),
            ("batch ingest ≥ 15 % of COPY", ratio >= 15),
            ("/track p99 ≤ 25 ms (closed loop)", closed.p99 <= 25),
        ]
        for run in (paced, fixed):
            if run:
                targets.append((f"/track p99 ≤ 25 ms (paced, {run.offered:,.0f} req/s)", run.p99 <= 25))
    except KeyboardInterrupt as exc:
        failures.append(f"interrupted ({exc})")
        targets = []
    except BenchFailure as exc:
        failures.append(str(exc))
        targets = []
    finally:
        signal.alarm(0)
        # Cleanup runs to its end (each step is bounded); a second signal must not cut it short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop_server(server)
        if server is not None and server.proc.returncode not in (0, None) and failures:
            print(server.log_tail(), file=sys.stderr)
        if not args.keep_db:
            try:
                drop_database(args)
            except (psycopg2.Error, BenchFailure) as exc:
                print(f"could not drop {args.db_name}: {exc}", file=sys.stderr)
        for path in workdir.iterdir():
            path.unlink()
        workdir.rmdir()

    if summary:
        print("\n" + "\n".join(summary))
        print("targets: " + "; ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in targets))
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


def server_version(args) -> str:
    conn = bench_connect(args)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            return cur.fetchone()[0].split()[0]
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
