"""GET /api/v1/dashboard/metrics and /api/v1/requests/recent, from every side."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from metrics.rollups import dirty_rollups_refresh
from tests.conftest import api, event

DASHBOARD = "/api/v1/dashboard/metrics"
RECENT = "/api/v1/requests/recent"
MILLION = Decimal(1_000_000)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """The world's four users are created with passwords: hash them cheaply in these tests."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def money(value) -> Decimal:
    return Decimal(str(value))


def iso(moment: datetime) -> str:
    return moment.isoformat()


def hour_key(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:00")


def expected_cost(item: dict) -> Decimal:
    """What the event should cost: test-model at $2/M in, $0.50/M cached, $8/M out; else the client's figure."""
    if item["model"] != "test-model":
        return Decimal(str(item.get("response_cost", 0)))
    prompt, cached, output = item.get("prompt_tokens", 0), item.get("cached_tokens", 0), item.get("output_tokens", 0)
    return ((prompt - cached) * Decimal(2) + cached * Decimal("0.5") + output * Decimal(8)) / MILLION


def tokens_of(item: dict) -> int:
    return item.get("total_tokens", item.get("prompt_tokens", 0) + item.get("output_tokens", 0))


def send(token, items):
    response = api(token).post("/api/v1/events", items, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["accepted"] == len(items)


def get(token, url, **params):
    return api(token).get(url, params)


def nearest_rank(values, p):
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p * len(ordered) / 100)) - 1]


@dataclass
class Data:
    base: datetime  # a whole hour two days ago
    acme: list[dict]
    globex: list[dict]

    @property
    def window(self) -> dict:
        return {"start": iso(self.base), "end": iso(self.base + timedelta(hours=3))}

    def acme_where(self, **conditions) -> list[dict]:
        return [e for e in self.acme if all(e.get(k) == v for k, v in conditions.items())]


@pytest.fixture
def data(world) -> Data:
    base = (datetime.now(UTC) - timedelta(days=2)).replace(minute=0, second=0, microsecond=0)

    def at(minutes):
        return iso(base + timedelta(minutes=minutes))

    acme = [
        event(request_id="a1", team_alias="chatbot", prompt_tokens=1000, cached_tokens=400, output_tokens=500,
              latency_ms=100, user_id="alice", timestamp=at(5)),
        event(request_id="a2", team_alias="chatbot", prompt_tokens=2000, output_tokens=100, latency_ms=200,
              cache_hit=True, user_id="bob", timestamp=at(10)),
        event(request_id="a3", team_alias="search", prompt_tokens=10, output_tokens=10, latency_ms=300,
              status="error", error_message="boom", user_id="alice", timestamp=at(65)),
        event(request_id="a4", team_alias="search", model="gpt-4o", response_cost=0.25, prompt_tokens=50,
              output_tokens=50, latency_ms=400, user_id="carol", timestamp=at(121)),
        event(request_id="a5", team_alias="chatbot", model="gpt-4", response_cost=0.125, latency_ms=500,
              user_id="alice", timestamp=at(150)),
    ]
    globex = [
        event(request_id="g1", team_alias="chatbot", prompt_tokens=10**6, output_tokens=10**6, latency_ms=9999,
              timestamp=at(5)),
        event(request_id="g2", team_alias="chatbot", model="gpt-4", response_cost=3, latency_ms=8888,
              timestamp=at(70)),
    ]
    send(world.both, acme)
    send(world.globex_token, globex)
    return Data(base=base, acme=acme, globex=globex)


def assert_totals(answer: dict, items: list[dict]):
    assert answer["total_requests"] == len(items)
    assert money(answer["total_cost"]) == sum((expected_cost(e) for e in items), Decimal(0))
    assert answer["total_tokens"] == sum(tokens_of(e) for e in items)
    if items:
        average = sum(e["latency_ms"] for e in items) / len(items)
        assert answer["avg_latency_ms"] == pytest.approx(average, abs=0.001)  # shown to 3 places


# --- dashboard -----------------------------------------------------------------------------------


def test_it_totals_the_tokens_organization(world, data):
    response = get(world.read, DASHBOARD, **data.window)

    assert response.status_code == 200, response.content
    answer = response.json()
    assert_totals(answer, data.acme)
    assert answer["total_cost"] == pytest.approx(0.3853)
    assert answer["error_rate"] == 20.0
    assert answer["cache_hit_rate"] == 20.0
    assert answer["unpriced_requests"] == 2
    assert set(answer["model_usage"]) == {"test-model", "gpt-4o", "gpt-4"}
    for model, usage in answer["model_usage"].items():
        items = [e for e in data.acme if e["model"] == model]
        assert usage["count"] == len(items)
        assert usage["tokens"] == sum(tokens_of(e) for e in items)
        assert money(usage["cost"]) == sum(expected_cost(e) for e in items)


