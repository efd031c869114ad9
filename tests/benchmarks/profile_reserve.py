#!/usr/bin/env python
"""Server CPU of a budget reservation, measured in-process: Python and PostgreSQL per reserve.

    .venv/bin/python tests/benchmarks/profile_reserve.py [--reserves 1000] [--profile]

Creates a fresh PostgreSQL database (`llmcost_profile_reserve`, dropped at the end) with the set-up
of bench_ingest.py, a hard organization budget and a hard team budget (bench_budget.py's latency
phase), then reserves through Django's test client in this process and reads the CPU time of this
process and of its PostgreSQL backend, as profile_ingest.py does. Prints the queries of one
reservation too. `--profile` prints the functions that used the most CPU.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ingest as bench  # the same database set-up as the benchmarks
from profile_ingest import backend_cpu_seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reserves", type=int, default=1000, help="reservations to time (default 1,000)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the timed requests")
    parser.add_argument("--db-name", default="llmcost_profile_reserve")
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--pg-user", default="postgres")
    args = parser.parse_args(argv)
    args.secret_key = secrets.token_urlsafe(50)
    try:
        token = bench.prepare_database(args)
        for scope in ([], ["--team", "chatbot"]):
            bench.manage(args, "create_budget", "bench", *scope, "--amount", "1000000", "--period", "monthly",
                         "--hard")  # fmt: skip
        os.environ.update(bench.server_env(args))
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmcost_project.settings")
        sys.path.insert(0, str(bench.ROOT))
        import django

        django.setup()
        from django.db import connection
        from django.test import Client
        from django.test.utils import CaptureQueriesContext

        client = Client(HTTP_AUTHORIZATION=f"Bearer {token}", SERVER_NAME=bench.HOST)
        body = json.dumps({"team_alias": "chatbot", "amount": "0.0001", "ttl_seconds": 5})

        def reserve():
            response = client.post("/api/v1/budget/reserve", body, content_type="application/json")
            if response.status_code != 200 or not response.json()["allowed"]:
                raise bench.BenchFailure(f"reserve: HTTP {response.status_code}: {response.content[:300]!r}")

        for _ in range(50):  # warm up: imports, the price book, the connection, the cached spend
            reserve()
        with CaptureQueriesContext(connection) as queries:
            reserve()
        one = [query["sql"] for query in queries.captured_queries]  # read now: each request resets the log
        for sql in one:
            bench.log(f"  query: {sql[:110]}…")
        profiler = cProfile.Profile(time.process_time) if args.profile else None
        backend, process = backend_cpu_seconds(connection), time.process_time()
        if profiler:
            profiler.enable()
        for _ in range(args.reserves):
            reserve()
        if profiler:
            profiler.disable()
        python = (time.process_time() - process) / args.reserves * 1000
        postgres = (backend_cpu_seconds(connection) - backend) / args.reserves * 1000
        bench.log(f"reserve: {python:.2f} ms Python + {postgres:.2f} ms PostgreSQL = {python + postgres:.2f} ms CPU "
                  f"per reservation ({args.reserves} reservations, {len(one)} queries each)")  # fmt: skip
        connection.close()
        if profiler:
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)
    except bench.BenchFailure as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        bench.drop_database(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
