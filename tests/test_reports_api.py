"""GET /api/v1/reports/spend: spend by one or two dimensions, from every side.

Every expected figure is summed here in Python from the `UsageEvent` rows (never through the report's
code), so each test compares the endpoint against an answer it did not compute itself. The suite runs
on SQLite and PostgreSQL: the tag and metadata spellings of both databases meet the same oracle.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from metrics.models import UsageEvent
from metrics.rollups import dirty_rollups_refresh
from tests.budget_support import ingest
from tests.conftest import api, event

SPEND = "/api/v1/reports/spend"
FIGURES = ("requests", "prompt_tokens", "output_tokens", "cached_tokens", "cache_write_tokens", "total_tokens",
           "cost", "list_cost", "errors")
MONEY = ("cost", "list_cost")
UTC_ZONE = ZoneInfo("UTC")


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# --- the oracle ------------------------------------------------------------------------------------


def _text(value):
    """A metadata value as the report shows it."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def keys_of(row: UsageEvent, dimension: str, zone: ZoneInfo) -> list:
    """The key values an event counts under for one dimension (several for tags)."""
    if dimension == "tag":
        return sorted(set(row.tags)) or [None]
    if dimension.startswith("metadata."):
        return [_text(row.metadata.get(dimension.removeprefix("metadata.")))]
    if dimension == "team_alias":
        return [row.team.alias]
    if dimension == "day":
        return [row.timestamp.astimezone(zone).date().isoformat()]
    if dimension == "hour":
        return [row.timestamp.astimezone(zone).replace(minute=0, second=0, microsecond=0).isoformat()]
    return [getattr(row, dimension) or None]


def figures_of(row: UsageEvent) -> dict:
    return {
        "requests": 1, "prompt_tokens": row.prompt_tokens, "output_tokens": row.output_tokens,
        "cached_tokens": row.cached_tokens, "cache_write_tokens": row.cache_write_tokens,
        "total_tokens": row.total_tokens, "cost": row.cost,
        "list_cost": row.cost if row.list_cost is None else row.list_cost,
        "errors": int(row.status == "error"),
    }


def zero() -> dict:
    return {name: (Decimal(0) if name in MONEY else 0) for name in FIGURES}


def add(into: dict, figures: dict) -> None:
    for name in FIGURES:
        into[name] += figures[name]


def expected(rows: list[UsageEvent], group_by: list[str], zone: ZoneInfo = UTC_ZONE) -> tuple[dict, dict]:
    """({key tuple: figures}, total) summed in Python."""
    groups: dict[tuple, dict] = defaultdict(zero)
    total = zero()
    for row in rows:
        figures = figures_of(row)
        add(total, figures)
        combos: list[tuple] = [()]
        for dimension in group_by:
            combos = [(*combo, key) for combo in combos for key in keys_of(row, dimension, zone)]
        for combo in combos:
            add(groups[combo], figures)
    return dict(groups), total


def answered(body: dict) -> tuple[list[tuple], dict]:
    """([(key tuple, figures)] in answer order, total) with money as Decimal."""
    def figures(item: dict) -> dict:
        return {name: Decimal(str(item[name])) if name in MONEY else item[name] for name in FIGURES}

    rows = [(tuple(item["key"][name] for name in body["group_by"]), figures(item)) for item in body["rows"]]
    return rows, figures(body["total"])


def sort_key(item: tuple[tuple, dict]):
    key, figures = item
    return (-figures["cost"], tuple((value is not None, value or "") for value in key))


# --- data ------------------------------------------------------------------------------------------

BASE = (datetime.now(UTC) - timedelta(days=2)).replace(hour=12, minute=0, second=0, microsecond=0)


def at(hours: float) -> str:
    return (BASE + timedelta(hours=hours)).isoformat()


@dataclass
class Data:
    window: dict

    def acme(self, **where) -> list[UsageEvent]:
        rows = UsageEvent.objects.filter(organization__slug="acme", **where).select_related("team")
        return list(rows)