def test_it_answers_in_the_seeds_dashboard_shape(world, data):
    answer = get(world.read, DASHBOARD, time_range_hours=72).json()

    for key in ("total_cost", "total_tokens", "total_requests", "avg_latency_ms", "cache_hit_rate", "error_rate",
                "model_usage", "hourly_trend"):
        assert key in answer
    assert set(answer["model_usage"]["test-model"]) >= {"count", "tokens", "cost"}
    for bucket in answer["hourly_trend"].values():
        assert set(bucket) >= {"cost", "count"}


def test_it_shows_a_pinned_token_only_its_team(world, data):
    answer = get(world.pinned, DASHBOARD, **data.window).json()

    assert_totals(answer, data.acme_where(team_alias="chatbot"))
    assert set(answer["model_usage"]) == {"test-model", "gpt-4"}


def test_it_lets_a_pinned_token_name_its_own_team(world, data):
    answer = get(world.pinned, DASHBOARD, team_alias="chatbot", **data.window).json()

    assert_totals(answer, data.acme_where(team_alias="chatbot"))


def test_it_hides_other_teams_from_a_pinned_token(world, data):
    response = get(world.pinned, DASHBOARD, team_alias="search", **data.window)

    assert response.status_code == 404
    assert response.json()["status"] == "error"


def test_it_never_shows_acme_data_to_globex(world, data):
    answer = get(world.globex_token, DASHBOARD, **data.window).json()

    assert_totals(answer, data.globex)
    assert money(answer["total_cost"]) == Decimal(13)
    # globex has a "chatbot" too: the alias names globex's team, never acme's
    assert_totals(get(world.globex_token, DASHBOARD, team_alias="chatbot", **data.window).json(), data.globex)
    assert get(world.globex_token, DASHBOARD, team_alias="search", **data.window).status_code == 404


def test_it_filters_by_team(world, data):
    answer = get(world.read, DASHBOARD, team_alias="search", **data.window).json()

    assert_totals(answer, data.acme_where(team_alias="search"))


def test_it_answers_404_for_an_unknown_team(world, data):
    response = get(world.read, DASHBOARD, team_alias="nope", **data.window)

    assert response.status_code == 404
    assert response.json()["status"] == "error"


@pytest.mark.parametrize(
    "model_filter, models",
    [("gpt-4", {"gpt-4", "gpt-4o"}), ("gpt-4o", {"gpt-4o"}), ("TEST", {"test-model"}), ("claude", set())],
)
def test_it_filters_by_model_family(world, data, model_filter, models):
    answer = get(world.read, DASHBOARD, model_filter=model_filter, **data.window).json()

    assert_totals(answer, [e for e in data.acme if e["model"] in models])
    assert set(answer["model_usage"]) == models


def test_it_reads_an_explicit_range_with_an_exclusive_end(world, data):
    start, end = data.base + timedelta(hours=1), data.base + timedelta(hours=2, minutes=1)

    answer = get(world.read, DASHBOARD, start=iso(start), end=iso(end)).json()

    assert_totals(answer, [data.acme[2]])  # a4 is exactly at `end`


def test_it_reads_a_range_that_does_not_start_on_the_hour(world, data):
    start, end = data.base + timedelta(minutes=7), data.base + timedelta(hours=2, minutes=31)

    answer = get(world.read, DASHBOARD, start=iso(start), end=iso(end)).json()

    assert_totals(answer, data.acme[1:])


@pytest.mark.parametrize("hours_after_end", [0, -1])
def test_it_refuses_a_start_not_before_the_end(world, data, hours_after_end):
    end = data.base
    start = end - timedelta(hours=hours_after_end)

    response = get(world.read, DASHBOARD, start=iso(start), end=iso(end))

    assert response.status_code == 400
    assert "start" in response.json()["errors"]


@pytest.mark.parametrize(
    "params, field",
    [
        ({"time_range_hours": "0"}, "time_range_hours"),
        ({"time_range_hours": "-3"}, "time_range_hours"),
        ({"time_range_hours": "abc"}, "time_range_hours"),
        ({"time_range_hours": "1000000"}, "time_range_hours"),
        ({"start": "garbage"}, "start"),
        ({"end": "2025-02-30T00:00:00Z"}, "end"),
        ({"team_alias": "x" * 101}, "team_alias"),
        ({"team_alias": ""}, "team_alias"),  # blank must not silently mean "every team"
        ({"model_filter": " "}, "model_filter"),
    ],
)
def test_it_rejects_bad_query_parameters(world, params, field):
    response = get(world.read, DASHBOARD, **params)

    assert response.status_code == 400
    assert response.json()["status"] == "error"
    assert field in response.json()["errors"]


