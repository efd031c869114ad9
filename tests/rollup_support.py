"""Oracles for the rollup tests: what the dashboard and the rollup tables must say, computed in Python.

Every expected figure is summed here from the raw `UsageEvent` rows with `Decimal` (never through the
rollup code or the selectors), so a test compares the application against an independent answer.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import urlsplit, urlunsplit

from django.db import connection

from billing.pricing.money import to_units
from metrics import sketch
from metrics.models import DailyRollup, DailyTeamTotal, DirtyDay, DirtyHour, HourlyRollup, HourlyTeamTotal, UsageEvent
from tests.conftest import api

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)

EVENT_FIELDS = (
    "organization_id", "team_id", "timestamp", "model", "user_id", "prompt_tokens", "output_tokens",
    "cached_tokens", "cache_write_tokens", "total_tokens", "cost", "status", "cache_hit", "is_priced", "latency_ms",
    "time_to_first_token_ms", "query_type",
)
INT_FIELDS = ("requests", "prompt_tokens", "output_tokens", "cached_tokens", "cache_write_tokens", "total_tokens",
              "errors", "cache_hits", "unpriced", "ttft_count")


def hour_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def day_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- making data -----------------------------------------------------------------------------------------

USERS = ("alice@acme.test", "bob@acme.test", "carol@acme.test", None)  # None: the event names no user
MODELS = ("test-model", "test-model-mini", "other-model", "mystery-model")  # mini: priced by test-model's glob


def random_event(rng: random.Random, *, moment: datetime, request_id: str, teams=("chatbot", "search", "ops"),
                 users=USERS, models=MODELS) -> dict:
    prompt = rng.randint(0, 6000)
    body = {
        "request_id": request_id,
        "timestamp": iso(moment),
        "model": rng.choice(models),
        "prompt_tokens": prompt,
        "output_tokens": rng.randint(0, 3000),
        "cached_tokens": rng.randint(0, prompt) if rng.random() < 0.4 else 0,
        # 2 ms .. 20 s, log-uniform with sub-millisecond digits: every latency is above 1 ms
        "latency_ms": round(10 ** rng.uniform(0.31, 4.3), 3),
        "cache_hit": rng.random() < 0.2,
        "status": "error" if rng.random() < 0.12 else "success",
        "team_alias": rng.choice(teams),
    }
    if rng.random() < 0.5:
        body["time_to_first_token_ms"] = round(body["latency_ms"] * rng.uniform(0.05, 0.9), 3)
    if body["status"] == "error":
        body["error_message"] = "upstream 500"
    if body["model"] == "mystery-model":  # unpriced: the client's own figure is the cost
        body["response_cost"] = Decimal(rng.randint(0, 50_000)) / Decimal(1_000_000)
    user = rng.choice(users)
    if user is not None:
        body["user_id"] = user
    query_type = rng.choice(("chat", "rag", None))
    if query_type is not None:
        body["query_type"] = query_type
    if rng.random() < 0.25:  # prompt tokens written to the provider's cache: part of the prompt
        body["cache_write_tokens"] = rng.randint(0, prompt - body["cached_tokens"])
    return body


def random_events(rng: random.Random, *, count: int, newest: datetime, span: timedelta, prefix: str, **kwargs):
    """`count` events at random moments in (newest - span, newest]."""
    seconds = span.total_seconds()
    return [
        random_event(rng, moment=newest - timedelta(seconds=rng.uniform(0, seconds)), request_id=f"{prefix}-{i}",
                     **kwargs)
        for i in range(count)
    ]


def post_events(token: str, events: list[dict]) -> None:
    """POST through /api/v1/events, 1,000 at a time; every event must be accepted."""
    for start in range(0, len(events), 1000):
        chunk = events[start : start + 1000]
        body = json.loads(json.dumps(chunk, default=str))
        for item in body:  # JSON numbers, not strings, for decimals
            if "response_cost" in item:
                item["response_cost"] = float(item["response_cost"])
        response = api(token).post("/api/v1/events", body, format="json")
        assert response.status_code == 200, response.content[:2000]
        data = response.json()
        assert data["rejected"] == [] and data["accepted"] == len(chunk), data


# --- the dashboard, expected and actual ------------------------------------------------------------------


def raw_rows(*, organization, start=None, end=None, team_ids=None, model_filter=None) -> list[dict]:
    rows = []
    for row in UsageEvent.objects.filter(organization=organization).values(*EVENT_FIELDS):
        if start is not None and row["timestamp"] < start:
            continue
        if end is not None and row["timestamp"] >= end:
            continue
        if team_ids is not None and row["team_id"] not in team_ids:
            continue
        if model_filter and model_filter.lower() not in row["model"].lower():
            continue
        rows.append(row)
    return rows


def nearest_rank(values: list[float], p: int) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def expected_dashboard(rows: list[dict]) -> dict:
    n = len(rows)
    errors = sum(1 for r in rows if r["status"] == "error")
    hits = sum(1 for r in rows if r["cache_hit"])
    models: dict[str, dict] = {}
    trend: dict[str, dict] = {}
    for r in rows:
        m = models.setdefault(r["model"], {"count": 0, "tokens": 0, "cost": Decimal(0)})
        m["count"] += 1
        m["tokens"] += r["total_tokens"]
        m["cost"] += r["cost"]
        t = trend.setdefault(hour_of(r["timestamp"]).strftime("%Y-%m-%d %H:00"), {"cost": Decimal(0), "count": 0})
        t["cost"] += r["cost"]
        t["count"] += 1
    latencies = [r["latency_ms"] for r in rows]
    return {
        "total_cost": sum((r["cost"] for r in rows), Decimal(0)),
        "total_tokens": sum(r["total_tokens"] for r in rows),
        "total_requests": n,
        "error_rate": round(100 * errors / n, 2) if n else 0.0,
        "cache_hit_rate": round(100 * hits / n, 2) if n else 0.0,
        "unpriced_requests": sum(1 for r in rows if not r["is_priced"]),
        "avg_latency_ms": (sum(latencies) / n) if n else 0.0,
        "model_usage": dict(sorted(models.items(), key=lambda item: (-item[1]["cost"], item[0]))),
        "hourly_trend": dict(sorted(trend.items())),
        "percentiles": {f"p{p}": nearest_rank(latencies, p) for p in (50, 95, 99)},
    }


def get_dashboard(token: str, **params) -> dict:
    response = api(token).get("/api/v1/dashboard/metrics", params)
    assert response.status_code == 200, response.content[:2000]
    # Decimals for every JSON number with a fraction: money is compared exactly, not as a float.
    return json.loads(response.content, parse_float=Decimal)


def parse_moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _money(value: Decimal) -> Decimal:
    """The test data keep every sum under 15 significant digits, so the API's JSON float carries it exactly."""
    assert len(value.normalize().as_tuple().digits) <= 15, f"test data too precise for a JSON float: {value}"
    return value


