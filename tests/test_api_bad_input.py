"""Every bad input gets a 4xx JSON error naming what is wrong, never a 500, and writes nothing."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings

from metrics.models import BatchRun, CacheStat, UsageEvent
from teams.models import Team
from tests.conftest import api, event

TRACK = "/api/v1/metrics/track"
INGEST_URLS = ["/api/v1/metrics/track", "/api/v1/events", "/api/v1/metrics/cache", "/api/v1/metrics/batch"]


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """The world's four users are created with passwords: hash them cheaply in these tests."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def counts() -> tuple[int, int, int, int]:
    return UsageEvent.objects.count(), CacheStat.objects.count(), BatchRun.objects.count(), Team.objects.count()


def body(**overrides) -> bytes:
    """A valid event naming a team that does not exist yet (so a stray write would create it)."""
    return json.dumps({**event(team_alias="fresh-team"), **overrides}).encode()


def raw(fragment: str) -> bytes:
    """An event with a literal JSON fragment that json.dumps would not write (NaN, 1e400, ...)."""
    return ('{"model": "test-model", "team_alias": "fresh-team", ' + fragment + "}").encode()


def without(field: str) -> bytes:
    data = event(team_alias="fresh-team")
    del data[field]
    return json.dumps(data).encode()


def post(token, url, data: bytes):
    client = api(token)
    client.raise_request_exception = False  # a crash must show up as the 500 a client would get
    return client.post(url, data, content_type="application/json")


def future(**delta) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).isoformat()


def past(**delta) -> str:
    return (datetime.now(UTC) - timedelta(**delta)).isoformat()