def test_it_reads_the_last_24_hours_by_default_and_wider_when_asked(world):
    now = datetime.now(UTC)
    recent = event(request_id="recent", timestamp=iso(now - timedelta(hours=2)))
    older = event(request_id="older", timestamp=iso(now - timedelta(hours=30)), prompt_tokens=1)
    send(world.ingest, [recent, older])

    assert_totals(get(world.read, DASHBOARD).json(), [recent])
    assert_totals(get(world.read, DASHBOARD, time_range_hours=24).json(), [recent])
    assert_totals(get(world.read, DASHBOARD, time_range_hours=48).json(), [recent, older])
    assert_totals(get(world.read, DASHBOARD, time_range_hours=1).json(), [])


def test_it_answers_zeros_for_an_empty_range(world):
    answer = get(world.read, DASHBOARD).json()

    assert answer["total_requests"] == 0
    assert money(answer["total_cost"]) == 0
    assert answer["model_usage"] == {}
    assert answer["hourly_trend"] == {}
    assert answer["latency_percentiles_ms"] == {"p50": None, "p95": None, "p99": None}


def test_it_groups_the_trend_by_utc_hour(world, data):
    answer = get(world.read, DASHBOARD, **data.window).json()

    trend = answer["hourly_trend"]
    expected = {}
    for item in data.acme:
        key = hour_key(datetime.fromisoformat(item["timestamp"]))
        bucket = expected.setdefault(key, {"count": 0, "cost": Decimal(0)})
        bucket["count"] += 1
        bucket["cost"] += expected_cost(item)
    assert list(trend) == sorted(expected)
    assert next(iter(trend)) == hour_key(data.base)
    assert all(len(key) == len("2025-12-18 12:00") and key.endswith(":00") for key in trend)
    for key, bucket in expected.items():
        assert trend[key]["count"] == bucket["count"]
        assert money(trend[key]["cost"]) == bucket["cost"]


@pytest.mark.parametrize(
    "latencies",
    [
        list(range(1, 101)),
        [10, 20, 30, 40, 50, 60, 70, 80, 90, 100],
        [5.5, 1200, 3.25, 80, 80, 80, 13596.617, 0.75, 42, 250, 250, 999],
        [0, 0, 0, 7],
    ],
    ids=["1-to-100", "tens", "skewed", "zeros"],
)
def test_it_reports_nearest_rank_latency_percentiles(world, latencies):
    base = (datetime.now(UTC) - timedelta(hours=5)).replace(minute=0, second=0, microsecond=0)
    send(world.ingest, [
        event(request_id=f"p{i}", latency_ms=value, timestamp=iso(base + timedelta(seconds=i)))
        for i, value in enumerate(latencies)
    ])

    answer = get(world.read, DASHBOARD).json()

    percentiles = answer["latency_percentiles_ms"]
    for p in (50, 95, 99):
        exact = nearest_rank(latencies, p)
        # the sketch promises 1 % relative error
        assert percentiles[f"p{p}"] == pytest.approx(exact, rel=0.01, abs=1e-9), (p, percentiles)


# --- recent requests -----------------------------------------------------------------------------


def test_it_lists_recent_requests_newest_first(world, data):
    response = get(world.read, RECENT, limit=3)

    assert response.status_code == 200, response.content
    rows = response.json()
    assert [row["request_id"] for row in rows] == ["a5", "a4", "a3"]
    first = rows[0]
    assert first["team_alias"] == "chatbot"
    assert first["model"] == "gpt-4"
    assert money(first["response_cost"]) == money(first["cost"]) == Decimal("0.125")
    assert first["is_priced"] is False
    assert rows[2]["status"] == "error"
    assert rows[2]["error_message"] == "boom"


def test_it_lists_twenty_recent_requests_by_default(world):
    now = datetime.now(UTC)
    send(world.ingest, [event(request_id=f"r{i:02}", timestamp=iso(now - timedelta(minutes=i))) for i in range(25)])

    rows = get(world.read, RECENT).json()

    assert [row["request_id"] for row in rows] == [f"r{i:02}" for i in range(20)]


def test_it_lists_only_the_tokens_organization(world, data):
    assert [row["request_id"] for row in get(world.read, RECENT, limit=100).json()] == ["a5", "a4", "a3", "a2", "a1"]
    assert [row["request_id"] for row in get(world.globex_token, RECENT, limit=100).json()] == ["g2", "g1"]


