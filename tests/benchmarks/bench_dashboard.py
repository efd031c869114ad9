#!/usr/bin/env python
"""Dashboard benchmark: rollups and read latency of the real server (gunicorn + PostgreSQL) at N events.

    make bench-dashboard
    .venv/bin/python tests/benchmarks/bench_dashboard.py [--sizes 1000000,10000000] [--orgs 4]
        [--days 90] [--requests 50] [--budget-requests 5000] [--keep]
    .venv/bin/python tests/benchmarks/bench_dashboard.py --reuse   # re-measure the server on a kept database
    .venv/bin/python tests/benchmarks/bench_dashboard.py --reuse --redo-rollups   # and the rollups

For each size N in --sizes, on a fresh database (`llmcost_dashbench`, dropped at the end unless --keep):

1. migrate, sync_prices, create_org (×--orgs), create_team (×5 each), create_token (read and ingest
   for the first organization), create_budget (each organization, and each team of the first) —
   the management commands, run in-process with call_command.
2. bulk-loads N synthetic events over the last --days days (time-ordered, daily and weekly cycles,
   some in the current hour) with one COPY … FROM STDIN (FREEZE) fed by a generator, after
   dropping the table's indexes and constraints (re-created, and the foreign keys validated, after
   the load); marks every touched hour dirty; ANALYZE.
3. runs metrics.rollups.dirty_rollups_refresh in --rollup-workers forked processes (2, as a worker
   with --concurrency 2 shares a backlog) until no dirty hour or day is left, and reports the time
   per million events; then VACUUM ANALYZE of the rollup tables (what autovacuum
   does on a live system).
4. starts gunicorn (2 sync workers) on a free loopback port, POSTs a few fresh events into the
   current hour through /api/v1/events (so the open hour is dirty and read from raw events, as in
   real life), then measures:
   - GET /api/v1/dashboard/metrics for 24 h, 7 d and 30 d: --requests sequential requests each
     after 3 warm-ups, client-side p50/p95;
   - the same totals from raw events (one SQL aggregate over metrics_usageevent), p50 of 5 runs;
   - that the API's totals equal the raw ones for the same explicit [start, end) (requests and
     tokens exactly; cost within 1e-9 relative, as the API renders Decimals as JSON numbers);
   - GET /api/v1/budget/check?team_alias=… with 50 concurrent clients (closed loop, bounded
     count), then paced at half the closed loop's rate; client-side p50/p99;
   - the web UI as a logged-in member (a real login through /accounts/login/, then the session
     cookie): the dashboard page and the requests page for the last 30 days, --page-requests
     sequential requests each after 2 warm-ups, p50/p95 of the time to the whole answer.
5. prints a summary block for README.md.

Every phase is bounded in count and time; an alarm stops the whole run (cleaning up) after
--max-seconds. CPU use of other processes is sampled so that a busy machine is flagged.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import multiprocessing
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg2

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
HOST = "127.0.0.1"
DB_NAME = "llmcost_dashbench"

ORG_SLUGS = ["acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "tyrell"]
TEAMS = ["chatbot", "search", "support-bot", "analytics", "code-assist"]
TEAM_WEIGHTS = [0.35, 0.25, 0.2, 0.12, 0.08]
USERS_PER_ORG = 200
# (name sent by the client, weight); the stored `model` is what the price book normalises it to.
MODELS = [
    ("gpt-4o", 14),
    ("gpt-4o-2024-08-06", 4),
    ("gpt-4o-mini", 20),
    ("openai/gpt-4.1", 8),
    ("gpt-4.1-mini", 10),
    ("claude-sonnet-4-5", 14),
    ("claude-haiku-4-5", 8),
    ("gemini-2.5-flash", 10),
    ("models/gemini-2.5-flash", 4),
    ("gemini-2.5-pro", 8),
]
QUERY_TYPES = ["chat", "completion", "summarise", "classify", "extract"]
ERRORS = [
    "RateLimitError: 429 Too Many Requests",
    "APITimeoutError: Request timed out after 60s",
    "InternalServerError: 500 upstream error",
    "BadRequestError: context_length_exceeded",
]
RANGES = [("24h", 24), ("7d", 168), ("30d", 720)]
TEMPLATE_POOL = 16_384
# COPY column order: who (org, team, user), then the event template, then id and times.
COPY_COLUMNS = (  # noqa: SIM905 -- one line per group reads better
    "organization_id team_id user_id model model_requested provider prompt_tokens output_tokens total_tokens "
    "cached_tokens prompt_cost output_cost cost client_cost is_priced price_id latency_ms time_to_first_token_ms "
    "cache_hit cache_similarity_score is_batched batch_id batch_size end_user query_type status error_message "
    "metadata tags request_id timestamp received_at"
).split()


class BenchFailure(Exception):
    pass


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = math.ceil(pct / 100 * len(sorted_values))
    return sorted_values[min(len(sorted_values), max(1, rank)) - 1]


# --- database -----------------------------------------------------------------------------------


def latency_summary(latencies: list[float], body: bytes) -> dict:
    """p50, p95 and max of request times (ms), their count and the last answer's size."""
    latencies = sorted(latencies)
    return {
        "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
        "max": latencies[-1],
        "n": len(latencies),
        "bytes": len(body),
    }


def admin_connect(args):
    conn = psycopg2.connect(host=args.pg_host, port=args.pg_port, user=args.pg_user, dbname="postgres")
    conn.autocommit = True
    return conn


def bench_dsn(args) -> str:
    return f"postgres://{args.pg_user}@{args.pg_host}:{args.pg_port}/{args.db_name}"


def bench_connect(args, *, autocommit: bool = False):
    conn = psycopg2.connect(
        host=args.pg_host, port=args.pg_port, user=args.pg_user, dbname=args.db_name, options="-c TimeZone=UTC"
    )
    conn.autocommit = autocommit
    return conn


def close_django_connections() -> None:
    if "django" in sys.modules:
        from django.db import connections

        connections.close_all()


def recreate_database(args) -> None:
    close_django_connections()
    conn = admin_connect(args)
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{args.db_name}" WITH (FORCE)')
            cur.execute(f'CREATE DATABASE "{args.db_name}"')
    finally:
        conn.close()


def drop_database(args) -> None:
    close_django_connections()
    conn = admin_connect(args)
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{args.db_name}" WITH (FORCE)')
    finally:
        conn.close()


def server_env(args) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("REDIS_URL", None)  # caches stay in-process, as in a plain deployment
    env.update(
        DJANGO_SETTINGS_MODULE="tests.benchmarks.bench_settings",
        DATABASE_URL=bench_dsn(args),
        DEBUG="false",
        SECRET_KEY=args.secret_key,
        SECURE_SSL_REDIRECT="false",
        ALLOWED_HOSTS=HOST,
        API_RATE_LIMIT="100000000/min",
        PYTHONUNBUFFERED="1",
    )
    return env