FIELD_CASES = [
    # wrong types
    pytest.param(body(prompt_tokens="100"), "prompt_tokens", id="string-prompt_tokens"),
    pytest.param(body(prompt_tokens=True), "prompt_tokens", id="bool-prompt_tokens"),
    pytest.param(body(prompt_tokens=1.5), "prompt_tokens", id="fractional-prompt_tokens"),
    pytest.param(body(output_tokens=[1]), "output_tokens", id="list-output_tokens"),
    pytest.param(body(latency_ms=True), "latency_ms", id="bool-latency_ms"),
    pytest.param(body(latency_ms="fast"), "latency_ms", id="string-latency_ms"),
    pytest.param(body(model=12), "model", id="number-model"),
    pytest.param(body(model=None), "model", id="null-model"),
    pytest.param(body(model=""), "model", id="empty-model"),
    pytest.param(body(model="   "), "model", id="blank-model"),
    pytest.param(without("model"), "model", id="missing-model"),
    pytest.param(body(cache_hit="yes"), "cache_hit", id="string-cache_hit"),
    pytest.param(body(cache_hit=1), "cache_hit", id="number-cache_hit"),
    pytest.param(body(user_id=123), "user_id", id="number-user_id"),
    pytest.param(body(metadata=[1, 2]), "metadata", id="list-metadata"),
    pytest.param(body(tags="a,b"), "tags", id="string-tags"),
    pytest.param(body(team_alias="bad alias!"), "team_alias", id="bad-team_alias"),
    pytest.param(body(team_alias=""), "team_alias", id="empty-team_alias"),
    pytest.param(body(request_id=""), "request_id", id="empty-request_id"),
    pytest.param(body(request_id=7), "request_id", id="number-request_id"),
    # negative numbers
    pytest.param(body(prompt_tokens=-1), "prompt_tokens", id="negative-prompt_tokens"),
    pytest.param(body(output_tokens=-5), "output_tokens", id="negative-output_tokens"),
    pytest.param(body(total_tokens=-1), "total_tokens", id="negative-total_tokens"),
    pytest.param(body(cached_tokens=-1), "cached_tokens", id="negative-cached_tokens"),
    pytest.param(body(latency_ms=-0.5), "latency_ms", id="negative-latency_ms"),
    pytest.param(body(time_to_first_token_ms=-1), "time_to_first_token_ms", id="negative-ttft"),
    pytest.param(body(response_cost=-0.01), "response_cost", id="negative-response_cost"),
    pytest.param(body(prompt_cost=-1), "prompt_cost", id="negative-prompt_cost"),
    pytest.param(body(batch_size=0), "batch_size", id="zero-batch_size"),
    # absurd numbers
    pytest.param(body(prompt_tokens=10**12), "prompt_tokens", id="absurd-prompt_tokens"),
    pytest.param(body(output_tokens=10**12), "output_tokens", id="absurd-output_tokens"),
    pytest.param(body(total_tokens=10**12), "total_tokens", id="absurd-total_tokens"),
    pytest.param(body(prompt_tokens=2**64), "prompt_tokens", id="int64-overflow-prompt_tokens"),
    pytest.param(body(prompt_tokens=10**100), "prompt_tokens", id="googol-prompt_tokens"),
    pytest.param(body(latency_ms=1e12), "latency_ms", id="absurd-latency_ms"),
    pytest.param(body(response_cost=1e12), "response_cost", id="absurd-response_cost"),
    pytest.param(body(batch_size=10**9), "batch_size", id="absurd-batch_size"),
    pytest.param(body(cache_similarity_score=1.5), "cache_similarity_score", id="similarity-above-1"),
    pytest.param(raw('"latency_ms": 1e400'), "latency_ms", id="1e400-latency_ms"),
    pytest.param(raw('"latency_ms": -1e400'), "latency_ms", id="minus-1e400-latency_ms"),
    pytest.param(raw('"prompt_tokens": 1e400'), "prompt_tokens", id="1e400-prompt_tokens"),
    pytest.param(raw('"response_cost": 1e400'), "response_cost", id="1e400-response_cost"),
    pytest.param(raw('"timestamp": 1e400'), "timestamp", id="1e400-timestamp"),
    pytest.param(raw('"prompt_tokens": 1e999999999999999999'), "prompt_tokens", id="huge-exponent-prompt_tokens"),
    pytest.param(raw('"metadata": {"n": 1e999999999999999999}'), "metadata", id="huge-exponent-in-metadata"),
    # strings over their limit
    pytest.param(body(model="m" * 201), "model", id="long-model"),
    pytest.param(body(error_message="e" * 4001), "error_message", id="long-error_message"),
    pytest.param(body(user_id="u" * 256), "user_id", id="long-user_id"),
    pytest.param(body(end_user="u" * 256), "end_user", id="long-end_user"),
    pytest.param(body(request_id="r" * 129), "request_id", id="long-request_id"),
    pytest.param(body(team_alias="t" * 101), "team_alias", id="long-team_alias"),
    pytest.param(body(query_type="q" * 101), "query_type", id="long-query_type"),
    pytest.param(body(provider="p" * 65), "provider", id="long-provider"),
    pytest.param(body(batch_id="b" * 129), "batch_id", id="long-batch_id"),
    pytest.param(body(tags=["t"] * 51), "tags", id="too-many-tags"),
    pytest.param(body(tags=["t" * 101]), "tags.0", id="long-tag"),
    pytest.param(body(metadata={"blob": "x" * 20_000}), "metadata", id="large-metadata"),
    pytest.param(
        raw('"metadata": ' + '{"a": ' * 800 + "1" + "}" * 800), "metadata", id="deeply-nested-metadata"
    ),
    # unknown fields
    pytest.param(body(surprise=1), "surprise", id="unknown-field"),
    pytest.param(body(Model="test-model"), "Model", id="unknown-field-case"),
    # inconsistent
    pytest.param(body(prompt_tokens=10, cached_tokens=20), "cached_tokens", id="cached-exceeds-prompt"),
    # timestamps
    pytest.param(body(timestamp="2999-01-01T00:00:00Z"), "timestamp", id="far-future-timestamp"),
    pytest.param(body(timestamp=future(hours=1)), "timestamp", id="hour-ahead-timestamp"),
    pytest.param(body(timestamp="2000-01-01T00:00:00Z"), "timestamp", id="ancient-timestamp"),
    pytest.param(body(timestamp="yesterday"), "timestamp", id="word-timestamp"),
    pytest.param(body(timestamp="2025-13-45T00:00:00Z"), "timestamp", id="impossible-date-timestamp"),
    pytest.param(body(timestamp=""), "timestamp", id="empty-timestamp"),
    pytest.param(body(timestamp=True), "timestamp", id="bool-timestamp"),
    # status
    pytest.param(body(status="pending"), "status", id="unknown-status"),
    pytest.param(body(status="SUCCESS"), "status", id="uppercase-status"),
    pytest.param(body(status=1), "status", id="number-status"),
]