def assert_dashboard_equals_raw(body: dict, rows: list[dict], *, label: str = "") -> None:
    """The dashboard answer equals the same figures summed over the raw events (`rows`)."""
    want = expected_dashboard(rows)
    where = f"[{label}] " if label else ""
    assert body["total_requests"] == want["total_requests"], f"{where}total_requests"
    assert body["total_tokens"] == want["total_tokens"], f"{where}total_tokens"
    assert body["total_cost"] == _money(want["total_cost"]), (
        f"{where}total_cost {body['total_cost']} != {want['total_cost']}"
    )
    assert body["error_rate"] == Decimal(repr(want["error_rate"])), f"{where}error_rate"
    assert body["cache_hit_rate"] == Decimal(repr(want["cache_hit_rate"])), f"{where}cache_hit_rate"
    assert body["unpriced_requests"] == want["unpriced_requests"], f"{where}unpriced_requests"
    assert math.isclose(float(body["avg_latency_ms"]), want["avg_latency_ms"], rel_tol=1e-6, abs_tol=1e-3), (
        f"{where}avg_latency_ms {body['avg_latency_ms']} != {want['avg_latency_ms']}"
    )
    got_models = {
        model: {"count": v["count"], "tokens": v["tokens"], "cost": Decimal(v["cost"]) if isinstance(v["cost"], int)
                else v["cost"]}
        for model, v in body["model_usage"].items()
    }
    want_models = {m: {**v, "cost": _money(v["cost"])} for m, v in want["model_usage"].items()}
    assert got_models == want_models, f"{where}model_usage"
    assert list(got_models) == list(want_models), f"{where}model_usage order (costliest first)"
    got_trend = {
        hour: {"cost": Decimal(v["cost"]) if isinstance(v["cost"], int) else v["cost"], "count": v["count"]}
        for hour, v in body["hourly_trend"].items()
    }
    want_trend = {h: {"cost": _money(v["cost"]), "count": v["count"]} for h, v in want["hourly_trend"].items()}
    assert got_trend == want_trend, f"{where}hourly_trend"
    assert sum(v["count"] for v in got_trend.values()) == body["total_requests"], f"{where}trend count sum"
    assert sum((v["cost"] for v in got_trend.values()), Decimal(0)) == Decimal(body["total_cost"]), (
        f"{where}trend cost sum"
    )
    assert_percentiles_close(body, want["percentiles"], label=label)