def django_setup(args) -> None:
    """This process talks to the bench database through Django too (commands, prices, rollups)."""
    os.environ.update(server_env(args))
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def command(*argv: str) -> str:
    from django.core.management import call_command

    out = io.StringIO()
    call_command(*argv, stdout=out, stderr=io.StringIO())
    return out.getvalue()


PAGE_USER = "dashbench-owner@bench.example"
PAGE_PASSWORD = "dashbench-pw-" + secrets.token_hex(8)


@dataclass
class Tenancy:
    orgs: list[tuple[int, str]]  # (id, slug)
    teams: dict[int, list[tuple[int, str]]]  # org id -> [(team id, alias)] (the 5 named teams)
    read_token: str
    ingest_token: str
    budgets: int


def prepare_database(args) -> Tenancy:
    log(f"creating database {args.db_name}; migrate, sync_prices, create_org/team/token/budget")
    recreate_database(args)
    command("migrate", "--no-input", "-v0")
    log("  " + command("sync_prices").strip())
    from teams.models import Organization, Team

    slugs = [ORG_SLUGS[i] if i < len(ORG_SLUGS) else f"org{i + 1}" for i in range(args.orgs)]
    budgets = 0
    for slug in slugs:
        command("create_org", slug, "--name", slug.title())
        for alias in TEAMS:
            command("create_team", slug, alias)
        command("create_budget", slug, "--amount", "100", "--period", "monthly")
        budgets += 1

    def token(scopes: str) -> str:
        raw = command("create_token", slugs[0], "--scopes", scopes, "--name", f"dashbench-{scopes}")
        value = raw.strip().splitlines()[-1].strip()
        if not value or " " in value:
            raise BenchFailure(f"could not read the token from create_token's output: {raw!r}")
        return value

    for alias in TEAMS:
        command("create_budget", slugs[0], "--team", alias, "--amount", "20", "--period", "monthly")
        budgets += 1
    command("add_member", slugs[0], PAGE_USER, "--role", "owner", "--password", PAGE_PASSWORD)
    orgs = list(Organization.objects.filter(slug__in=slugs).order_by("id").values_list("id", "slug"))
    teams = {
        org_id: [
            (team_id, alias)
            for team_id, alias in Team.objects.filter(organization_id=org_id, alias__in=TEAMS).values_list(
                "id", "alias"
            )
        ]
        for org_id, _ in orgs
    }
    for org_id in teams:
        teams[org_id].sort(key=lambda t: TEAMS.index(t[1]))
    return Tenancy(orgs, teams, token("read"), token("ingest"), budgets)


# --- synthetic events -------------------------------------------------------------------------------


def _q(text: str) -> str:
    """A CSV text field: always quoted, so an empty string is not NULL."""
    return '"' + text.replace('"', '""') + '"'


def _db_text(field_name: str, value) -> str:
    """A value as the database stores it in the UsageEvent column (the money columns' representation
    is the model field's business: DECIMAL text, or integer units), as CSV text."""
    from django.db import connection

    from metrics.models import UsageEvent

    stored = UsageEvent._meta.get_field(field_name).get_db_prep_save(value, connection)
    return format(stored, "f") if isinstance(stored, Decimal) else str(stored)


def _from_db(field_name: str, value) -> Decimal:
    """A raw SQL result for a UsageEvent money column (e.g. a SUM) as the Decimal the model reads."""
    from django.db import connection

    from metrics.models import UsageEvent

    field_ = UsageEvent._meta.get_field(field_name)
    if hasattr(field_, "from_db_value"):
        return field_.from_db_value(value, None, connection)
    return Decimal(value)


def event_templates(rng: random.Random, count: int) -> list[str]:
    """Pre-formatted CSV middles (model … tags) of realistic calls, priced like the ingest path."""
    from billing.pricing.book import event_cost, load_price_book

    book = load_price_book()  # not the process cache: ids change with every fresh database
    now = datetime.now(UTC)
    names = [name for name, _ in MODELS]
    weights = [weight for _, weight in MODELS]
    priced = {}
    for name in names:
        key = book.find(name)
        priced[name] = book.price_at(key, now) if key else None
    templates = []
    for _ in range(count):
        requested = rng.choices(names, weights)[0]
        price = priced[requested]
        failed = rng.random() < 0.03
        prompt = min(100_000, int(rng.lognormvariate(6.6, 1.1)) + 5)
        output = 0 if failed else min(8_000, int(rng.lognormvariate(5.2, 0.9)) + 1)
        cached = rng.randint(0, prompt) if rng.random() < 0.35 else 0
        cache_hit = rng.random() < 0.20  # the client's response cache answered
        if cache_hit:
            latency = rng.lognormvariate(math.log(35), 0.5)
        elif failed:
            latency = rng.lognormvariate(math.log(900), 1.0)
        else:
            latency = rng.lognormvariate(math.log(300 + 14 * output), 0.45)
        latency = round(max(latency, 0.1), 1)
        ttft = "" if rng.random() < 0.1 else str(round(latency * rng.uniform(0.05, 0.35), 1))
        score = str(round(rng.uniform(0.9, 1.0), 4)) if cache_hit else ""
        batched = rng.random() < 0.05
        batch_id = f"batch-{rng.getrandbits(40):010x}" if batched else ""
        batch_size = str(rng.randint(8, 256)) if batched else ""
        if price is not None:
            cost = event_cost(price, prompt_tokens=prompt, cached_tokens=cached, output_tokens=output)
            model, provider, price_id = price.model, price.provider, str(price.id)
            prompt_cost, output_cost, total = cost.prompt_cost, cost.output_cost, cost.total
        else:  # not in the catalog: kept unpriced with a zero cost, as ingest would
            model, provider, price_id = requested.rsplit("/", 1)[-1], "", ""
            prompt_cost = output_cost = total = Decimal(0)
        fields = [
            _q(model),
            _q(requested),
            _q(provider),
            str(prompt),
            str(output),
            str(prompt + output),
            str(cached),
            _db_text("prompt_cost", prompt_cost),
            _db_text("output_cost", output_cost),
            _db_text("cost", total),
            "",  # client_cost NULL
            "t" if price is not None else "f",
            price_id,
            str(latency),
            ttft,
            "t" if cache_hit else "f",
            score,
            "t" if batched else "f",
            _q(batch_id),
            batch_size,
            '""',  # end_user
            _q(rng.choice(QUERY_TYPES)),
            "error" if failed else "success",
            _q(rng.choice(ERRORS) if failed else ""),
            "{}",
            "[]",
        ]
        templates.append(",".join(fields) + ",")
    return templates


def who_pool(tenancy: Tenancy) -> tuple[list[str], list[float]]:
    """CSV heads "org,team,user," with cumulative weights: org i ∝ (orgs − i), teams and users skewed."""
    heads, weights = [], []
    n = len(tenancy.orgs)
    user_weights = [1 / (j + 1) ** 0.8 for j in range(USERS_PER_ORG)]
    user_total = sum(user_weights)
    for i, (org_id, slug) in enumerate(tenancy.orgs):
        org_weight = (n - i) / (n * (n + 1) / 2)
        for (team_id, _alias), team_weight in zip(tenancy.teams[org_id], TEAM_WEIGHTS, strict=True):
            for j, user_weight in enumerate(user_weights):
                heads.append(f'{org_id},{team_id},"user{j:03d}@{slug}.example",')
                weights.append(org_weight * team_weight * user_weight / user_total)
    cumulative, running = [], 0.0
    for weight in weights:
        running += weight
        cumulative.append(running)
    return heads, cumulative