@pytest.fixture
def data(world) -> Data:
    ingest(
        world.both,
        event(request_id="a1", timestamp=at(0), team_alias="chatbot", prompt_tokens=1000, output_tokens=500,
              cached_tokens=200, tags=["prod", "web"], metadata={"feature": "summary", "n": 3}, end_user="cust-1",
              query_type="chat"),
        event(request_id="a2", timestamp=at(1), team_alias="chatbot", prompt_tokens=3000, output_tokens=100,
              tags=["prod", "prod"], metadata={"feature": "search", "flag": True}, status="error",
              query_type="chat"),
        event(request_id="a3", timestamp=at(2.5), team_alias="search", prompt_tokens=10, output_tokens=10,
              metadata={"feature": "summary"}, user_id="bob@acme.test", end_user="cust-2"),
        event(request_id="a4", timestamp=at(8.25), team_alias="search", model="gpt-4", response_cost=0.25,
              prompt_tokens=50, output_tokens=5, tags=["batch"], metadata={"feature": None}),
        event(request_id="a5", timestamp=at(9), team_alias="chatbot", model="gpt-4o", response_cost=0.125,
              tags=["web"], cache_write_tokens=40, user_id="carol@acme.test"),
        event(request_id="a6", timestamp=at(-20), team_alias="search", prompt_tokens=7000, output_tokens=700,
              status="error", metadata={"feature": "search", "n": 3}),
        event(request_id="a7", timestamp=at(10), team_alias="chatbot", prompt_tokens=0, output_tokens=0),
    )
    ingest(world.globex_token,
           event(request_id="g1", timestamp=at(1), team_alias="chatbot", prompt_tokens=10**6, output_tokens=10**6,
                 tags=["prod"], metadata={"feature": "summary"}),
           event(request_id="g2", timestamp=at(2), team_alias="search", model="gpt-4", response_cost=3))
    return Data(window={"start": at(-24), "end": at(24)})


def get(token: str, **params):
    return api(token).get(SPEND, params)


def assert_report_equals_raw(body: dict, rows: list[UsageEvent], group_by: list[str], zone=UTC_ZONE):
    groups, total = expected(rows, group_by, zone)
    shown, shown_total = answered(body)
    assert body["group_by"] == group_by
    assert shown_total == total
    assert dict(shown) == groups
    assert len(shown) == len(groups)  # no key twice
    assert shown == sorted(shown, key=sort_key)  # cost descending, then key (null first)
    assert not any(row.get("other") for row in body["rows"])


# --- sums ------------------------------------------------------------------------------------------

GROUPINGS = [
    "team_alias", "model", "provider", "user_id", "end_user", "query_type", "tag", "metadata.feature", "metadata.n",
    "metadata.flag", "day", "hour", "team_alias,model", "tag,metadata.feature", "day,team_alias", "model,tag",
]


@pytest.mark.parametrize("group_by", GROUPINGS)
def test_it_sums_each_grouping_as_the_raw_events_do(world, data, group_by):
    response = get(world.read, group_by=group_by, **data.window)
    assert response.status_code == 200, response.content
    assert_report_equals_raw(response.json(), data.acme(), group_by.split(","))


def test_it_counts_an_event_once_in_each_of_its_distinct_tags_and_untagged_events_under_null(world, data):
    body = get(world.read, group_by="tag", **data.window).json()
    requests = {item["key"]["tag"]: item["requests"] for item in body["rows"]}
    # a1 prod+web, a2 prod twice (once), a4 batch, a5 web; a3, a6, a7 untagged
    assert requests == {"prod": 2, "web": 2, "batch": 1, None: 3}
    assert body["total"]["requests"] == 7
    assert sum(requests.values()) > body["total"]["requests"]


def test_it_shows_metadata_values_as_text_and_a_missing_or_null_value_as_null(world, data):
    body = get(world.read, group_by="metadata.feature", **data.window).json()
    requests = {item["key"]["metadata.feature"]: item["requests"] for item in body["rows"]}
    assert requests == {"summary": 2, "search": 2, None: 3}  # a4 sent null, a5 and a7 nothing
    flags = {item["key"]["metadata.n"]: item["requests"] for item in get(
        world.read, group_by="metadata.n", **data.window).json()["rows"]}
    assert flags == {"3": 2, None: 5}


