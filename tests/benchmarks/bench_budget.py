#!/usr/bin/env python
"""Budget reservation benchmark: concurrent gateways against hard budgets, on the real server.

    make bench-budget
    .venv/bin/python tests/benchmarks/bench_budget.py [--workers 2] [--threads 4] [--rate 300]

What it does, on a fresh database (`llmcost_bench_budget`, dropped at the end), with the setup of
bench_ingest.py (migrate, sync_prices, create_org, create_team, create_token; gunicorn on a free
loopback port; a hand-written asyncio HTTP/1.1 client):

1. overshoot, at 50 and at 200 concurrent gateways, each phase on its own team with a hard $1.00
   budget (under a hard organization budget with room): every gateway loops "POST
   /api/v1/budget/reserve $0.01 with a request id; if allowed, POST /api/v1/events one event with
   that request id at its real cost ($0.0050–$0.0100, sent as response_cost of an unpriced model)"
   until it is refused. The team's stored spend must not exceed $1.00 (overshoot = spend − limit),
   every granted reservation must have been settled by its event, and no answer may be degraded.
2. reserve latency: 50 clients paced to each of --rates reserves/s (open loop: latency counts from each
   request's scheduled time) on a team with a hard budget that has room, ttl 5 s (so the open
   holds stay what a gateway fleet settling its calls would keep: rate × a few seconds); p50/p99.
3. the closed-loop ceiling: the same 50 clients as fast as answered.
4. prints a summary block for README.md, stops gunicorn and drops the database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import signal
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ingest import (  # the shared setup lives beside this script
    BenchFailure,
    Connection,
    Server,
    bench_connect,
    drop_database,
    http_request,
    log,
    manage,
    percentile,
    prepare_database,
    start_server,
    stop_server,
)

LIMIT = Decimal("1.00")
ESTIMATE = Decimal("0.01")


async def _gateways(port: int, token: str, team: str, gateways: int, timeout: float, deadline: float) -> dict:
    stats = {"granted": 0, "refused": 0, "degraded": 0, "failures": [], "ingested": 0}
    rng = random.Random(gateways)

    async def gateway(n: int):
        conn = Connection(port, timeout)
        try:
            while time.monotonic() < deadline:
                request_id = f"{team}-{n}-{uuid.uuid4().hex[:12]}"
                body = json.dumps(
                    {"team_alias": team, "amount": str(ESTIMATE), "request_id": request_id, "ttl_seconds": 60}
                ).encode()
                status, raw = await conn.request(http_request("/api/v1/budget/reserve", port, token, body))
                if status != 200:
                    stats["failures"].append(f"reserve HTTP {status}: {raw[:200]!r}")
                    return
                answer = json.loads(raw)
                if answer.get("degraded"):
                    stats["degraded"] += 1
                if not answer["allowed"]:
                    stats["refused"] += 1
                    return
                stats["granted"] += 1
                cost = Decimal(rng.randint(50, 100)) / 10_000  # $0.0050–$0.0100: never above the estimate
                event = {
                    "request_id": request_id, "team_alias": team, "model": "bench-gateway-model",
                    "prompt_tokens": 100, "output_tokens": 50, "latency_ms": 100, "response_cost": float(cost),
                }  # fmt: skip
                status, raw = await conn.request(
                    http_request("/api/v1/events", port, token, json.dumps({"events": [event]}).encode())
                )
                if status != 200 or json.loads(raw).get("accepted") != 1:
                    stats["failures"].append(f"ingest HTTP {status}: {raw[:200]!r}")
                    return
                stats["ingested"] += 1
        finally:
            conn.close()

    await asyncio.gather(*(gateway(n) for n in range(gateways)))
    return stats


def overshoot_phase(args, server: Server, token: str, team: str, gateways: int) -> dict:
    log(f"overshoot: {gateways} concurrent gateways on team {team} (hard ${LIMIT})")
    t = time.perf_counter()
    stats = asyncio.run(
        _gateways(server.port, token, team, gateways, args.timeout, time.monotonic() + args.phase_seconds)
    )
    stats["wall"] = time.perf_counter() - t
    with bench_connect(args) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*), coalesce(sum(e.cost), 0) FROM metrics_usageevent e JOIN teams_team t ON t.id = e.team_id "
            "WHERE t.alias = %s",
            [team],
        )
        events, units = cur.fetchone()
        cur.execute(
            "SELECT count(*) FROM billing_reservation r JOIN teams_team t ON t.id = r.team_id "
            "WHERE t.alias = %s AND r.state <> 'settled'",
            [team],
        )
        (unsettled,) = cur.fetchone()
    spend = Decimal(units).scaleb(-10)
    stats.update(spend=spend, events=events, unsettled=unsettled, overshoot=max(spend - LIMIT, Decimal(0)))
    if stats["failures"]:
        raise BenchFailure(f"{len(stats['failures'])} failed requests, first: {stats['failures'][0]}")
    if stats["degraded"]:
        raise BenchFailure(f"{stats['degraded']} degraded answers: the store was not reachable")
    if events != stats["granted"] or unsettled:
        raise BenchFailure(f"{stats['granted']} granted, {events} events stored, {unsettled} reservations unsettled")
    log(
        f"  granted {stats['granted']}, refused {stats['refused']}, spend ${spend:.4f} of ${LIMIT}, "
        f"overshoot ${stats['overshoot']}, {stats['wall']:.1f} s"
    )
    return stats


async def _reserves(port: int, token: str, team: str, requests: int, clients: int, rate: float | None,
                    timeout: float) -> dict:  # fmt: skip
    latencies: list[float] = []
    failures: list[str] = []
    bodies = [
        http_request(
            "/api/v1/budget/reserve", port, token,
            json.dumps({"team_alias": team, "amount": "0.0001", "ttl_seconds": 5}).encode(),
        )
        for _ in range(requests)
    ]
    queue = iter(range(requests))
    t0 = time.perf_counter()

    async def client():
        conn = Connection(port, timeout)
        try:
            for i in queue:
                if rate:
                    scheduled = t0 + i / rate
                    delay = scheduled - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    started = scheduled
                else:
                    started = time.perf_counter()
                status, raw = await conn.request(bodies[i])
                latencies.append(time.perf_counter() - started)
                if status != 200 or not json.loads(raw).get("allowed") or json.loads(raw).get("degraded"):
                    failures.append(f"reserve {i}: HTTP {status}: {raw[:200]!r}")
        finally:
            conn.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    latencies.sort()
    return {"latencies": latencies, "failures": failures, "wall": wall, "rate": len(latencies) / wall}


def latency_phase(args, server: Server, token: str, *, rate: float | None) -> dict:
    label = f"paced to {rate:.0f}/s" if rate else "closed loop"
    requests = int(rate * args.paced_seconds) if rate else args.closed_requests
    log(f"reserve latency: {args.clients} clients, {requests} reserves, {label}")
    result = asyncio.run(_reserves(server.port, token, "chatbot", requests, args.clients, rate, args.timeout))
    if result["failures"]:
        raise BenchFailure(f"{len(result['failures'])} failed reserves, first: {result['failures'][0]}")
    lat = result["latencies"]
    result.update(p50=percentile(lat, 50) * 1000, p99=percentile(lat, 99) * 1000, label=label)
    log(f"  {result['rate']:.0f} reserves/s, p50 {result['p50']:.1f} ms, p99 {result['p99']:.1f} ms")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Sync workers, as many as cores: a reservation's locked part is one round trip, but a database
    # backend holding a budget's lock that waits for a core holds up every gateway of that budget, so
    # more processes than cores cost more than they overlap (2026-12-07, closed loop: 2 sync workers
    # 462 reserves/s, 3 → 438/s, 6 → 418/s; before the one-round-trip change 2 × 4 gthread measured
    # 116/s and 4 sync 191/s).
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2: the cores)")
    parser.add_argument("--threads", type=int, default=1, help="threads per worker; >1 selects gthread (default 1)")
    parser.add_argument("--worker-class", default=None)
    parser.add_argument("--clients", type=int, default=50, help="latency clients (default 50)")
    parser.add_argument(
        "--rates", default="300,100", help="paced runs in reserves/s, comma-separated (default 300,100)"
    )
    parser.add_argument("--paced-seconds", type=float, default=10.0, help="length of each paced run (default 10)")
    parser.add_argument("--closed-requests", type=int, default=3000, help="reserves in the closed loop")
    parser.add_argument("--phase-seconds", type=float, default=120.0, help="time bound of each overshoot phase")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout (s)")
    parser.add_argument("--db-name", default="llmcost_bench_budget")
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--pg-user", default="postgres")
    parser.add_argument("--max-seconds", type=int, default=900, help="the whole run stops after this")
    args = parser.parse_args(argv)
    args.secret_key = secrets.token_urlsafe(32)

    def alarm(signum, frame):
        raise BenchFailure(f"the run took longer than --max-seconds={args.max_seconds}")

    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(args.max_seconds)
    server = None
    try:
        token = prepare_database(args)
        manage(args, "create_budget", "bench", "--amount", "1000000", "--period", "monthly", "--hard",
               "--name", "organization")  # fmt: skip
        for team, amount in (("analytics", LIMIT), ("code-assist", LIMIT), ("chatbot", Decimal(1_000_000))):
            manage(args, "create_budget", "bench", "--team", team, "--amount", str(amount), "--period", "monthly",
                   "--hard", "--name", team)  # fmt: skip
        with tempfile.TemporaryDirectory() as workdir:
            server = start_server(args, Path(workdir))
            at_50 = overshoot_phase(args, server, token, "analytics", 50)
            at_200 = overshoot_phase(args, server, token, "code-assist", 200)
            paced = [latency_phase(args, server, token, rate=float(rate)) for rate in args.rates.split(",") if rate]
            closed = latency_phase(args, server, token, rate=None)
            stop_server(server)
            server = None
        print()
        kind = args.worker_class or ("gthread" if args.threads > 1 else "sync")
        print(f"bench-budget ({args.workers} {kind} workers × {args.threads} threads, PostgreSQL, no Redis)")
        for gateways, stats in ((50, at_50), (200, at_200)):
            print(
                f"  {gateways:>3} gateways: granted {stats['granted']}, spend ${stats['spend']:.4f} of ${LIMIT}, "
                f"overshoot ${stats['overshoot']}, every hold settled"
            )
        for run in paced:
            print(
                f"  reserve, {args.clients} clients {run['label']}: {run['rate']:.0f}/s answered, "
                f"p50 {run['p50']:.1f} ms, p99 {run['p99']:.1f} ms (target at 300/s: p99 ≤ 10 ms)"
            )
        print(
            f"  reserve, {args.clients} clients closed loop (ceiling): {closed['rate']:.0f}/s, "
            f"p50 {closed['p50']:.1f} ms, p99 {closed['p99']:.1f} ms"
        )
        return 0
    except BenchFailure as failure:
        log(f"FAILED: {failure}")
        return 1
    finally:
        signal.alarm(0)
        stop_server(server)
        drop_database(args)


if __name__ == "__main__":
    sys.exit(main())