def hour_plan(total: int, days: int, now: datetime) -> list[tuple[datetime, int, int]]:
    """(hour start, events, span in µs) from the oldest hour to the current one, summing to `total`.

    Weekday/weekend and day/night cycles and a slow growth; the current (open) hour gets its share
    for the minutes elapsed so far. The oldest hours stay a few hours inside the raw-event retention
    window, so the rollups never treat them as pruned during a long run.
    """
    current = now.replace(minute=0, second=0, microsecond=0)
    hours = days * 24 - 6
    plan = []
    for k in range(hours, -1, -1):
        start = current - timedelta(hours=k)
        daily = 1 + 0.6 * math.sin(2 * math.pi * (start.hour - 9) / 24)
        weekly = 0.55 if start.weekday() >= 5 else 1.0
        growth = 1 + 0.3 * (hours - k) / hours
        span = 3_600_000_000
        if k == 0:
            span = max(1_000_000, int((now - current).total_seconds() * 1e6) - 1_000_000)
        plan.append([start, daily * weekly * growth * span / 3.6e9, span])
    weight_sum = sum(p[1] for p in plan)
    counts = [total * p[1] / weight_sum for p in plan]
    floors = [int(c) for c in counts]
    short = total - sum(floors)
    for index in sorted(range(len(counts)), key=lambda i: counts[i] - floors[i], reverse=True)[:short]:
        floors[index] += 1
    return [(p[0], n, p[2]) for p, n in zip(plan, floors, strict=True)]


def csv_chunks(total: int, days: int, tenancy: Tenancy, rng: random.Random, progress):
    """Yield the CSV, one hour of events per chunk (a few MB at most), oldest first.

    The templates are made (reading prices through Django) before the first chunk is asked for,
    that is before the loader's transaction locks the tables the prices live in.
    """
    templates = event_templates(rng, TEMPLATE_POOL)
    heads, cumulative = who_pool(tenancy)
    yield b""  # primed: everything above is done
    plan = hour_plan(total, days, datetime.now(UTC))
    counter = 0
    choices, rand = rng.choices, rng.random
    for start, n, span in plan:
        if not n:
            continue
        prefix = start.strftime("%Y-%m-%d %H:")
        who = choices(heads, cum_weights=cumulative, k=n)
        what = choices(templates, k=n)
        offsets = sorted(int(rand() * span) for _ in range(n))
        lines = []
        append = lines.append
        for head, body, offset in zip(who, what, offsets, strict=True):
            minute, rest = divmod(offset, 60_000_000)
            second, micro = divmod(rest, 1_000_000)
            stamp = f"{prefix}{minute:02d}:{second:02d}.{micro:06d}+00"
            append(f"{head}{body}ev-{counter:010d},{stamp},{stamp}\n")
            counter += 1
        yield "".join(lines).encode()
        progress(counter)


class ChunkReader:
    """A file-like object over a generator of byte chunks, for cursor.copy_expert."""

    def __init__(self, chunks, deadline: float):
        self.chunks = iter(chunks)
        self.buffer = memoryview(b"")
        self.deadline = deadline
        self.bytes = 0

    def read(self, size: int = -1) -> bytes:
        if not self.buffer:
            if time.monotonic() > self.deadline:
                raise BenchFailure("the load hit its time bound")
            self.buffer = memoryview(next(self.chunks, b""))
        size = len(self.buffer) if size is None or size < 0 else size
        out, self.buffer = self.buffer[:size], self.buffer[size:]
        self.bytes += len(out)
        return bytes(out)

    readline = read


def load_events(args, size: int, tenancy: Tenancy) -> dict:
    """COPY `size` events into a table stripped of its indexes and constraints, then rebuild them."""
    rng = random.Random(args.seed + size)
    last = [time.monotonic()]

    def progress(done: int) -> None:
        if time.monotonic() - last[0] > 15:
            last[0] = time.monotonic()
            log(f"  … {done:,} rows sent")

    chunks = csv_chunks(size, args.days, tenancy, rng, progress)
    next(chunks)  # templates built (Django reads the prices) before any table is locked below
    close_django_connections()
    reader = ChunkReader(chunks, time.monotonic() + args.load_seconds)
    conn = bench_connect(args)
    timings = {}
    try:
        with conn.cursor() as cur:
            cur.execute("SET maintenance_work_mem = '1GB'")
            cur.execute("SET max_parallel_maintenance_workers = 2")
            cur.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'metrics_usageevent' "
                "AND is_nullable = 'NO' AND column_name <> 'id'"
            )
            missing = {name for (name,) in cur.fetchall()} - set(COPY_COLUMNS)
            if missing:
                raise BenchFailure(f"the loader does not fill NOT NULL column(s) {sorted(missing)}")
            cur.execute(
                "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = 'metrics_usageevent'::regclass ORDER BY contype DESC"
            )
            constraints = cur.fetchall()  # u, p, f (foreign keys first when dropping)
            cur.execute(
                "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.tablename = 'metrics_usageevent' "
                "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname "
                "AND c.conrelid = 'metrics_usageevent'::regclass)"
            )
            indexes = cur.fetchall()
            for name, _kind, _ in sorted(constraints, key=lambda c: c[1] != "f"):
                cur.execute(f'ALTER TABLE metrics_usageevent DROP CONSTRAINT "{name}"')
            for name, _ in indexes:
                cur.execute(f'DROP INDEX "{name}"')
            # FREEZE needs the table emptied in this transaction; rows are then written frozen and
            # all-visible, so the first reads do not rewrite every page to set hint bits.
            cur.execute("TRUNCATE metrics_usageevent")
            columns = ", ".join(f'"{c}"' for c in COPY_COLUMNS)
            t = time.perf_counter()
            cur.copy_expert(
                f"COPY metrics_usageevent ({columns}) FROM STDIN WITH (FORMAT csv, FREEZE)", reader, size=1 << 20
            )
            conn.commit()
            timings["copy"] = time.perf_counter() - t
            log(f"  COPY: {size:,} rows ({reader.bytes / 1e6:,.0f} MB CSV) in {timings['copy']:.1f} s")
            t = time.perf_counter()
            for name, kind, definition in constraints:
                if kind in ("p", "u"):
                    cur.execute(f'ALTER TABLE metrics_usageevent ADD CONSTRAINT "{name}" {definition}')
            for _name, definition in indexes:
                cur.execute(definition)
            conn.commit()
            timings["indexes"] = time.perf_counter() - t
            t = time.perf_counter()
            for name, kind, definition in constraints:
                if kind == "f":  # one validating join per key, instead of a trigger per row
                    cur.execute(f'ALTER TABLE metrics_usageevent ADD CONSTRAINT "{name}" {definition}')
            conn.commit()
            timings["foreign_keys"] = time.perf_counter() - t
            log(
                f"  {len(constraints) - sum(k == 'f' for _, k, _ in constraints) + len(indexes)} indexes in "
                f"{timings['indexes']:.1f} s; foreign keys validated in {timings['foreign_keys']:.1f} s"
            )
            cur.execute("SELECT count(*) FROM metrics_usageevent")
            stored = cur.fetchone()[0]
            if stored != size:
                raise BenchFailure(f"the table holds {stored:,} rows after COPY, expected {size:,}")
            t = time.perf_counter()
            cur.execute(
                "INSERT INTO metrics_dirtyhour (organization_id, hour, version) "
                "SELECT DISTINCT organization_id, date_trunc('hour', \"timestamp\"), 1 FROM metrics_usageevent"
            )
            dirty = cur.rowcount
            conn.commit()
            conn.autocommit = True
            cur.execute("ANALYZE")
            timings["mark_analyze"] = time.perf_counter() - t
            log(f"  {dirty:,} dirty hours marked; ANALYZE; {timings['mark_analyze']:.1f} s")
            timings["dirty_hours"] = dirty
    finally:
        conn.close()
    return timings