def test_it_buckets_days_and_hours_in_the_organizations_time_zone(world, data):
    world.acme.time_zone = "Asia/Kolkata"  # UTC+05:30: hours start at :30 UTC
    world.acme.save()
    zone = ZoneInfo("Asia/Kolkata")
    for group_by in ("day", "hour", "day,model"):
        body = get(world.read, group_by=group_by, **data.window).json()
        assert_report_equals_raw(body, data.acme(), group_by.split(","), zone)
    by_day = get(world.read, group_by="day", **data.window).json()["rows"]
    days = {item["key"]["day"]: item["requests"] for item in by_day}
    # BASE is 12:00 UTC = 17:30 local: a4 (20:15 UTC) and a5, a7 fall on the next local day
    base_day = BASE.astimezone(zone).date()
    assert days == {(base_day - timedelta(days=1)).isoformat(): 1, base_day.isoformat(): 3,
                    (base_day + timedelta(days=1)).isoformat(): 3}
    hours = [item["key"]["hour"] for item in get(world.read, group_by="hour", **data.window).json()["rows"]]
    assert all(hour.endswith(":30:00+05:30") is False and hour.endswith("+05:30") for hour in hours)
    # a3 at 14:30 UTC is 20:00 local, a bucket of its own starting 20:00+05:30
    assert (BASE + timedelta(hours=2.5)).astimezone(zone).replace(minute=0).isoformat() in hours


def test_list_cost_falls_back_to_the_billed_cost_when_there_is_no_platform_price(world, data):
    unpriced = [row for row in data.acme() if row.list_cost is None]
    assert unpriced, "the data needs events without a platform price"
    body = get(world.read, group_by="model", model_filter="gpt-4", **data.window).json()
    assert {item["key"]["model"]: Decimal(str(item["list_cost"])) for item in body["rows"]} == {
        "gpt-4": Decimal("0.25"), "gpt-4o": Decimal("0.125")}


def test_errors_count_failed_calls(world, data):
    body = get(world.read, group_by="team_alias", **data.window).json()
    assert {item["key"]["team_alias"]: item["errors"] for item in body["rows"]} == {"chatbot": 1, "search": 1}


# --- limit and other -------------------------------------------------------------------------------


@pytest.mark.parametrize("group_by", ["model,team_alias", "tag", "metadata.feature"])
def test_it_sums_the_groups_past_the_limit_in_other(world, data, group_by):
    dims = group_by.split(",")
    groups, total = expected(data.acme(), dims)
    ranked = sorted(groups.items(), key=sort_key)
    body = get(world.read, group_by=group_by, limit=2, **data.window).json()
    last = body["rows"].pop()
    assert last["other"] is True and last["key"] == dict.fromkeys(dims, "other")
    shown, shown_total = answered(body)
    assert shown == ranked[:2]
    rest = zero()
    for _, figures in ranked[2:]:
        add(rest, figures)
    other = {name: Decimal(str(last[name])) if name in MONEY else last[name] for name in FIGURES}
    assert other == rest
    assert last["groups"] == len(ranked) - 2
    assert shown_total == total


def test_other_is_null_when_every_group_fits(world, data):
    groups, _ = expected(data.acme(), ["model"])
    body = get(world.read, group_by="model", limit=len(groups), **data.window).json()
    assert len(body["rows"]) == len(groups)
    assert not any(row.get("other") for row in body["rows"])


# --- filters ---------------------------------------------------------------------------------------


def _matches(row: UsageEvent, params: dict) -> bool:
    checks = {
        "team_alias": lambda v: row.team.alias == v,
        "model_filter": lambda v: v.lower() in row.model.lower(),
        "user_id": lambda v: row.user_id == v,
        "end_user": lambda v: row.end_user == v,
        "tag": lambda v: v in row.tags,
    }
    for name, value in params.items():
        if name.startswith("metadata."):
            if _text(row.metadata.get(name.removeprefix("metadata."))) != value:
                return False
        elif not checks[name](value):
            return False
    return True


@pytest.mark.parametrize("params", [
    {"team_alias": "search"},
    {"model_filter": "gpt-4"},
    {"user_id": "bob@acme.test"},
    {"end_user": "cust-1"},
    {"tag": "prod"},
    {"tag": "web", "team_alias": "chatbot"},
    {"metadata.feature": "summary"},
    {"metadata.feature": "search", "metadata.n": "3"},
    {"metadata.flag": "true"},
    {"tag": "nothing-tagged-so"},
])
def test_filters_narrow_the_events_summed(world, data, params):
    rows = [row for row in data.acme() if _matches(row, params)]
    body = get(world.read, group_by="model,tag", **params, **data.window).json()
    assert_report_equals_raw(body, rows, ["model", "tag"])


def test_the_range_limits_the_events_summed(world, data):
    start, end = at(0), at(9)  # a1, a2, a3, a4 (not a5 at the end, nor a6 before)
    body = get(world.read, group_by="team_alias", start=start, end=end).json()
    rows = [row for row in data.acme() if BASE <= row.timestamp < BASE + timedelta(hours=9)]
    assert len(rows) == 4
    assert_report_equals_raw(body, rows, ["team_alias"])