def assert_percentiles_close(body: dict, exact: dict, *, label: str = "") -> None:
    """Each P50/P95/P99 is within 1 % of the exact nearest-rank value (0.0005 ms allowed for the 3-decimal rounding)."""
    got = body["latency_percentiles_ms"]
    for name, value in exact.items():
        if value is None:
            assert got[name] is None, f"[{label}] {name}"
            continue
        assert got[name] is not None, f"[{label}] {name} missing"
        error = abs(float(got[name]) - value)
        assert error <= 0.01 * value + 0.0005, f"[{label}] {name}: API {got[name]} vs exact {value}"


# --- the rollup tables, expected and actual --------------------------------------------------------------


def _empty() -> dict:
    return {**dict.fromkeys(INT_FIELDS, 0), "cost": Decimal(0), "latency_sum_ms": 0.0, "ttft_sum_ms": 0.0,
            "latency_sketch": defaultdict(int), "by_model": {}}


def expected_rollups(bucket_of, organization_ids=None, *, daily: bool = True) -> dict[tuple, dict]:
    """(org, start, team, model, user_id, query_type, is_team_total) -> sums, per bucket (hour or day).

    Team-total rows (user_id "") are kept per model, and daily also per query type; per-user rows
    (daily only) per team and user, with model and query type "" and no latency sketch.
    """
    rows: dict[tuple, dict] = defaultdict(_empty)
    events = UsageEvent.objects.values(*EVENT_FIELDS)
    if organization_ids is not None:
        events = events.filter(organization_id__in=organization_ids)
    for e in events:
        start = bucket_of(e["timestamp"])
        keys = [(e["organization_id"], start, e["team_id"], e["model"], "", e["query_type"] if daily else "", True)]
        if daily:
            keys.append((e["organization_id"], start, e["team_id"], "", e["user_id"], "", False))
        for key in keys:
            r = rows[key]
            r["requests"] += 1
            for name in ("prompt_tokens", "output_tokens", "cached_tokens", "cache_write_tokens", "total_tokens"):
                r[name] += e[name]
            r["cost"] += e["cost"]
            r["errors"] += e["status"] == "error"
            r["cache_hits"] += bool(e["cache_hit"])
            r["unpriced"] += not e["is_priced"]
            r["latency_sum_ms"] += e["latency_ms"]
            if e["time_to_first_token_ms"] is not None:
                r["ttft_sum_ms"] += e["time_to_first_token_ms"]
                r["ttft_count"] += 1
            if key[-1]:  # per-user rows keep no sketch, but each model's share
                r["latency_sketch"][sketch.bucket_of(e["latency_ms"])] += 1
            else:
                share = r["by_model"].setdefault(e["model"], [0, 0, 0])
                share[0] += 1
                share[1] += e["total_tokens"]
                share[2] += to_units(e["cost"])
    return dict(rows)


def expected_team_totals(bucket_of, organization_ids=None) -> dict[tuple, dict]:
    """(org, start, team) -> sums of every event of the team in the bucket."""
    totals: dict[tuple, dict] = defaultdict(_empty)
    for (org, start, team, _model, _user, _query_type, is_team_total), sums in expected_rollups(
        bucket_of, organization_ids
    ).items():
        if not is_team_total:
            continue
        into = totals[(org, start, team)]
        for name, value in sums.items():
            if name == "by_model":
                continue
            if name == "latency_sketch":
                for index, count in value.items():
                    into[name][index] += count
            else:
                into[name] += value
    return dict(totals)