def test_it_lists_only_a_pinned_tokens_team(world, data):
    assert [row["request_id"] for row in get(world.pinned, RECENT, limit=100).json()] == ["a5", "a2", "a1"]
    assert get(world.pinned, RECENT, team_alias="search").status_code == 404


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"team_alias": "search"}, ["a4", "a3"]),
        ({"model_filter": "gpt"}, ["a5", "a4"]),
        ({"status": "error"}, ["a3"]),
        ({"user_id": "alice"}, ["a5", "a3", "a1"]),
        ({"min_cost": "0.1"}, ["a5", "a4"]),
    ],
)
def test_it_filters_recent_requests(world, data, params, expected):
    rows = get(world.read, RECENT, limit=100, **params).json()

    assert [row["request_id"] for row in rows] == expected


def test_it_limits_recent_requests_to_a_range(world, data):
    start, end = data.base + timedelta(hours=1), data.base + timedelta(hours=3)

    rows = get(world.read, RECENT, start=iso(start), end=iso(end)).json()

    assert [row["request_id"] for row in rows] == ["a5", "a4", "a3"]


@pytest.mark.parametrize("limit", ["0", "-1", "1001", "abc", "1.5"])
def test_it_rejects_a_limit_out_of_bounds(world, data, limit):
    response = get(world.read, RECENT, limit=limit)

    assert response.status_code == 400
    assert response.json()["status"] == "error"
    assert "limit" in response.json()["errors"]


def test_it_accepts_the_largest_limit(world, data):
    response = get(world.read, RECENT, limit=1000)

    assert response.status_code == 200
    assert len(response.json()) == 5


@pytest.mark.parametrize("params, field", [({"status": "pending"}, "status"), ({"min_cost": "lots"}, "min_cost")])
def test_it_rejects_bad_recent_filters(world, params, field):
    response = get(world.read, RECENT, **params)

    assert response.status_code == 400
    assert field in response.json()["errors"]


# --- who may read --------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [DASHBOARD, RECENT])
def test_it_refuses_an_ingest_only_token(world, data, url):
    response = get(world.ingest, url)

    assert response.status_code == 403
    assert response.json()["status"] == "error"
    assert "read" in response.json()["message"]


@pytest.mark.parametrize("url", [DASHBOARD, RECENT])
def test_it_requires_a_token(world, data, url):
    response = get(None, url)

    assert response.status_code == 401
    assert response.json()["status"] == "error"


@pytest.mark.parametrize("url", [DASHBOARD, RECENT])
def test_it_refuses_a_garbage_token(world, data, url):
    assert get("lc_deadbeef_nottherightsecretatall", url).status_code == 401


# --- rollups must not change any answer ----------------------------------------------------------


def test_it_answers_the_same_once_the_hours_are_rolled_up(world, data):
    day = data.base.replace(hour=0)
    windows = [
        data.window,
        {"start": iso(day - timedelta(days=1)), "end": iso(day + timedelta(days=2))},  # whole days
        {"start": iso(data.base + timedelta(minutes=7)), "end": iso(data.base + timedelta(hours=2, minutes=31))},
    ]
    views = [
        (world.read, {}),
        (world.pinned, {}),
        (world.read, {"team_alias": "search"}),
        (world.read, {"model_filter": "gpt-4"}),
        (world.globex_token, {}),
    ]
    before = [get(token, DASHBOARD, **window, **params).json() for window in windows for token, params in views]

    dirty_rollups_refresh()
    after = [get(token, DASHBOARD, **window, **params).json() for window in windows for token, params in views]

    for old, new in zip(before, after, strict=True):
        for key in ("total_requests", "total_tokens", "error_rate", "cache_hit_rate", "unpriced_requests"):
            assert new[key] == old[key], key
        assert money(new["total_cost"]) == money(old["total_cost"])
        assert new["avg_latency_ms"] == pytest.approx(old["avg_latency_ms"])
        assert new["model_usage"] == old["model_usage"]
        assert new["hourly_trend"] == old["hourly_trend"]
        assert new["latency_percentiles_ms"] == old["latency_percentiles_ms"]
    assert_totals(after[0], data.acme)
    assert_totals(after[1], data.acme_where(team_alias="chatbot"))


def test_it_counts_an_event_that_arrives_after_its_hour_was_rolled_up(world, data):
    dirty_rollups_refresh()
    late = event(request_id="late", team_alias="search", timestamp=iso(data.base + timedelta(minutes=30)))
    send(world.both, [late])

    answer = get(world.read, DASHBOARD, **data.window).json()

    assert_totals(answer, [*data.acme, late])
    assert answer["hourly_trend"][hour_key(data.base)]["count"] == 3
