"""Poison input: one bad value is a 400 naming its field, never a 500, and never sinks a batch.

Times beyond what datetime holds once converted to UTC, text that has no UTF-8 form (a lone
surrogate: JSON's "\\ud800"), totals smaller than their parts and costs beyond a single call's
bound are refused on every ingest path (/track, /events, /metrics/cache, /metrics/batch, LiteLLM,
OTLP). In a batch the good events are stored and readable; the SDK's queue moves past a poison
event. Run on SQLite and on PostgreSQL (whose json and text types refuse lone surrogates).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from metrics_client import SyncMetricsClient
from pydantic import ValidationError

from metrics.models import BatchRun, CacheStat, UsageEvent
from metrics.schemas import EventIn, _EventRules, field_errors
from tests.conftest import api, event
from tests.live_server import LiveServer
from tests.test_integration_litellm import log as litellm_log
from tests.test_integration_litellm import post as litellm_post
from tests.test_integration_otlp import answer as otlp_answer
from tests.test_integration_otlp import chat, export, send, span
from tests.test_integration_otlp import request_id as span_request_id
from tests.web_support import page_settings

TRACK, EVENTS = "/api/v1/metrics/track", "/api/v1/events"
CACHE, BATCH = "/api/v1/metrics/cache", "/api/v1/metrics/batch"

# Times whose conversion to UTC leaves datetime's years 1-9999, and epoch seconds beyond them.
OUT_OF_RANGE_TIMES = [
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-01:00",
    "9999-12-31T23:59:59.999999-23:59",
    -62135596801,  # a second before year 1
    253402300800,  # year 10000
    10**20,
    -(10**20),
    1.5e300,
]
LONE_SURROGATES = ["\ud800", "x\udfff", "\udc00y", "ok \ud83d"]  # "\ud83d" alone: half an emoji


@pytest.fixture(autouse=True)
def _pages(settings):
    page_settings(settings)


def post(token, url: str, data) -> object:
    """POST `data` as JSON (json.dumps writes a lone surrogate as the escape "\\ud800")."""
    client = api(token)
    client.raise_request_exception = False  # a crash must show as the 500 a client would get
    body = data if isinstance(data, bytes) else json.dumps(data).encode()
    return client.post(url, body, content_type="application/json")


def ago(**delta) -> str:
    return (datetime.now(UTC) - timedelta(**delta)).isoformat()


def counts() -> tuple[int, int, int]:
    return UsageEvent.objects.count(), CacheStat.objects.count(), BatchRun.objects.count()


def errors_of(response) -> dict:
    assert response.status_code == 400, (response.status_code, response.content[:500])
    body = response.json()
    assert body["status"] == "error"
    return body["errors"]


def good_events(n: int, prefix: str) -> list[dict]:
    return [event(request_id=f"{prefix}-{i}", timestamp=ago(minutes=i + 1)) for i in range(n)]


def batch_with_poison(poison: dict, prefix: str) -> list[dict]:
    """Five good events with one poison event in the middle (index 2)."""
    good = good_events(5, prefix)
    return [*good[:2], poison, *good[2:]]


def assert_poison_rejected_and_good_stored(response, *, field: str, prefix: str):
    assert response.status_code == 200, response.content[:500]
    body = response.json()
    assert (body["status"], body["accepted"]) == ("partial", 5)
    assert [r["index"] for r in body["rejected"]] == [2]
    assert field in body["rejected"][0]["errors"], body["rejected"]
    stored = set(UsageEvent.objects.filter(request_id__startswith=prefix).values_list("request_id", flat=True))
    assert stored == {f"{prefix}-{i}" for i in range(5)}


# --- times -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("moment", OUT_OF_RANGE_TIMES, ids=str)
@pytest.mark.parametrize(
    "url, data",
    [
        (TRACK, event()),
        (CACHE, {"cache_hit": 1, "cache_miss": 1}),
        (BATCH, {"batch_id": "b-1", "batch_size": 2}),
    ],
    ids=["track", "cache", "batch"],
)
def test_an_out_of_range_timestamp_is_a_400_naming_it(world, url, data, moment):
    before = counts()

    response = post(world.ingest, url, {**data, "timestamp": moment})

    assert "timestamp" in errors_of(response)
    assert counts() == before


@pytest.mark.parametrize("moment", OUT_OF_RANGE_TIMES, ids=str)
def test_an_out_of_range_timestamp_in_a_batch_rejects_that_event_only(world, moment):
    response = post(world.ingest, EVENTS, {"events": batch_with_poison(event(timestamp=moment), "t")})

    assert_poison_rejected_and_good_stored(response, field="timestamp", prefix="t")


@pytest.mark.parametrize("name", ["startTime", "endTime", "completionStartTime"])
@pytest.mark.parametrize(
    "moment",
    ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-01:00", 1e308, -1e308, 253402300800, -1, "1e400"],
    ids=str,
)
def test_a_litellm_log_with_an_impossible_time_is_rejected_alone(world, name, moment):
    good = litellm_log("success", id="good-1")
    poison = litellm_log("success", id="poison-1", **{name: moment})

    response = litellm_post(world.ingest, [good, poison])

    assert response.status_code in (200, 400), response.content[:500]
    assert UsageEvent.objects.filter(request_id="good-1").exists()
    if not UsageEvent.objects.filter(request_id="poison-1").exists():  # a bad end or first-chunk time may be ignored
        rejected = response.json()["rejected"]
        assert [r["index"] for r in rejected] == [1]
        assert name in rejected[0]["errors"] or "startTime" in rejected[0]["errors"], rejected


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_an_otlp_span_at_the_largest_nanosecond_time_is_rejected_alone(world, encoding):
    good = span(chat())
    poison = span(chat())
    poison.start_time_unix_nano = 2**64 - 2  # year 2554
    poison.end_time_unix_nano = 2**64 - 1

    response = send(world.ingest, export(good, poison), encoding=encoding)

    assert response.status_code == 200, response.content[:500]
    assert otlp_answer(response).partial_success.rejected_spans == 1
    assert "start_time_unix_nano" in otlp_answer(response).partial_success.error_message
    assert UsageEvent.objects.filter(request_id=span_request_id(good)).exists()


def test_an_otlp_time_beyond_64_bits_is_a_400(world):
    body = {"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": "ab" * 16, "spanId": "cd" * 8, "name": "chat", "startTimeUnixNano": str(2**70),
    }]}]}]}

    response = api(world.ingest).generic("POST", "/v1/traces", json.dumps(body), content_type="application/json")

    assert response.status_code == 400, response.content[:500]


# --- text that is not valid UTF-8 ---------------------------------------------------------------------

TEXT_FIELDS = ["model", "batch_id", "user_id", "team_alias", "end_user", "query_type", "error_message",
               "request_id", "provider"]


def _surrogate_cases() -> list[tuple[str, dict, str]]:
    """(case id, event overrides, field the error must name)."""
    cases = [(name, {name: "bad \ud800 text"}, name) for name in TEXT_FIELDS]
    cases += [
        ("tag", {"tags": ["ok", "\ud800"]}, "tags.1"),
        ("metadata-value", {"metadata": {"note": "\ud800"}}, "metadata"),
        ("metadata-nested", {"metadata": {"a": {"b": ["fine", {"c": "x\udfff"}]}}}, "metadata"),
        ("metadata-key", {"metadata": {"\ud800": 1}}, "metadata"),
        ("metadata-nested-key", {"metadata": {"a": [{"k\udc00": "v"}]}}, "metadata"),
    ]
    return cases


SURROGATE_CASES = _surrogate_cases()


@pytest.mark.parametrize("overrides, field", [c[1:] for c in SURROGATE_CASES], ids=[c[0] for c in SURROGATE_CASES])
def test_a_lone_surrogate_in_any_string_is_a_400_naming_the_field(world, overrides, field):
    before = counts()

    response = post(world.ingest, TRACK, event(**overrides))

    errors = errors_of(response)
    assert field in errors, errors
    assert "surrogate" in " ".join(errors[field])
    assert counts() == before


@pytest.mark.parametrize("overrides, field", [c[1:] for c in SURROGATE_CASES], ids=[c[0] for c in SURROGATE_CASES])
def test_a_lone_surrogate_in_a_batch_rejects_that_event_and_the_rest_are_stored_and_shown(world, overrides, field):
    response = post(world.ingest, EVENTS, {"events": batch_with_poison(event(**overrides), "s")})

    assert_poison_rejected_and_good_stored(response, field=field, prefix="s")
    page = api()
    page.force_login(world.owner)
    for i in range(5):
        assert page.get(f"/o/acme/requests/s-{i}/").status_code == 200
    assert page.get("/o/acme/requests/").status_code == 200


@pytest.mark.parametrize("text", LONE_SURROGATES, ids=ascii)
def test_the_compiled_and_written_rules_refuse_lone_surrogates_alike(text):
    for data in ({"model": text}, {"model": "m", "tags": [text]}, {"model": "m", "metadata": {"k": [text]}},
                 {"model": "m", "metadata": {text: 1}}, {"model": "m", "user_id": text}):
        judged = []
        for schema in (EventIn, _EventRules):
            with pytest.raises(ValidationError) as caught:
                schema.model_validate(data)
            judged.append(field_errors(caught.value))
        assert judged[0] == judged[1], data


def test_valid_unicode_beyond_ascii_is_stored_as_sent(world):
    text = "naïve ✓ 日本 🚀"
    response = post(world.ingest, TRACK, event(request_id="u-1", user_id=text, tags=[text],
                                               metadata={text: [text, {"k": text}]}))

    assert response.status_code == 200, response.content[:500]
    stored = UsageEvent.objects.get(request_id="u-1")
    assert (stored.user_id, stored.tags, stored.metadata) == (text, [text], {text: [text, {"k": text}]})


@pytest.mark.parametrize("url, data, field", [
    (CACHE, {"cache_hit": 1, "team_alias": "\ud800"}, "team_alias"),
    (BATCH, {"batch_id": "b-\ud800", "batch_size": 2}, "batch_id"),
    (BATCH, {"batch_id": "b-1", "batch_size": 2, "team_alias": "x\udfff"}, "team_alias"),
], ids=["cache-team", "batch-id", "batch-team"])
def test_a_lone_surrogate_in_cache_and_batch_records_is_a_400_naming_the_field(world, url, data, field):
    before = counts()

    assert field in errors_of(post(world.ingest, url, data))
    assert counts() == before


def test_a_litellm_team_alias_that_is_not_unicode_rejects_that_log_by_name(world):
    good = litellm_log("success", id="good-1")
    poison = litellm_log("success", id="poison-1")
    poison["metadata"]["user_api_key_team_alias"] = "ML \ud800 Platform"

    response = litellm_post(world.ingest, [good, poison])

    assert response.status_code == 200, response.content[:500]
    [rejected] = response.json()["rejected"]
    assert rejected["index"] == 1
    assert list(rejected["errors"]) == ["metadata.user_api_key_team_alias"]
    assert list(UsageEvent.objects.values_list("request_id", flat=True)) == ["good-1"]


def test_a_litellm_tag_that_is_not_unicode_is_dropped_and_the_call_kept(world):
    payload = litellm_log("success", id="tagged-1", request_tags=["prod", "\ud800", "ok"])

    response = litellm_post(world.ingest, [payload])

    assert response.status_code == 200, response.content[:500]
    assert UsageEvent.objects.get(request_id="tagged-1").tags == ["prod", "ok"]


@pytest.mark.parametrize("field", ["error_str", "id", "model", "end_user"])
def test_other_litellm_text_that_is_not_unicode_rejects_that_log_naming_the_litellm_field(world, field):
    poison = litellm_log("failure" if field == "error_str" else "success", id="poison-1")
    poison[field] = "bad \ud800"

    response = litellm_post(world.ingest, [litellm_log("success", id="good-1"), poison])

    assert response.status_code == 200, response.content[:500]
    [rejected] = response.json()["rejected"]
    assert field in rejected["errors"], rejected
    assert list(UsageEvent.objects.values_list("request_id", flat=True)) == ["good-1"]


def test_an_otlp_json_attribute_that_is_not_unicode_is_a_400(world):
    body = {"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": "ab" * 16, "spanId": "cd" * 8, "name": "chat", "startTimeUnixNano": "1",
        "attributes": [{"key": "gen_ai.request.model", "value": {"stringValue": "m\ud800"}}],
    }]}]}]}

    response = api(world.ingest).generic("POST", "/v1/traces", json.dumps(body), content_type="application/json")

    assert response.status_code == 400, response.content[:500]
    assert UsageEvent.objects.count() == 0


def test_an_otlp_protobuf_string_that_is_not_utf8_is_a_400(world):
    item = span(chat(**{"gen_ai.request.model": "MARKER", "gen_ai.response.model": None}))
    body = export(item).SerializeToString().replace(b"MARKER", b"MA\xed\xa0\x80ER")  # an encoded surrogate

    response = api(world.ingest).generic("POST", "/v1/traces", body, content_type="application/x-protobuf")

    assert response.status_code == 400, response.content[:500]
    assert UsageEvent.objects.count() == 0


# --- totals and bounds --------------------------------------------------------------------------------


def test_a_total_below_prompt_plus_output_is_a_400_naming_total_tokens(world):
    before = counts()

    errors = errors_of(post(world.ingest, TRACK, event(prompt_tokens=1000, output_tokens=500, total_tokens=1499)))

    assert list(errors) == ["total_tokens"]
    assert counts() == before


def test_a_total_below_its_parts_in_a_batch_rejects_that_event_only(world):
    poison = event(prompt_tokens=10, output_tokens=10, total_tokens=5)

    response = post(world.ingest, EVENTS, {"events": batch_with_poison(poison, "tt")})

    assert_poison_rejected_and_good_stored(response, field="total_tokens", prefix="tt")


@pytest.mark.parametrize("total, stored", [(None, 1500), (1500, 1500), (1700, 1700)])
def test_a_total_at_or_above_its_parts_is_kept(world, total, stored):
    response = post(world.ingest, TRACK, event(request_id="t-1", prompt_tokens=1000, output_tokens=500,
                                               total_tokens=total))

    assert response.status_code == 200, response.content[:500]
    assert UsageEvent.objects.get(request_id="t-1").total_tokens == stored


def test_a_litellm_total_below_its_parts_names_total_tokens(world):
    poison = litellm_log("success", id="poison-1", prompt_tokens=100, completion_tokens=50, total_tokens=10)

    response = litellm_post(world.ingest, [litellm_log("success", id="good-1"), poison])

    assert response.status_code == 200, response.content[:500]
    assert "total_tokens" in response.json()["rejected"][0]["errors"]


@pytest.mark.parametrize("field", ["response_cost", "prompt_cost", "output_cost"])
def test_an_event_cost_above_10000_usd_is_a_400_naming_it(world, field):
    assert post(world.ingest, TRACK, event(request_id="c-1", **{field: 10_000})).status_code == 200
    before = counts()

    errors = errors_of(post(world.ingest, TRACK, event(**{field: 10000.0000000001})))

    assert field in errors
    assert counts() == before


@pytest.mark.parametrize("field", ["prompt_tokens", "output_tokens", "cached_tokens", "total_tokens"])
def test_an_event_token_count_above_100_million_is_a_400_naming_it(world, field):
    counts_at_limit = {"prompt_tokens": 100_000_000, "output_tokens": 0, field: 100_000_000}
    assert post(world.ingest, TRACK, event(request_id="k-1", **counts_at_limit)).status_code == 200

    over = {**counts_at_limit, field: 100_000_001}
    assert field in errors_of(post(world.ingest, TRACK, event(**over)))


def test_a_batch_run_may_cost_up_to_a_million_usd(world):
    assert post(world.ingest, BATCH, {"batch_id": "run-1", "batch_size": 1000, "batch_cost": 1_000_000}).status_code \
        == 200

    errors = errors_of(post(world.ingest, BATCH, {"batch_id": "run-2", "batch_size": 1, "batch_cost": 1_000_001}))

    assert "batch_cost" in errors
    assert BatchRun.objects.count() == 1


# --- the SDK ------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_the_sdk_stores_the_good_events_of_a_batch_and_moves_past_a_poison_one(world):
    with LiveServer() as server:
        client = SyncMetricsClient(base_url=server.url, api_key=world.ingest, flush_interval=60.0,
                                   backoff_base=0.05, backoff_max=0.3)
        try:
            # A string timestamp passes the SDK's own checks unchanged: only the server can judge it.
            client.track_request("test-model", prompt_tokens=10, request_id="sdk-poison",
                                 timestamp="9999-12-31T23:59:59-01:00")
            for i in range(5):
                client.track_request("test-model", prompt_tokens=10, output_tokens=5, request_id=f"sdk-{i}")

            assert client.flush(timeout=30)

            assert client.pending == 0
            assert (client.stats.sent, client.stats.rejected, client.stats.retries) == (5, 1, 0)
        finally:
            client.close(timeout=5)
    stored = set(UsageEvent.objects.filter(organization=world.acme).values_list("request_id", flat=True))
    assert stored == {f"sdk-{i}" for i in range(5)}
