#!/usr/bin/env python
"""Server CPU of ingest, measured in-process: per 1,000 batched events and per /track request.

    .venv/bin/python tests/benchmarks/profile_ingest.py [--batches 20] [--track 1000] [--profile]

Creates a fresh PostgreSQL database (`llmcost_profile`, dropped at the end) with the same
management commands as bench_ingest.py, then serves the same events through Django's test client
in this process (the whole middleware, DRF and service stack, without an HTTP server) and reads
the CPU time of this process and of its PostgreSQL backend. No wall clock is involved, so two
versions of the code can be compared on a machine others are using: other processes slow a
core down somewhat, but they are not counted as this work's time. Run each version a few times and
compare the lowest figures. `--profile` prints the functions that used the most CPU.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import random
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ingest as bench  # the same database set-up and events as the benchmark

CLK_TCK = os.sysconf("SC_CLK_TCK")


def backend_cpu_seconds(connection) -> float:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    fields = Path(f"/proc/{pid}/stat").read_text()
    fields = fields[fields.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def measure(client, connection, path: str, bodies: list[bytes], profiler) -> tuple[float, float]:
    """(CPU seconds of this process, of its PostgreSQL backend) to serve `bodies`."""
    backend, process = backend_cpu_seconds(connection), time.process_time()
    if profiler:
        profiler.enable()
    for body in bodies:
        response = client.post(path, body, content_type="application/json")
        if response.status_code != 200:
            raise bench.BenchFailure(f"{path}: HTTP {response.status_code}: {response.content[:300]!r}")
    if profiler:
        profiler.disable()
    return time.process_time() - process, backend_cpu_seconds(connection) - backend


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=20, help="1,000-event batches to time (default 20)")
    parser.add_argument("--track", type=int, default=1000, help="/track requests to time (default 1,000)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the timed requests")
    parser.add_argument("--db-name", default="llmcost_profile")
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--pg-user", default="postgres")
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args(argv)
    args.secret_key = secrets.token_urlsafe(50)

    try:
        token = bench.prepare_database(args)
        os.environ.update(bench.server_env(args))
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmcost_project.settings")
        sys.path.insert(0, str(bench.ROOT))
        import django

        django.setup()
        from django.db import connection
        from django.test import Client

        client = Client(HTTP_AUTHORIZATION=f"Bearer {token}", SERVER_NAME=bench.HOST)
        rng = random.Random(2024)
        batches = bench.batch_bodies(bench.generate_events(1000 * (args.batches + 2), rng), 1000)
        singles = [
            json.dumps(bench.seed_shape(event)).encode()
            for event in bench.generate_events(args.track + 50, rng, prefix="track-")
        ]
        # Warm up: imports, the price book, the connection, the temporary table.
        measure(client, connection, "/api/v1/events", batches[:2], None)
        measure(client, connection, "/api/v1/metrics/track", singles[:50], None)

        profiler = cProfile.Profile(time.process_time) if args.profile else None
        python, postgres = measure(client, connection, "/api/v1/events", batches[2:], profiler)
        per_thousand = 1000 / args.batches
        bench.log(
            f"batch ingest: {python * per_thousand:.0f} ms Python + {postgres * per_thousand:.0f} ms PostgreSQL "
            f"= {(python + postgres) * per_thousand:.0f} ms CPU per 1,000 events "
            f"({args.batches} batches of 1,000)"
        )
        python, postgres = measure(client, connection, "/api/v1/metrics/track", singles[50:], profiler)
        bench.log(
            f"/track:       {1000 * python / args.track:.2f} ms Python + {1000 * postgres / args.track:.2f} ms "
            f"PostgreSQL = {1000 * (python + postgres) / args.track:.2f} ms CPU per request ({args.track} requests)"
        )
        connection.close()
        if profiler:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(os.environ.get("PROFILE_FILTER", ""), 40)
    except bench.BenchFailure as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep_db:
            bench.drop_database(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