# --- rollups ------------------------------------------------------------------------------------------


def _refresh_until_idle(deadline: float) -> tuple[int, int, int]:
    """One worker process's share of the backlog: refresh passes until one finds nothing left to do
    (the rest is held by the other processes)."""
    from metrics.rollups import dirty_rollups_refresh

    hours = days = skipped = 0
    while time.monotonic() < deadline:
        result = dirty_rollups_refresh(time_budget_seconds=deadline - time.monotonic())
        hours, days, skipped = hours + result.hours, days + result.days, skipped + result.skipped
        if not result.hours and not result.days:
            break
    return hours, days, skipped


def processes(count: int) -> str:
    return f"{count} process" if count == 1 else f"{count} processes"


def run_rollups(args, pool) -> dict:
    """The backlog shared by the pool's processes, as a worker's pool shares it
    (metrics.tasks.rollups_refresh queues ROLLUP_WORKERS runs that split the chunks); then one more
    pass here, which must find nothing left."""
    from metrics.models import DailyRollup, DirtyDay, DirtyHour, HourlyRollup

    deadline = time.monotonic() + args.rollup_seconds
    t = time.perf_counter()
    shares = pool.map(_refresh_until_idle, [deadline] * args.rollup_workers)
    hours, days, skipped = (sum(column) for column in zip(*shares, strict=True))
    leftover = _refresh_until_idle(deadline)
    seconds = time.perf_counter() - t
    if DirtyHour.objects.exists() or DirtyDay.objects.exists():
        raise BenchFailure(f"rollups did not finish within {args.rollup_seconds:.0f} s")
    log(
        f"  {processes(args.rollup_workers)}: "
        + ", ".join(f"{h:,} hours and {d:,} days ({s:,} skipped)" for h, d, s in shares)
        + f"; then {leftover[0]} hours and {leftover[1]} days left over"
    )
    hourly_rows, daily_rows = HourlyRollup.objects.count(), DailyRollup.objects.count()
    return {
        "seconds": seconds,
        "hours": hours + leftover[0],
        "days": days + leftover[1],
        "skipped": skipped,
        "workers": args.rollup_workers,
        "hourly_rows": hourly_rows,
        "daily_rows": daily_rows,
    }


def vacuum_rollups(args) -> float:
    """What autovacuum does on a live system after a burst of rollup writes."""
    t = time.perf_counter()
    conn = bench_connect(args, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "VACUUM (ANALYZE) metrics_hourlyrollup, metrics_dailyrollup, metrics_dirtyhour, metrics_dirtyday"
            )
    finally:
        conn.close()
    return time.perf_counter() - t


# --- the server ----------------------------------------------------------------------------------------


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


def start_server(args, workdir: Path) -> Server:
    port = free_port()
    command_line = [
        PYTHON, "-m", "gunicorn", "llmcost_project.wsgi:application",
        "--bind", f"{HOST}:{port}", "--workers", str(args.workers), "--worker-class", "sync",
        "--timeout", "120", "--log-level", "warning",
    ]  # fmt: skip
    log_path = workdir / "gunicorn.log"
    log(f"starting gunicorn on {HOST}:{port}: {args.workers} sync workers")
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            command_line,
            cwd=ROOT,
            env=server_env(args),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
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