@pytest.mark.parametrize("data, field", FIELD_CASES)
def test_it_rejects_a_bad_field_naming_it(world, data, field):
    before = counts()

    response = post(world.ingest, TRACK, data)

    assert response.status_code == 400, response.content[:500]
    answer = response.json()
    assert answer["status"] == "error"
    assert answer["message"]
    assert field in answer["errors"], answer
    assert all(isinstance(messages, list) and messages for messages in answer["errors"].values())
    assert counts() == before


@pytest.mark.parametrize("data, field", FIELD_CASES[:12])
def test_it_names_the_bad_field_of_a_batch_item(world, data, field):
    before = counts()

    response = post(world.ingest, "/api/v1/events", b"[" + data + b"]")

    assert response.status_code == 400, response.content[:500]
    assert field in response.json()["rejected"][0]["errors"]
    assert counts() == before


BODY_CASES = [
    pytest.param(b'{"model": "test-model", ', None, id="truncated-json"),
    pytest.param(b"{'model': 'test-model'}", None, id="single-quoted-json"),
    pytest.param(b"model=test-model", None, id="form-encoded"),
    pytest.param(b"", None, id="empty-body"),
    pytest.param(b"\xff\xfe\x00{", None, id="not-utf8"),
    pytest.param(b"[" * 100_000, None, id="deeply-nested-json"),
    pytest.param(b'"a string"', "non_field_errors", id="string-body"),
    pytest.param(b"42", "non_field_errors", id="number-body"),
    pytest.param(b"null", "non_field_errors", id="null-body"),
    pytest.param(b"true", "non_field_errors", id="bool-body"),
]


@pytest.mark.parametrize("data, field", BODY_CASES)
@pytest.mark.parametrize("url", [TRACK, "/api/v1/metrics/cache", "/api/v1/metrics/batch"])
def test_it_rejects_a_body_that_is_not_a_json_object(world, url, data, field):
    before = counts()

    response = post(world.ingest, url, data)

    assert response.status_code == 400, response.content[:500]
    answer = response.json()
    assert answer["status"] == "error"
    assert answer["message"]
    if field:
        assert field in answer["errors"]
    assert counts() == before


@pytest.mark.parametrize("data, field", [*BODY_CASES[:6], pytest.param(b'"a string"', "events", id="string-body")])
def test_it_rejects_a_batch_body_that_is_not_json_events(world, data, field):
    before = counts()

    response = post(world.ingest, "/api/v1/events", data)

    assert response.status_code == 400, response.content[:500]
    answer = response.json()
    assert answer["status"] == "error"
    assert answer["message"]
    if field:
        assert field in answer["errors"]
    assert counts() == before