def assert_team_totals_equal_raw(organization_ids=None) -> None:
    """One team-total row per team and bucket, equal to the raw sums."""
    for model_class, bucket_of in ((HourlyTeamTotal, hour_of), (DailyTeamTotal, day_of)):
        name = model_class.__name__
        want = expected_team_totals(bucket_of, organization_ids)
        rows = model_class.objects.all()
        if organization_ids is not None:
            rows = rows.filter(organization_id__in=organization_ids)
        got = {(r["organization_id"], r["start"], r["team_id"]): r for r in rows.values()}
        assert len(got) == rows.count(), f"{name}: duplicate rows"
        assert set(got) == set(want), f"{name}: missing {set(want) - set(got)} extra {set(got) - set(want)}"
        for key, w in want.items():
            g = got[key]
            for field in INT_FIELDS:
                assert g[field] == w[field], f"{name} {key}: {field} {g[field]} != {w[field]}"
            assert g["cost"] == w["cost"], f"{name} {key}: cost"
            for field in ("latency_sum_ms", "ttft_sum_ms"):
                assert math.isclose(g[field], w[field], rel_tol=1e-9, abs_tol=1e-6), f"{name} {key}: {field}"
            assert {int(k): v for k, v in g["latency_sketch"].items()} == dict(w["latency_sketch"]), (
                f"{name} {key}: latency sketch"
            )


def rollup_table(model_class, organization_ids=None) -> tuple[dict[tuple, dict], int]:
    """The table's rows by key, and the number of rows (more rows than keys would be duplicates)."""
    rows = model_class.objects.all()
    if organization_ids is not None:
        rows = rows.filter(organization_id__in=organization_ids)
    table, count = {}, 0
    for row in rows.values():
        count += 1
        key = (row["organization_id"], row["start"], row["team_id"], row["model"], row["user_id"],
               row["query_type"], row["is_team_total"])
        table[key] = row
    return table, count


def assert_rollups_equal_raw(organization_ids=None) -> None:
    """Hourly and daily rows equal the raw sums per bucket and grain: nothing lost, nothing twice."""
    for model_class, bucket_of in ((HourlyRollup, hour_of), (DailyRollup, day_of)):
        name = model_class.__name__
        want = expected_rollups(bucket_of, organization_ids, daily=model_class is DailyRollup)
        got, count = rollup_table(model_class, organization_ids)
        assert count == len(got), f"{name}: {count - len(got)} duplicate rows"
        missing = sorted(set(want) - set(got), key=str)[:5]
        extra = sorted(set(got) - set(want), key=str)[:5]
        assert not missing and not extra, f"{name}: missing {missing} extra {extra}"
        for key, w in want.items():
            g = got[key]
            for field in INT_FIELDS:
                assert g[field] == w[field], f"{name} {key}: {field} {g[field]} != {w[field]}"
            assert g["cost"] == w["cost"], f"{name} {key}: cost {g['cost']} != {w['cost']}"
            for field in ("latency_sum_ms", "ttft_sum_ms"):
                assert math.isclose(g[field], w[field], rel_tol=1e-9, abs_tol=1e-6), f"{name} {key}: {field}"
            got_sketch = {int(k): v for k, v in g["latency_sketch"].items()}
            assert got_sketch == dict(w["latency_sketch"]), f"{name} {key}: latency sketch"
            assert g["by_model"] == w["by_model"], f"{name} {key}: shares by model"
    assert_team_totals_equal_raw(organization_ids)


def rollup_contents() -> dict[str, list[tuple]]:
    """Every rollup row's content (not its id), sorted: for comparing two refreshes row for row."""
    contents = {}
    for model_class in (HourlyRollup, DailyRollup, HourlyTeamTotal, DailyTeamTotal):
        fields = [f.attname for f in model_class._meta.concrete_fields if f.attname != "id"]
        rows = []
        for values in model_class.objects.values_list(*fields):
            rows.append(tuple(sorted(v.items()) if isinstance(v, dict) else v for v in values))
        contents[model_class.__name__] = sorted(rows, key=repr)
    return contents


def no_dirty_marks() -> bool:
    return not DirtyHour.objects.exists() and not DirtyDay.objects.exists()


# --- broker isolation for real workers -------------------------------------------------------------------


def isolated_broker_url(broker_url: str) -> str | None:
    """A Redis broker URL on a database of its own for this test database, or None for other brokers.

    Several test runs may share one Redis server (and its database 0): a worker of another run would
    take our tasks and run them against its own database. The filesystem broker is per-run already.
    """
    if not broker_url.startswith(("redis://", "rediss://")):
        return None
    name = connection.settings_dict["NAME"]
    db = 1 + int(hashlib.sha256(str(name).encode()).hexdigest(), 16) % 15
    parts = urlsplit(broker_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))
