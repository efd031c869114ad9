"""The ingest hot path's shortcuts give the same answers as the plain way.

Strict validation accepts and refuses exactly what the written rules do; a batch stored through
PostgreSQL's COPY holds the same values as the same events sent one at a time; tokens and teams
come from one query each, and a revoked token is refused on the very next request; the rate limit
counts per token in constant space.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from django.core.cache import cache
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from pydantic import ValidationError

from metrics import services
from metrics.models import DirtyHour, UsageEvent
from metrics.schemas import EventIn, _EventRules, field_errors, parse_json_body
from metrics.services import usage_events_record
from teams.access import TeamResolver, authenticate_token
from teams.authentication import ApiTokenRateThrottle
from teams.models import ApiToken
from tests.conftest import api, event
from tests.test_api_bad_input import FIELD_CASES


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# --- validation ----------------------------------------------------------------------------------


def _judged(model, data: dict):
    """(values, None) when `model` accepts `data`, else (None, errors as the API words them)."""
    try:
        accepted = model.model_validate(data)
    except ValidationError as exc:
        return None, field_errors(exc)
    values = accepted.model_dump()
    # Defaults drawn at validation time (a fresh id, the current time) differ between two runs.
    for drawn in ("request_id", "timestamp"):
        if drawn not in data:
            values.pop(drawn)
    return values, None


NOW = datetime.now(UTC).replace(microsecond=0)
UNUSUAL_BUT_VALID = [
    {"model": "m", "prompt_tokens": Decimal("100.0"), "output_tokens": Decimal("1E+3")},
    {"model": "m", "prompt_tokens": 5.0, "cached_tokens": 5},
    {"model": "m", "latency_ms": 120, "time_to_first_token_ms": Decimal("12.5")},
    {"model": "m", "latency_ms": 120.25, "cache_similarity_score": 1},
    {"model": "m", "response_cost": 0, "prompt_cost": 1, "output_cost": 0.25},
    {"model": "m", "response_cost": Decimal("0.000000000012345")},
    {"model": "  padded  ", "user_id": " u ", "team_alias": "a.b@c:d-e_f", "tags": [" t ", ""]},
    {"model": "ünïcödé ✓ 🚀", "end_user": "", "query_type": "", "error_message": "line\nbreak"},
    {"model": "m", "timestamp": NOW.replace(tzinfo=None).isoformat(sep=" ")},
    {"model": "m", "timestamp": int(NOW.timestamp())},
    {"model": "m", "timestamp": Decimal(int(NOW.timestamp())) + Decimal("0.5")},
    {"model": "m", "timestamp": NOW.astimezone(timezone(timedelta(hours=-5))).isoformat()},
    {"model": "m", "metadata": {"n": Decimal("1.5"), "i": Decimal("2"), "nested": {"list": [1, "a,b", None]}}},
    {"model": "m", "batch_size": Decimal("3"), "batch_id": "b", "is_batched": True, "status": "error"},
    {"model": "m", "total_tokens": None, "time_to_first_token_ms": None, "tags": None, "metadata": None},
    {"model": "m", "request_id": "r" * 128, "provider": "openai"},
]


@pytest.mark.parametrize("data", UNUSUAL_BUT_VALID, ids=lambda d: ",".join(d))
def test_it_accepts_what_the_rules_accept_with_the_same_values(data):
    values, errors = _judged(EventIn, data)
    expected, expected_errors = _judged(_EventRules, data)

    assert expected_errors is None, expected_errors  # the case is valid under the rules
    assert errors is None, errors
    assert values == expected


@pytest.mark.parametrize("body, field", FIELD_CASES)
def test_it_refuses_what_the_rules_refuse_with_the_same_errors(body, field):
    data = parse_json_body(body)

    values, errors = _judged(EventIn, data)
    _, expected_errors = _judged(_EventRules, data)

    assert values is None, f"accepted {data!r}"
    assert errors == expected_errors
    assert field in errors


NUL_CASES = [
    ({"model": "gpt\x00-4"}, "model"),
    ({"model": "m", "request_id": "id\x00"}, "request_id"),
    ({"model": "m", "team_alias": "a\x00"}, "team_alias"),
    ({"model": "m", "tags": ["a\x00"]}, "tags.0"),
    ({"model": "m", "metadata": {"a\x00b": 1}}, "metadata"),
    ({"model": "m", "metadata": {"note": "a\x00b"}}, "metadata"),
]


@pytest.mark.parametrize("data, field", NUL_CASES)
def test_it_refuses_nul_characters_like_the_rules(data, field):
    values, errors = _judged(EventIn, data)

    assert values is None
    assert errors == _judged(_EventRules, data)[1]
    assert field in errors


def test_it_takes_the_usual_gateway_event_without_consulting_the_rules(monkeypatch):
    """The common case (JSON ints, decimals, strings) is validated by the compiled checks alone."""

    def rules_consulted(*args, **kwargs):
        raise AssertionError("the written rules were needed")

    monkeypatch.setattr(_EventRules, "model_validate", rules_consulted)
    body = json.dumps(
        {
            "model": "gpt-4o",
            "prompt_tokens": 812,
            "output_tokens": 96,
            "total_tokens": 908,
            "cached_tokens": 0,
            "latency_ms": 1530.4,
            "time_to_first_token_ms": 210.7,
            "cache_hit": False,
            "user_id": "u1@example.com",
            "team_alias": "chatbot",
            "query_type": "chat",
            "status": "success",
            "request_id": "gw-1",
            "timestamp": NOW.isoformat(),
            "response_cost": 0.00311,
        }
    ).encode()

    event_in = EventIn.model_validate(parse_json_body(body))

    assert event_in.latency_ms == 1530.4
    assert event_in.response_cost == Decimal("0.00311")


# --- the batch path ----------------------------------------------------------------------------

# Values that break naive CSV, COPY text format or JSON quoting.
AWKWARD = [
    "plain",
    "comma, inside",
    'quote " inside',
    'ends with a quote"',
    "new\nline",
    "carriage\rreturn",
    "both\r\nmid",
    "tab\there",
    "back\\slash",
    "\\N",
    "NULL",
    "\\.",
    "ünïcödé ✓ 🚀",
    "'single'",
]


def awkward_events(prefix: str) -> list[dict]:
    items = []
    for i in range(max(services.COPY_MIN_ROWS, 2 * len(AWKWARD))):
        text = AWKWARD[i % len(AWKWARD)]
        item = event(
            request_id=f"{prefix}-{i}",
            user_id=text,
            query_type=text[:100],
            end_user=text if i % 3 else "",
            error_message=text if i % 2 else "",
            batch_id=text if i % 4 == 0 else "",
            metadata={"note": text, "n": 1.5, "nested": {"list": [1, "a,b", None, True]}} if i % 2 else {},
            tags=[text, "x"] if i % 3 == 0 else [],
            cached_tokens=i,
            timestamp=(NOW - timedelta(hours=1, microseconds=123_457 * i)).isoformat(),
            team_alias=["chatbot", "search", "brand-new"][i % 3],
        )
        if i % 5 == 0:  # unpriced: the client's cost, with more decimals than money keeps
            item.update(model="no-such-model-anywhere", response_cost=0.123456789012345678)
        if i % 7 == 0:
            item.update(time_to_first_token_ms=None, cache_similarity_score=0.5, batch_size=3, is_batched=True)
        if i % 6 == 0:
            item.pop("team_alias")
        items.append(item)
    return items


STORED_FIELDS = [
    f.attname for f in UsageEvent._meta.concrete_fields if f.attname not in ("id", "request_id", "received_at")
]


def test_it_stores_a_batch_exactly_as_the_same_events_sent_one_by_one(world):
    batch = awkward_events("batch")
    response = api(world.ingest).post("/api/v1/events", json.dumps(batch), content_type="application/json")
    assert response.status_code == 200, response.content[:500]
    assert response.json()["accepted"] == len(batch)
    for item in awkward_events("single"):
        single = api(world.ingest).post("/api/v1/metrics/track", json.dumps(item), content_type="application/json")
        assert single.status_code == 200, single.content[:500]

    stored = {e.request_id: e for e in UsageEvent.objects.all()}
    assert len(stored) == 2 * len(batch)
    for i in range(len(batch)):
        via_batch, one_by_one = stored[f"batch-{i}"], stored[f"single-{i}"]
        assert {f: getattr(via_batch, f) for f in STORED_FIELDS} == {
            f: getattr(one_by_one, f) for f in STORED_FIELDS
        }, f"event {i}"
    sample = stored["batch-5"]
    assert sample.user_id == AWKWARD[5] and sample.error_message == AWKWARD[5]
    assert sample.metadata == {"note": AWKWARD[5], "n": 1.5, "nested": {"list": [1, "a,b", None, True]}}
    unpriced = stored["batch-10"]
    assert not unpriced.is_priced
    assert unpriced.cost == Decimal("0.1234567890")  # rounded half-even to money's 10 places
    assert stored["batch-6"].team == world.acme.teams.get(is_default=True)
    assert stored["batch-3"].end_user == "" and stored["batch-3"].tags == [AWKWARD[3], "x"]
    assert stored["batch-7"].time_to_first_token_ms is None and stored["batch-7"].batch_size == 3


def test_it_stores_each_batch_of_one_transaction_once(world):
    """Two batches in one outer transaction: the second must not carry rows of the first."""
    token = world.tokens["ingest"]
    first = [(i, EventIn.model_validate(e)) for i, e in enumerate(awkward_events("one"))]
    second = [(i, EventIn.model_validate(e)) for i, e in enumerate(awkward_events("two"))]

    with transaction.atomic():
        recorded_one, _ = usage_events_record(token=token, events=first)
        recorded_two, _ = usage_events_record(token=token, events=second)
        again, _ = usage_events_record(token=token, events=first)

    assert not any(r.duplicate for r in recorded_one + recorded_two)
    assert all(r.duplicate for r in again)
    assert [r.cost for r in again] == [r.cost for r in recorded_one]
    assert UsageEvent.objects.count() == len(first) + len(second)
    assert set(UsageEvent.objects.filter(request_id__startswith="two-").values_list("request_id", flat=True)) == {
        e.request_id for _, e in second
    }


def test_it_marks_the_hours_of_a_batch_dirty(world):
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    items = [event(request_id=f"h-{i}", timestamp=(hour + timedelta(minutes=i)).isoformat()) for i in range(40)]

    response = api(world.ingest).post("/api/v1/events", items, format="json")

    assert response.json()["accepted"] == 40
    assert DirtyHour.objects.filter(organization=world.acme, hour=hour).exists()


def test_it_resolves_named_and_unnamed_teams_with_one_query(world):
    resolver = TeamResolver(world.tokens["ingest"])

    with CaptureQueriesContext(connection) as queries:
        resolver.preload({"chatbot", "search"}, default=True)
        teams = [resolver.resolve("chatbot"), resolver.resolve("search"), resolver.resolve(None)]

    assert len(queries) == 1
    assert teams == [world.chatbot, world.search, world.acme.teams.get(is_default=True)]
    assert all(team.organization == world.acme for team in teams)


# --- tokens --------------------------------------------------------------------------------------


def test_it_authenticates_with_one_query_and_loads_what_requests_use(world):
    pinned = world.tokens["pinned"]
    assert authenticate_token(world.pinned) is not None  # stamps last_used_at once

    with CaptureQueriesContext(connection) as queries:
        token = authenticate_token(world.pinned)
        loaded = (token.organization, token.team, token.team.organization, token.scopes, token.created_at)

    assert len(queries) == 1
    fresh = ApiToken.objects.select_related("organization", "team").get(pk=pinned.pk)
    assert {f.attname: getattr(token, f.attname) for f in ApiToken._meta.concrete_fields} == {
        f.attname: getattr(fresh, f.attname) for f in ApiToken._meta.concrete_fields
    }
    assert loaded[0] == world.acme and loaded[0].auto_create_teams is True
    assert loaded[1] == world.chatbot and loaded[2] == world.acme
    assert token.last_used_at.tzinfo is not None
    assert authenticate_token(world.ingest).team is None


def test_it_refuses_a_token_revoked_by_any_means_on_the_next_request(world):
    client = api(world.ingest)
    assert client.post("/api/v1/metrics/track", event(request_id="before"), format="json").status_code == 200

    # As another process would: straight in the database, no signal, no cache to clear.
    ApiToken.objects.filter(pk=world.tokens["ingest"].pk).update(revoked_at=datetime.now(UTC))

    assert client.post("/api/v1/metrics/track", event(request_id="after"), format="json").status_code == 401
    assert not UsageEvent.objects.filter(request_id="after").exists()


# --- rate limit ----------------------------------------------------------------------------------


class _Request:
    def __init__(self, token):
        self.auth = token
        self.META = {"REMOTE_ADDR": "192.0.2.1"}


@pytest.fixture
def clock(monkeypatch):
    moment = {"now": 60 * 16_666_667 + 20.0}  # 20 s into a minute
    monkeypatch.setattr(ApiTokenRateThrottle, "timer", lambda self: moment["now"])
    monkeypatch.setattr(ApiTokenRateThrottle, "THROTTLE_RATES", {"api_token": "10/min"})
    cache.clear()
    yield moment
    cache.clear()


def allowed(token) -> bool:
    return ApiTokenRateThrottle().allow_request(_Request(token), None)


def test_it_allows_the_rate_and_refuses_the_next_request_with_a_wait(world, clock):
    token = world.tokens["ingest"]
    assert [allowed(token) for _ in range(11)] == [True] * 10 + [False]

    throttle = ApiTokenRateThrottle()
    assert throttle.allow_request(_Request(token), None) is False
    # Nothing fits before the minute ends; then the full previous minute still weighs on it.
    assert 40 <= throttle.wait() <= 60 + 40


def test_it_does_not_count_refused_requests(world, clock):
    token = world.tokens["ingest"]
    for _ in range(30):
        allowed(token)

    clock["now"] += 60  # the next minute, 20 s in: 10 × 40/60 ≈ 6.7 of the last minute still count
    assert [allowed(token) for _ in range(4)] == [True, True, True, False]


def test_it_slides_the_window_instead_of_resetting_it(world, clock):
    token = world.tokens["ingest"]
    clock["now"] += 39  # 59 s into the minute
    assert all(allowed(token) for _ in range(10))

    clock["now"] += 2  # 1 s into the next minute: a reset would allow 10 more at once
    assert [allowed(token) for _ in range(2)] == [False, False]
    clock["now"] += 57  # 58 s in: almost none of the last minute is left
    assert sum(allowed(token) for _ in range(10)) == 9


def test_it_counts_each_token_apart(world, clock):
    for _ in range(10):
        assert allowed(world.tokens["ingest"])
    assert not allowed(world.tokens["ingest"])

    assert allowed(world.tokens["both"])
    assert allowed(world.tokens["globex_token"])