def test_time_range_hours_counts_back_from_now(world, data):
    body = get(world.read, group_by="team_alias", time_range_hours=1).json()
    assert body["total"]["requests"] == 0
    assert get(world.read, group_by="team_alias").json()["total"]["requests"] == 7  # default: 30 days


# --- who sees what ---------------------------------------------------------------------------------


def test_a_pinned_token_sees_only_its_team(world, data):
    body = get(world.pinned, group_by="team_alias,tag", **data.window).json()
    assert_report_equals_raw(body, data.acme(team=world.chatbot), ["team_alias", "tag"])
    assert {item["key"]["team_alias"] for item in body["rows"]} == {"chatbot"}


def test_a_team_the_caller_cannot_see_is_not_found(world, data):
    assert get(world.pinned, group_by="model", team_alias="search", **data.window).status_code == 404
    assert get(world.read, group_by="model", team_alias="nope", **data.window).status_code == 404


def test_an_outsider_sees_nothing_of_acme(world, data):
    body = get(world.globex_token, group_by="team_alias,tag", **data.window).json()
    globex = list(UsageEvent.objects.filter(organization=world.globex).select_related("team"))
    assert_report_equals_raw(body, globex, ["team_alias", "tag"])
    assert body["total"]["requests"] == 2
    # acme has a "search" team, globex does not (g2 made one): an alias of acme's only is not found
    assert get(world.globex_token, group_by="model", team_alias="nope", **data.window).status_code == 404


def test_it_needs_a_read_token(world, data):
    assert get(world.ingest, group_by="model").status_code == 403
    assert api().get(SPEND, {"group_by": "model"}).status_code in (401, 403)


# --- bad requests ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("params", "named"), [
    ({}, "group_by"),
    ({"group_by": "colour"}, "group_by"),
    ({"group_by": "team_alias,model,day"}, "group_by"),
    ({"group_by": "model,model"}, "group_by"),
    ({"group_by": "metadata.bad key"}, "group_by"),
    ({"group_by": "metadata."}, "group_by"),
    ({"group_by": "metadata." + "k" * 65}, "group_by"),
    ({"group_by": ""}, "group_by"),
    ({"group_by": "model", "metadata.bad key": "x"}, "metadata"),
    ({"group_by": "model", **{f"metadata.k{i}": "x" for i in range(6)}}, "metadata"),
    ({"group_by": "model", "metadata.feature": ""}, "metadata.feature"),
    ({"group_by": "model", "metadata.feature": "x" * 256}, "metadata.feature"),
    ({"group_by": "model", "team_alias": ""}, "team_alias"),
    ({"group_by": "model", "tag": " "}, "tag"),
    ({"group_by": "model", "user_id": "u" * 256}, "user_id"),
    ({"group_by": "model", "limit": "0"}, "limit"),
    ({"group_by": "model", "limit": "1001"}, "limit"),
    ({"group_by": "model", "limit": "ten"}, "limit"),
    ({"group_by": "model", "time_range_hours": "0"}, "time_range_hours"),
    ({"group_by": "model", "time_range_hours": str(24 * 367)}, "time_range_hours"),
    ({"group_by": "model", "start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "start"),
    ({"group_by": "model", "start": "1999-12-31T00:00:00Z"}, "start"),
    ({"group_by": "model", "end": "yesterday"}, "end"),
    ({"group_by": "model", "start": "2020-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "start"),
])
def test_a_bad_parameter_is_a_400_naming_it(world, params, named):
    response = get(world.read, **params)
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["status"] == "error"
    assert named in body["errors"], body


def test_a_repeated_parameter_is_a_400_naming_it(world):
    response = api(world.read).get(SPEND + "?group_by=model&group_by=day")
    assert response.status_code == 400
    assert "group_by" in response.json()["errors"]


# --- rollups ---------------------------------------------------------------------------------------


def test_the_figures_are_the_same_before_and_after_rollups(world, data):
    """Trivially true while reports read raw events: a guard for the rollup-backed version to come."""
    before = {g: get(world.read, group_by=g, **data.window).json() for g in ("team_alias,model", "tag", "day")}
    dirty_rollups_refresh()
    after = {g: get(world.read, group_by=g, **data.window).json() for g in before}
    assert after == before
    for group_by, body in after.items():
        assert_report_equals_raw(body, data.acme(), group_by.split(","))