@pytest.mark.parametrize(
    "url, field, constant",
    [
        (TRACK, "latency_ms", "NaN"),
        (TRACK, "response_cost", "Infinity"),
        (TRACK, "prompt_tokens", "-Infinity"),
        (TRACK, "cache_similarity_score", "NaN"),
        ("/api/v1/events", "latency_ms", "Infinity"),
        ("/api/v1/events", "response_cost", "NaN"),
        ("/api/v1/events", "time_to_first_token_ms", "-Infinity"),
    ],
)
def test_it_rejects_nan_and_infinity_literals(world, url, field, constant):
    data = raw(f'"{field}": {constant}')
    if url != TRACK:
        data = b"[" + data + b"]"
    before = counts()

    response = post(world.ingest, url, data)

    assert response.status_code == 400, response.content[:500]
    answer = response.json()
    assert answer["status"] == "error"
    assert constant.lstrip("-") in answer["message"]
    assert counts() == before


@pytest.mark.parametrize("url", INGEST_URLS)
def test_it_answers_413_to_a_body_over_the_limit(world, url):
    padding = b"x" * settings.API_MAX_BODY_BYTES
    data = b'{"model": "test-model", "user_id": "' + padding + b'"}'
    before = counts()

    response = post(world.ingest, url, data)

    assert response.status_code == 413, response.content[:500]
    answer = response.json()
    assert answer["status"] == "error"
    assert str(settings.API_MAX_BODY_BYTES) in answer["message"]
    assert counts() == before


def test_it_reads_the_body_limit_from_settings(world, settings):
    settings.API_MAX_BODY_BYTES = 2048
    assert post(world.ingest, TRACK, body(user_id="u" * 100)).status_code == 200
    assert post(world.ingest, TRACK, body(metadata={"blob": "x" * 3000})).status_code == 413


@pytest.mark.parametrize(
    "data, field",
    [
        pytest.param(body(model="gpt\u0000-4"), "model", id="model"),
        pytest.param(body(user_id="alice\u0000"), "user_id", id="user_id"),
        pytest.param(body(error_message="boom\u0000"), "error_message", id="error_message"),
        pytest.param(body(request_id="id\u0000"), "request_id", id="request_id"),
        pytest.param(body(metadata={"note": "a\u0000b"}), "metadata", id="metadata-value"),
        pytest.param(body(metadata={"a\u0000b": 1}), "metadata", id="metadata-key"),
        pytest.param(body(tags=["a\u0000"]), "tags", id="tags"),
    ],
)
def test_it_never_fails_on_a_nul_character(world, data, field):
    """PostgreSQL cannot store U+0000 in text: reject it (400 naming the field) or store it cleaned."""
    before = counts()

    response = post(world.ingest, TRACK, data)

    assert response.status_code in (200, 400), response.content[:500]
    if response.status_code == 400:
        # A list item is named by its position ("tags.0"), other fields by their name.
        assert any(key == field or key.startswith(f"{field}.") for key in response.json()["errors"])
        assert counts() == before
    else:
        assert UsageEvent.objects.count() == before[0] + 1


@pytest.mark.parametrize(
    "url, data, field",
    [
        pytest.param("/api/v1/metrics/batch", b'{"batch_id": "b\\u0000", "batch_size": 1}', "batch_id", id="batch_id"),
        pytest.param(
            "/api/v1/metrics/cache", b'{"cache_hit": 1, "team_alias": "a\\u0000"}', "team_alias", id="cache-team"
        ),
    ],
)
def test_it_never_fails_on_a_nul_character_in_cache_and_batch(world, url, data, field):
    before = counts()

    response = post(world.ingest, url, data)

    assert response.status_code in (200, 400), response.content[:500]
    if response.status_code == 400:
        assert field in response.json()["errors"]
        assert counts() == before


def test_it_rejects_a_huge_exponent_without_burning_cpu(world):
    """`1e200000` is 9 bytes; expanding it into a 200,000-digit integer must not be how it is checked."""
    before = counts()
    started = time.monotonic()

    response = post(world.ingest, TRACK, raw('"prompt_tokens": 1e200000'))

    elapsed = time.monotonic() - started
    assert response.status_code == 400, response.content[:500]
    assert "prompt_tokens" in response.json()["errors"]
    assert counts() == before
    assert elapsed < 1.0, f"validating one number took {elapsed:.1f}s"