def http(port: int, method: str, path: str, token: str, body: bytes | None = None, timeout: float = 60):
    """One request on a fresh connection (gunicorn's sync workers close after each answer)."""
    request = urllib.request.Request(f"http://{HOST}:{port}{path}", data=body, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# --- CPU accounting from /proc (to flag a busy machine) -----------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_snapshot(server_pid: int | None, db_name: str) -> dict[str, float]:
    """CPU seconds used so far by: this process (with its rollup processes), gunicorn, PostgreSQL (this
    database), the whole machine."""
    gunicorn = postgres = children = 0
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        ppid, ticks = int(fields[1]), int(fields[11]) + int(fields[12])
        if server_pid is not None and (int(entry) == server_pid or ppid == server_pid):
            gunicorn += ticks
        elif ppid == me:  # the rollup's processes
            children += ticks
        elif comm == "postgres":
            try:
                title = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            is_backend = "(" in title or "[local]" in title
            if not is_backend or f" {db_name} " in title:
                postgres += ticks
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    times = os.times()
    return {
        "client": times.user + times.system + children / CLK_TCK,
        "gunicorn": gunicorn / CLK_TCK,
        "postgres": postgres / CLK_TCK,
        "busy": (sum(parts[:8]) - parts[3] - parts[4]) / CLK_TCK,
    }


def cpu_used(before: dict, after: dict, wall: float) -> dict[str, float]:
    # max(0, …): a process that exits between the snapshots takes its CPU time with it.
    used = {key: max(0.0, (after[key] - before[key]) / wall) for key in before}
    used["other"] = max(0.0, used["busy"] - used["client"] - used["gunicorn"] - used["postgres"])
    return used


def wait_for_quiet(args) -> float:
    """Wait (at most --quiet-wait s) until other processes use < 0.25 cores; returns their use."""
    started = time.monotonic()
    deadline = started + args.quiet_wait
    while True:
        before = cpu_snapshot(None, args.db_name)
        time.sleep(1.0)
        other = cpu_used(before, cpu_snapshot(None, args.db_name), 1.0)["other"]
        if other < 0.25 or time.monotonic() >= deadline:
            if time.monotonic() - started > 1.5:
                verdict = "quiet now" if other < 0.25 else "going on anyway"
                log(f"  waited {time.monotonic() - started:.0f} s for other processes ({other:.2f} cores): {verdict}")
            return other


class Phase:
    """Measures the CPU use of everyone during a block."""

    def __init__(self, args, server: Server | None):
        self.args, self.server = args, server

    def __enter__(self):
        self.before = cpu_snapshot(self.server.proc.pid if self.server else None, self.args.db_name)
        self.t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        wall = max(1e-6, time.perf_counter() - self.t)
        after = cpu_snapshot(self.server.proc.pid if self.server else None, self.args.db_name)
        self.used = cpu_used(self.before, after, wall)
        return False

    def report(self) -> str:
        u = self.used
        return (
            f"CPU (cores of {os.cpu_count()}): client {u['client']:.2f}, gunicorn {u['gunicorn']:.2f}, "
            f"postgres {u['postgres']:.2f}, other {u['other']:.2f}"
        )


# --- measurements ------------------------------------------------------------------------------------


def post_fresh_events(server: Server, token: str, count: int, rng: random.Random) -> int:
    """A few events in the current hour through the real ingest path: the open hour becomes dirty."""
    now = datetime.now(UTC)
    into_hour = (now - now.replace(minute=0, second=0, microsecond=0)).total_seconds()
    names = [name for name, _ in MODELS]
    events = []
    for i in range(count):
        output = int(rng.lognormvariate(5.2, 0.9)) + 1
        latency = round(rng.lognormvariate(math.log(300 + 14 * output), 0.45), 1)
        stamp = now - timedelta(seconds=rng.uniform(0, max(0.5, into_hour - 0.5)))
        events.append(
            {
                "model": rng.choice(names),
                "prompt_tokens": int(rng.lognormvariate(6.6, 1.1)) + 5,
                "output_tokens": output,
                "latency_ms": latency,
                "time_to_first_token_ms": round(latency * 0.2, 1),
                "user_id": f"user{rng.randrange(USERS_PER_ORG):03d}@fresh.example",
                "team_alias": rng.choice(TEAMS),
                "status": "success",
                "request_id": f"fresh-{now:%H%M%S}-{i}-{rng.getrandbits(32):08x}",
                "timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            }
        )
    accepted = 0
    for start in range(0, len(events), 100):
        body = json.dumps({"events": events[start : start + 100]}).encode()
        status, answer = http(server.port, "POST", "/api/v1/events", token, body)
        if status != 200:
            raise BenchFailure(f"POST /api/v1/events: HTTP {status}: {answer[:300]!r}")
        accepted += json.loads(answer)["accepted"]
    if accepted != count:
        raise BenchFailure(f"ingest accepted {accepted} of {count} fresh events")
    return accepted


def dashboard_latency(args, server: Server, token: str) -> dict[str, dict]:
    results = {}
    for label, hours in RANGES:
        path = f"/api/v1/dashboard/metrics?time_range_hours={hours}"
        latencies = []
        deadline = time.monotonic() + args.dashboard_seconds
        for i in range(3 + args.requests):
            if time.monotonic() > deadline:
                raise BenchFailure(f"dashboard {label}: hit the {args.dashboard_seconds:.0f} s bound")
            t = time.perf_counter()
            status, body = http(server.port, "GET", path, token)
            elapsed = time.perf_counter() - t
            if status != 200:
                raise BenchFailure(f"dashboard {label}: HTTP {status}: {body[:300]!r}\n{server.log_tail()}")
            if i >= 3:
                latencies.append(elapsed * 1000)
        results[label] = latency_summary(latencies, body)
        log(
            f"  dashboard {label}: p50 {results[label]['p50']:.1f} ms, p95 {results[label]['p95']:.1f} ms, "
            f"max {results[label]['max']:.1f} ms ({len(latencies)} requests, {len(body):,} B answer)"
        )
    return results


RAW_TOTALS = (
    "SELECT count(*), coalesce(sum(total_tokens), 0), coalesce(sum(cost), 0), "
    "count(*) FILTER (WHERE status = 'error'), count(*) FILTER (WHERE cache_hit), "
    "count(*) FILTER (WHERE NOT is_priced), coalesce(sum(latency_ms), 0) "
    'FROM metrics_usageevent WHERE organization_id = %s AND "timestamp" >= %s AND "timestamp" < %s'
)


def raw_and_check(args, server: Server, token: str, org_id: int) -> tuple[dict, list[str]]:
    """Totals from raw events (timed) and the API's totals for the same explicit range (compared)."""
    results, failures = {}, []
    conn = bench_connect(args, autocommit=True)
    try:
        with conn.cursor() as cur:
            for label, hours in RANGES:
                end = datetime.now(UTC)
                start = end - timedelta(hours=hours)
                query = urllib.parse.urlencode({"start": start.isoformat(), "end": end.isoformat()})
                status, body = http(server.port, "GET", f"/api/v1/dashboard/metrics?{query}", token)
                if status != 200:
                    raise BenchFailure(f"dashboard {label} (explicit range): HTTP {status}: {body[:300]!r}")
                api = json.loads(body, parse_float=Decimal)
                times = []
                for _ in range(args.raw_runs):
                    t = time.perf_counter()
                    cur.execute(RAW_TOTALS, [org_id, start, end])
                    row = cur.fetchone()
                    times.append((time.perf_counter() - t) * 1000)
                requests, tokens, cost = row[0], row[1], _from_db("cost", row[2])
                api_cost = api["total_cost"]
                exact = str(api_cost) == str(cost) or Decimal(str(api_cost)) == cost
                relative = abs(Decimal(str(api_cost)) - cost) / cost if cost else abs(Decimal(str(api_cost)))
                ok = api["total_requests"] == requests and api["total_tokens"] == tokens and relative <= Decimal("1e-9")
                results[label] = {
                    "raw_p50": percentile(sorted(times), 50),
                    "raw_all": times,
                    "requests": requests,
                    "cost": cost,
                    "api_cost": api_cost,
                    "exact": exact,
                    "relative": relative,
                    "ok": ok,
                }
                log(
                    f"  raw {label}: {requests:,} events; SQL aggregate p50 {results[label]['raw_p50']:.0f} ms "
                    f"(runs: {', '.join(f'{x:.0f}' for x in times)}); API total_cost {api_cost} vs raw SUM {cost} "
                    f"({'identical' if exact else f'relative difference {relative:.1e}'}); requests "
                    f"{api['total_requests']:,} vs {requests:,}; tokens {api['total_tokens']:,} vs {tokens:,}"
                    f" → {'OK' if ok else 'MISMATCH'}"
                )
                if not ok:
                    failures.append(
                        f"{label}: API totals differ from raw events (requests {api['total_requests']} vs {requests},"
                        f" tokens {api['total_tokens']} vs {tokens}, cost {api_cost} vs {cost})"
                    )
    finally:
        conn.close()
    return results, failures


def _cookies(headers) -> dict[str, str]:
    """name -> value of every Set-Cookie (Secure cookies included: the server runs without TLS here)."""
    jar = {}
    for name, value in headers:
        if name.lower() == "set-cookie":
            pair = value.split(";", 1)[0]
            key, _, val = pair.partition("=")
            jar[key.strip()] = val.strip()
    return jar


def page_login(server: Server, slug: str) -> str:
    """Log in through the real login form; returns the Cookie header of the session."""
    import http.client
    import re

    conn = http.client.HTTPConnection(HOST, server.port, timeout=30)
    try:
        conn.request("GET", "/accounts/login/")
        response = conn.getresponse()
        page = response.read().decode()
        jar = _cookies(response.getheaders())
        match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        if response.status != 200 or not match or "csrftoken" not in jar:
            raise BenchFailure(f"login page: HTTP {response.status}, no CSRF token")
        body = urllib.parse.urlencode(
            {"csrfmiddlewaretoken": match.group(1), "username": PAGE_USER, "password": PAGE_PASSWORD}
        )
        conn.request(
            "POST", "/accounts/login/", body=body,
            headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": f"csrftoken={jar['csrftoken']}"},
        )  # fmt: skip
        response = conn.getresponse()
        response.read()
        jar |= _cookies(response.getheaders())
        if response.status != 302 or "sessionid" not in jar:
            raise BenchFailure(f"login: HTTP {response.status}, no session cookie (locked out or wrong password?)")
    finally:
        conn.close()
    return "; ".join(f"{key}={value}" for key, value in jar.items())


def page_latency(args, server: Server, slug: str) -> dict[str, dict]:
    """Server time of the web UI pages a member opens most, for the last 30 days (logged-in session)."""
    import http.client

    cookie = page_login(server, slug)
    pages = [("dashboard", f"/o/{slug}/?range=30d"), ("requests", f"/o/{slug}/requests/?range=30d")]
    results = {}
    for label, path in pages:
        latencies = []
        deadline = time.monotonic() + args.dashboard_seconds
        for i in range(2 + args.page_requests):
            if time.monotonic() > deadline:
                raise BenchFailure(f"page {label}: hit the {args.dashboard_seconds:.0f} s bound")
            conn = http.client.HTTPConnection(HOST, server.port, timeout=60)
            try:
                t = time.perf_counter()
                conn.request("GET", path, headers={"Cookie": cookie})
                response = conn.getresponse()
                body = response.read()
                elapsed = time.perf_counter() - t
            finally:
                conn.close()
            if response.status != 200:
                raise BenchFailure(f"page {label}: HTTP {response.status}: {body[:300]!r}\n{server.log_tail()}")
            if i >= 2:
                latencies.append(elapsed * 1000)
        results[label] = latency_summary(latencies, body)
        log(
            f"  page {label} 30d: p50 {results[label]['p50']:.1f} ms, p95 {results[label]['p95']:.1f} ms, "
            f"max {results[label]['max']:.1f} ms ({len(latencies)} requests, {len(body):,} B page)"
        )
    return results


class Connection:
    """One HTTP/1.1 connection: hand-written requests, Content-Length bodies, reopened when closed."""

    def __init__(self, port: int, timeout: float):
        self.port, self.timeout = port, timeout
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
        if not keep_alive:
            self.close()
        return status, body


@dataclass
class LoadResult:
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    connects: int = 0


async def _budget_load(port: int, request: bytes, count: int, clients: int, deadline: float, rate: float | None):
    """Closed loop (each client sends again as soon as answered) or, with `rate`, an open loop paced to
    `rate` requests/s whose latency counts from each request's scheduled time."""
    result = LoadResult()
    queue = iter(range(count))
    t0 = time.perf_counter()

    async def client():
        conn = Connection(port, 30)
        try:
            for i in queue:
                if time.monotonic() > deadline:
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
                    status, body = await conn.request(request)
                except (OSError, asyncio.IncompleteReadError, TimeoutError, BenchFailure) as exc:
                    result.failures.append(f"{exc.__class__.__name__}: {exc}")
                    continue
                result.latencies.append(time.perf_counter() - started)
                if status != 200 or b'"allowed"' not in body:
                    result.failures.append(f"HTTP {status}: {body[:200]!r}")
                    continue
                result.ok += 1
        finally:
            result.connects += conn.connects
            conn.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    result.wall = time.perf_counter() - t0
    return result


def budget_check_load(args, server: Server, token: str, alias: str, rate: float | None) -> dict:
    path = f"/api/v1/budget/check?team_alias={urllib.parse.quote(alias)}"
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{server.port}\r\nAuthorization: Bearer {token}\r\n"
        "Connection: keep-alive\r\n\r\n"
    ).encode("latin-1")
    count = args.budget_requests if not rate else min(args.budget_requests, max(1, int(rate * args.budget_seconds)))
    with Phase(args, server) as phase:
        result = asyncio.run(
            _budget_load(
                server.port, request, count, args.budget_clients, time.monotonic() + args.budget_seconds + 5, rate
            )
        )
    lat = sorted(x * 1000 for x in result.latencies)
    out = {
        "n": len(lat),
        "ok": result.ok,
        "rate": len(lat) / result.wall if result.wall else 0.0,
        "p50": percentile(lat, 50),
        "p99": percentile(lat, 99),
        "max": lat[-1] if lat else float("nan"),
        "failures": result.failures,
        "cpu": phase.report(),
        "other": phase.used["other"],
    }
    mode = f"paced at {rate:,.0f} req/s" if rate else "closed loop"
    log(
        f"  budget check ({args.budget_clients} clients, {mode}): {out['n']:,} requests in {result.wall:.1f} s = "
        f"{out['rate']:,.0f} req/s; p50 {out['p50']:.1f} ms, p99 {out['p99']:.1f} ms, max {out['max']:.1f} ms"
    )
    log("    " + out["cpu"])
    return out


# --- one size -------------------------------------------------------------------------------------------


def measure_rollups(args, size: int, result: dict) -> None:
    log(f"rollups: dirty_rollups_refresh in {processes(args.rollup_workers)} until no dirty hour or day is left")
    wait_for_quiet(args)
    close_django_connections()  # the forked processes must not share this process's connection
    # The processes (and their database connections) live until after the CPU snapshot, so that
    # their CPU time and their backends' is counted.
    with multiprocessing.get_context("fork").Pool(args.rollup_workers) as pool, Phase(args, None) as phase:
        result["rollup"] = run_rollups(args, pool)
    close_django_connections()
    roll = result["rollup"]
    roll["vacuum"] = vacuum_rollups(args)
    roll["cpu"] = phase.report()
    roll["other"] = phase.used["other"]
    log(
        f"  {roll['hours']:,} hours and {roll['days']:,} days in {roll['seconds']:.1f} s "
        f"= {roll['seconds'] / (size / 1e6):.1f} s per 1 M events; {roll['hourly_rows']:,} hourly and "
        f"{roll['daily_rows']:,} daily rows; VACUUM ANALYZE {roll['vacuum']:.1f} s"
    )
    log("  " + roll["cpu"])


def reuse_database(args) -> tuple[Tenancy, int]:
    """--reuse: the database a --keep run left, with fresh tokens; its hours rolled up again, as the
    worker would have done meanwhile (not timed: the load and rollup figures are not re-measured)."""
    from metrics.models import UsageEvent
    from teams.models import Organization, Team

    orgs = list(Organization.objects.order_by("id").values_list("id", "slug"))
    if not orgs:
        raise BenchFailure(f"--reuse: {args.db_name} holds no organization; run once with --keep first")
    teams = {
        org_id: sorted(
            Team.objects.filter(organization_id=org_id, alias__in=TEAMS).values_list("id", "alias"),
            key=lambda t: TEAMS.index(t[1]),
        )
        for org_id, _ in orgs
    }
    command("add_member", orgs[0][1], PAGE_USER, "--role", "owner", "--password", PAGE_PASSWORD)
    tokens = []
    for scopes in ("read", "ingest"):
        raw = command("create_token", orgs[0][1], "--scopes", scopes, "--name", f"dashbench-{scopes}")
        tokens.append(raw.strip().splitlines()[-1].strip())
    size = UsageEvent.objects.count()
    log(f"reusing {args.db_name}: {size:,} events, {len(orgs)} organizations")
    if not args.redo_rollups:
        log("  rolling up what is dirty (not timed)")
        _refresh_until_idle(time.monotonic() + args.rollup_seconds)
        close_django_connections()
        vacuum_rollups(args)
    return Tenancy(orgs, teams, tokens[0], tokens[1], 0), size


def rollups_from_scratch(args) -> None:
    """Empty the rollup tables and mark every hour with events dirty, as after a load."""
    conn = bench_connect(args, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "TRUNCATE metrics_hourlyrollup, metrics_dailyrollup, metrics_hourlyteamtotal, "
                "metrics_dailyteamtotal, metrics_dirtyhour, metrics_dirtyday"
            )
            cur.execute(
                "INSERT INTO metrics_dirtyhour (organization_id, hour, version) "
                "SELECT DISTINCT organization_id, date_trunc('hour', \"timestamp\", 'UTC'), 1 FROM metrics_usageevent"
            )
            cur.execute("CHECKPOINT")
    finally:
        conn.close()


def run_size(args, size: int, workdir: Path, failures: list[str]) -> dict:
    if args.reuse:
        tenancy, size = reuse_database(args)
        result: dict = {"size": size, "rollup": None}
        org_id, _ = tenancy.orgs[0]
        if args.redo_rollups:
            rollups_from_scratch(args)
            measure_rollups(args, size, result)
    else:
        result = {"size": size}
        log(f"=== size {size:,} ===")
        tenancy = prepare_database(args)
        org_id, _ = tenancy.orgs[0]
        log(f"loading {size:,} events over {args.days} days for {len(tenancy.orgs)} organizations")
        t = time.perf_counter()
        result["load"] = load_events(args, size, tenancy)
        result["load"]["seconds"] = time.perf_counter() - t
        log(f"  load total {result['load']['seconds']:.1f} s")
        measure_rollups(args, size, result)

    conn = bench_connect(args)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM metrics_usageevent WHERE organization_id = %s", [org_id])
            result["org_events"] = cur.fetchone()[0]
            cur.execute("SELECT pg_size_pretty(pg_database_size(current_database()))")
            result["db_size"] = cur.fetchone()[0]
    finally:
        conn.close()
    log(f"  first organization: {result['org_events']:,} events; database size {result['db_size']}")

    server = start_server(args, workdir)
    try:
        fresh = post_fresh_events(server, tenancy.ingest_token, args.fresh_events, random.Random(args.seed))
        log(f"posted {fresh} fresh events into the current hour through /api/v1/events (it is now dirty)")
        wait_for_quiet(args)
        with Phase(args, server) as phase:
            result["dashboard"] = dashboard_latency(args, server, tenancy.read_token)
        result["dashboard_other"] = phase.used["other"]
        log("  " + phase.report())
        wait_for_quiet(args)
        with Phase(args, server) as phase:
            result["pages"] = page_latency(args, server, tenancy.orgs[0][1])
        log("  " + phase.report())
        result["raw"], mismatches = raw_and_check(args, server, tenancy.read_token, org_id)
        failures.extend(f"size {size:,}: {m}" for m in mismatches)
        alias = TEAMS[0]
        wait_for_quiet(args)
        closed = budget_check_load(args, server, tenancy.ingest_token, alias, None)
        paced = None
        if args.budget_pace > 0 and closed["rate"] > 0:
            wait_for_quiet(args)
            paced = budget_check_load(args, server, tenancy.ingest_token, alias, closed["rate"] * args.budget_pace)
        result["budget"], result["budget_paced"] = closed, paced
        for run in (closed, paced):
            if run and run["failures"]:
                failures.append(f"size {size:,}: {len(run['failures'])} budget-check failures: {run['failures'][:3]}")
    finally:
        stop_server(server)
        if server.proc.returncode not in (0, None, -signal.SIGTERM):
            failures.append(f"gunicorn exited with {server.proc.returncode}:\n{server.log_tail()}")
    return result


def rollup_text(r: dict) -> str:
    if r["rollup"] is None:
        return "rollup not measured (--reuse)"
    per_m = r["rollup"]["seconds"] / (r["size"] / 1e6)
    return f"rollup {r['rollup']['seconds']:.1f} s ({per_m:.1f} s per 1 M, {processes(r['rollup']['workers'])})"


def summary_lines(results: list[dict], args) -> list[str]:
    lines = []
    for r in results:
        size = r["size"]
        dash = ", ".join(
            f"{label} {r['dashboard'][label]['p50']:.0f}/{r['dashboard'][label]['p95']:.0f}" for label, _ in RANGES
        )
        budget = r["budget"]
        line = (
            f"size {size:,}: {rollup_text(r)}; dashboard p50/p95 ms: {dash}; "
            f"raw 30d {r['raw']['30d']['raw_p50']:,.0f} ms; budget check p99 {budget['p99']:.1f} ms "
            f"({args.budget_clients} clients, closed loop, {budget['rate']:,.0f} req/s"
        )
        if r.get("budget_paced"):
            paced = r["budget_paced"]
            line += f"; {paced['p99']:.1f} ms paced at {paced['rate']:,.0f} req/s"
        line += ")"
        checks = all(r["raw"][label]["ok"] for label, _ in RANGES)
        exact = all(r["raw"][label]["exact"] for label, _ in RANGES)
        worst = max(r["raw"][label]["relative"] for label, _ in RANGES)
        pages = r["pages"]
        line += (
            f"; pages 30d p50/p95 ms (logged in): dashboard {pages['dashboard']['p50']:.0f}/"
            f"{pages['dashboard']['p95']:.0f}, requests {pages['requests']['p50']:.0f}/{pages['requests']['p95']:.0f}"
        )
        line += (
            f"; API totals = raw: {'yes' if checks else 'NO'}"
            f" (cost {'identical' if exact else f'within {worst:.0e} relative'})"
        )
        lines.append(line)
    if len(results) >= 2:
        small, large = results[0], results[-1]
        ratio = large["dashboard"]["30d"]["p95"] / small["dashboard"]["30d"]["p95"]
        lines.append(f"30d p95 ratio {large['size'] / 1e6:g}M/{small['size'] / 1e6:g}M = {ratio:.2f}×")
    lines.append(
        "Targets: 30-day dashboard p95 ≤ 150 ms at 10 M events and ≤ 1.5× its 1 M time; rollups ≤ 10 s per 1 M "
        "events; budget-check p99 ≤ 10 ms at 50 concurrent callers; dashboard and requests pages (30 days) "
        "p95 ≤ 250 ms at 10 M events."
    )
    return lines


def target_lines(results: list[dict]) -> list[str]:
    verdicts = []
    by_size = {r["size"]: r for r in results}
    large = by_size.get(10_000_000) or results[-1]
    small = by_size.get(1_000_000) or results[0]
    p95 = large["dashboard"]["30d"]["p95"]
    verdicts.append((f"30d p95 ≤ 150 ms at {large['size']:,} ({p95:.0f} ms)", p95 <= 150))
    if large is not small:
        ratio = p95 / small["dashboard"]["30d"]["p95"]
        verdicts.append((f"30d p95 ≤ 1.5× from {small['size']:,} to {large['size']:,} ({ratio:.2f}×)", ratio <= 1.5))
    for label in ("dashboard", "requests"):
        page = large["pages"][label]["p95"]
        verdicts.append((f"{label} page 30d p95 ≤ 250 ms at {large['size']:,} ({page:.0f} ms)", page <= 250))
    for r in results:
        if r["rollup"] is None:
            continue
        per_m = r["rollup"]["seconds"] / (r["size"] / 1e6)
        verdicts.append((f"rollups ≤ 10 s per 1 M at {r['size']:,} ({per_m:.1f} s)", per_m <= 10))
    for r in results:
        verdicts.append(
            (f"budget p99 ≤ 10 ms closed loop at {r['size']:,} ({r['budget']['p99']:.1f} ms)", r["budget"]["p99"] <= 10)
        )
        if r.get("budget_paced"):
            paced = r["budget_paced"]["p99"]
            verdicts.append((f"budget p99 ≤ 10 ms paced at {r['size']:,} ({paced:.1f} ms)", paced <= 10))
    return [f"  {'met   ' if ok else 'MISSED'} {name}" for name, ok in verdicts]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000000,10000000", help="event counts, comma-separated")
    parser.add_argument("--orgs", type=int, default=4, help="organizations (default 4; the first is measured)")
    parser.add_argument("--days", type=int, default=90, help="days of history (default 90, the raw retention)")
    parser.add_argument("--requests", type=int, default=50, help="sequential dashboard requests per range")
    parser.add_argument("--budget-requests", type=int, default=5000, help="budget checks per run (default 5,000)")
    parser.add_argument("--budget-clients", type=int, default=50, help="concurrent budget-check clients")
    parser.add_argument("--budget-seconds", type=float, default=120.0, help="time bound of a budget-check run")
    parser.add_argument(
        "--budget-pace", type=float, default=0.5,
        help="after the closed loop, a paced run at this fraction of its rate (0: skip)",
    )  # fmt: skip
    parser.add_argument("--fresh-events", type=int, default=200, help="events POSTed into the open hour")
    parser.add_argument("--page-requests", type=int, default=20, help="sequential requests per web page")
    parser.add_argument("--raw-runs", type=int, default=5, help="timed runs of the raw SQL aggregate")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers (default 2)")
    parser.add_argument("--keep", action="store_true", help=f"keep {DB_NAME} (the last size) for profiling")
    parser.add_argument(
        "--reuse", action="store_true",
        help=f"skip create/load/rollups: measure the server on the {DB_NAME} a --keep run left (kept again)",
    )  # fmt: skip
    parser.add_argument(
        "--redo-rollups", action="store_true",
        help="with --reuse: empty the rollups, mark every hour dirty and measure the rollups again",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--db-name", default=DB_NAME)
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--pg-user", default="postgres")
    parser.add_argument("--load-seconds", type=float, default=1800.0, help="time bound of one load")
    parser.add_argument(
        "--rollup-workers", type=int, default=2,
        help="processes sharing the rollup backlog (default 2: ROLLUP_WORKERS, a worker's --concurrency 2)",
    )  # fmt: skip
    parser.add_argument("--rollup-seconds", type=float, default=7200.0, help="time bound of one rollup run")
    parser.add_argument("--dashboard-seconds", type=float, default=300.0, help="time bound per dashboard range")
    parser.add_argument("--quiet-wait", type=float, default=30.0, help="wait up to this long for a quiet machine")
    parser.add_argument("--max-seconds", type=int, default=6 * 3600, help="the whole run stops after this")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error("--sizes must be integers separated by commas")
    if not sizes or min(sizes) < 1000:
        parser.error("--sizes must name sizes of at least 1,000 events")
    if not 1 <= args.orgs <= 100:
        parser.error("--orgs must be 1..100")
    if not 2 <= args.days <= 90:
        parser.error("--days must be 2..90 (older raw events are outside the retention window)")
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    if args.redo_rollups and not args.reuse:
        parser.error("--redo-rollups needs --reuse")
    if args.reuse:
        sizes, args.keep = sizes[:1], True  # one database to measure, and it is not ours to drop
    args.secret_key = secrets.token_urlsafe(50)
    code = code_version()
    log(f"code: {code}")
    django_setup(args)

    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGALRM, stop)
    signal.alarm(args.max_seconds)

    results: list[dict] = []
    failures: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="llmcost-dashbench-"))
    try:
        for size in sizes:
            results.append(run_size(args, size, workdir, failures))
    except KeyboardInterrupt as exc:
        failures.append(f"interrupted ({exc})")
    except (BenchFailure, psycopg2.Error) as exc:
        failures.append(f"{exc.__class__.__name__}: {exc}")
    finally:
        signal.alarm(0)
        close_django_connections()
        if not args.keep:
            try:
                drop_database(args)
            except psycopg2.Error as exc:
                print(f"could not drop {args.db_name}: {exc}", file=sys.stderr)
        for path in workdir.iterdir():
            path.unlink()
        workdir.rmdir()

    if results:
        print("\n" + "\n".join(summary_lines(results, args)))
        print("\n".join(target_lines(results)))
        noise = max(
            max((r["rollup"] or {}).get("other", 0), r["dashboard_other"], r["budget"]["other"]) for r in results
        )
        print(
            f"server: gunicorn {args.workers} sync workers; {os.cpu_count()} CPU cores shared by the load generator, "
            f"gunicorn and PostgreSQL {server_version(args)}; {args.orgs} organizations, the first one measured; "
            f"code {code}"
        )
        if noise > 0.25:
            print(
                f"caution: other processes used up to {noise:.2f} cores during a measured phase; the figures "
                "understate a quiet machine"
            )
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


def code_version() -> str:
    """The commit measured (read-only git), and whether the working tree differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head or 'unknown'}{' + uncommitted changes' if dirty else ''}"


def server_version(args) -> str:
    try:
        conn = admin_connect(args)
    except psycopg2.Error:
        return "?"
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            return cur.fetchone()[0].split()[0]
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
