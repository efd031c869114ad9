"""POST /api/v1/integrations/litellm: LiteLLM's generic API logger, as usage events.

Fixtures under tests/fixtures/litellm/ are StandardLoggingPayload objects as LiteLLM's logger
sends them; their times are moved to the last hour so they fall inside the ingest window.
Costs are worked out by hand from the test price (test-model: input 2, output 8, cache read 0.5
USD per million tokens).
"""

from __future__ import annotations

import copy
import gzip
import json
import time
from decimal import Decimal
from pathlib import Path

import pytest

from metrics.models import UsageEvent
from tests.conftest import api

URL = "/api/v1/integrations/litellm"
FIXTURES = Path(__file__).parent / "fixtures" / "litellm"
TIME_FIELDS = ("startTime", "endTime", "completionStartTime")


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """The world's four users are created with passwords: hash them cheaply in these tests."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def log(name: str, **overrides) -> dict:
    """A fixture log moved to an hour ago (keeping its own durations), with fields overridden."""
    payload = json.loads((FIXTURES / f"{name}.json").read_text())
    shift = (time.time() - 3600) - payload["startTime"]
    for field in TIME_FIELDS:
        if payload.get(field) is not None:
            payload[field] = round(payload[field] + shift, 6)
    payload.update(overrides)
    return payload


def post(token, body, *, content_type="application/json", **headers):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return api(token).generic("POST", URL, data, content_type=content_type, **headers)


def stored(request_id: str) -> UsageEvent:
    return UsageEvent.objects.get(request_id=request_id)


# --- mapping and costs --------------------------------------------------------------------------


def test_it_records_a_successful_call_with_its_price(world):
    payload = log("success")

    response = post(world.ingest, [payload])

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["status"], body["accepted"], body["duplicates"], body["rejected"]) == ("success", 1, 0, [])
    assert Decimal(str(body["results"][0]["cost"])) == Decimal("0.0048")  # 1200 × 2/M + 300 × 8/M
    event = stored("chatcmpl-BwQ3kL9rTz8mXoP2aV7nE1cD4fGhJ")
    assert (event.model, event.provider, event.is_priced) == ("test-model", "testprov", True)
    assert (event.prompt_tokens, event.output_tokens, event.total_tokens, event.cached_tokens) == (1200, 300, 1500, 0)
    assert event.cost == Decimal("0.0048")
    assert event.client_cost == Decimal("0.0048")
    assert event.latency_ms == pytest.approx(1750.0)
    assert event.time_to_first_token_ms is None  # not streamed: LiteLLM's completionStartTime is the end
    assert event.timestamp.timestamp() == pytest.approx(payload["startTime"], abs=1e-3)
    assert (event.status, event.error_message, event.cache_hit) == ("success", "", False)
    assert event.team == world.chatbot
    assert (event.user_id, event.end_user) == ("alice@acme.test", "customer-4711")
    assert event.tags == ["prod", "support-bot"]
    assert event.metadata["source"] == "litellm"
    assert event.metadata["model_group"] == "chat-default"
    assert "messages" not in json.dumps(event.metadata)


def test_it_prices_cached_prompt_tokens_at_the_cache_read_price(world):
    response = post(world.ingest, [log("streamed_cached_tokens")])

    assert response.status_code == 200, response.content
    event = stored("chatcmpl-Cq7Rt2vWxYz0aBcD3eFgH4iJkLm")
    assert (event.prompt_tokens, event.cached_tokens, event.output_tokens) == (2000, 1500, 100)
    # (2000 − 1500) × 2/M + 1500 × 0.5/M + 100 × 8/M
    assert event.cost == Decimal("0.00255")
    assert event.model == "test-model"  # the dated snapshot finds the model's price
    assert event.latency_ms == pytest.approx(2500.0)
    assert event.time_to_first_token_ms == pytest.approx(420.0, abs=0.01)  # streamed: first chunk − start
    assert event.team == world.search


def test_it_reads_anthropic_cache_reads_from_the_usage_object(world):
    response = post(world.ingest, log("anthropic_cache_read"))

    assert response.status_code == 200, response.content
    event = stored("msg_01XFDUDYJgAACzvnptvVoYEL")
    assert (event.prompt_tokens, event.cached_tokens, event.output_tokens) == (4000, 3000, 250)
    assert event.cache_write_tokens == 200  # usage_object.cache_creation_input_tokens
    # (4000 − 3000 − 200) × 2/M + 3000 × 0.5/M + 200 × 2/M (no cache-write price: the input's) + 250 × 8/M
    assert event.cost == Decimal("0.0055")
    assert event.provider == "testprov"
    assert event.end_user == "customer-99"  # from the key's end user when the log has none
    assert event.team.is_default  # the log names no team


def with_details(payload: dict, *, prompt: dict | None = None, completion: dict | None = None) -> dict:
    usage = payload["metadata"]["usage_object"]
    usage["prompt_tokens_details"].update(prompt or {})
    usage["completion_tokens_details"].update(completion or {})
    return payload


def test_it_records_audio_and_reasoning_tokens_as_usage(world):
    payload = with_details(log("success"), prompt={"audio_tokens": 400, "cached_tokens": 100},
                           completion={"audio_tokens": 50, "reasoning_tokens": 120})

    response = post(world.ingest, [payload])

    assert response.status_code == 200, response.content
    assert response.json()["accepted"] == 1
    event = stored(payload["id"])
    assert event.cached_tokens == 100
    assert event.usage == {"input_audio_tokens": 400, "output_audio_tokens": 50, "output_reasoning_tokens": 120}
    assert "usage_ignored" not in event.metadata


def test_it_stores_no_usage_for_zero_details(world):
    payload = log("success")  # LiteLLM's zeros for audio and reasoning

    post(world.ingest, [payload])

    event = stored(payload["id"])
    assert event.usage == {}
    assert "usage_ignored" not in event.metadata


@pytest.mark.parametrize(
    "prompt, completion, kept, ignored",
    [
        # 300 completion tokens: 999 reasoning tokens cannot be part of them.
        ({}, {"reasoning_tokens": 999, "audio_tokens": 20}, {"output_audio_tokens": 20},
         {"output_reasoning_tokens": 999}),
        ({"audio_tokens": 1201}, {}, {}, {"input_audio_tokens": 1201}),
        ({"audio_tokens": "lots"}, {"reasoning_tokens": -3}, {}, {"input_audio_tokens": "lots",
                                                                  "output_reasoning_tokens": -3}),
        ({"audio_tokens": 2.5}, {"reasoning_tokens": True}, {}, {"input_audio_tokens": "2.5",
                                                                 "output_reasoning_tokens": "True"}),
    ],
)
def test_a_detail_that_does_not_fit_is_kept_aside_and_the_call_recorded(world, prompt, completion, kept, ignored):
    payload = with_details(log("success"), prompt=prompt, completion=completion)

    response = post(world.ingest, [payload])

    assert response.status_code == 200, response.content
    assert response.json()["rejected"] == []
    event = stored(payload["id"])
    assert event.usage == kept
    assert event.metadata["usage_ignored"] == ignored
    assert event.cost == Decimal("0.0048")  # priced on its totals, as without the details


def test_details_fit_the_prompt_once_cache_writes_are_added_to_it(world):
    # Anthropic through older LiteLLM versions: prompt_tokens (3,100) leaves the 200 cache writes out.
    payload = log("anthropic_cache_read", prompt_tokens=3100, total_tokens=3350)
    payload["metadata"]["usage_object"]["prompt_tokens_details"]["audio_tokens"] = 3250

    response = post(world.ingest, payload)

    assert response.json()["rejected"] == []
    event = stored(payload["id"])
    assert (event.prompt_tokens, event.cached_tokens, event.cache_write_tokens) == (3300, 3000, 200)
    assert event.usage == {"input_audio_tokens": 3250}


def test_it_records_a_failed_call_as_an_error_with_its_message(world):
    response = post(world.ingest, [log("failure")])

    assert response.status_code == 200, response.content
    event = stored("5d8f1c2a-9b3e-4f7a-8c6d-1e2f3a4b5c6d")
    assert event.status == "error"
    assert event.error_message.startswith("litellm.Timeout: APITimeoutError")
    assert event.cost == Decimal(0)
    assert (event.prompt_tokens, event.output_tokens) == (0, 0)
    assert event.latency_ms == pytest.approx(30000.0)
    assert event.metadata["error_code"] == "408"


def test_it_records_a_litellm_cache_hit_as_free(world):
    response = post(world.ingest, [log("cache_hit")])

    assert response.status_code == 200, response.content
    event = stored("chatcmpl-BwQ3kL9rTz8mXoP2aV7nE1cD4fGhJ_cache_hit1767226000.512")
    assert event.cache_hit is True
    # Answered from LiteLLM's cache: the provider billed nothing, whatever the price of the model.
    assert event.cost == Decimal(0)
    assert (event.prompt_tokens, event.output_tokens, event.total_tokens) == (0, 0, 0)
    assert event.metadata["cache_hit_usage"] == {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500}
    assert event.metadata["saved_cache_cost"] == pytest.approx(0.0048)
    assert event.latency_ms == pytest.approx(12.0, abs=0.01)


def test_it_keeps_litellms_cost_for_a_model_without_a_price(world):
    response = post(world.ingest, [log("unpriced_model")])

    assert response.status_code == 200, response.content
    event = stored("gen-1767226100-AbCdEfGhIjKlMnOp")
    assert event.is_priced is False
    assert event.cost == Decimal("0.0123")


def test_litellms_cost_never_replaces_our_price(world):
    post(world.ingest, [log("success", response_cost=99.5)])

    assert stored("chatcmpl-BwQ3kL9rTz8mXoP2aV7nE1cD4fGhJ").cost == Decimal("0.0048")


# --- body formats -------------------------------------------------------------------------------


ALL = ["success", "streamed_cached_tokens", "anthropic_cache_read", "failure", "cache_hit", "unpriced_model"]
TOTAL = Decimal("0.0048") + Decimal("0.00255") + Decimal("0.0055") + Decimal("0.0123")


def test_it_records_a_json_array_batch(world):
    response = post(world.ingest, [log(name) for name in ALL])

    assert response.status_code == 200, response.content
    assert response.json()["accepted"] == 6
    assert sum(e.cost for e in UsageEvent.objects.all()) == TOTAL


@pytest.mark.parametrize(
    "content_type", ["application/x-ndjson", "application/json", "application/json; charset=utf-8"]
)
def test_it_records_ndjson_whatever_content_type_litellm_sends(world, content_type):
    # LiteLLM's ndjson log_format keeps its default header, application/json.
    body = "\n".join(json.dumps(log(name)) for name in ALL).encode()

    response = post(world.ingest, body, content_type=content_type)

    assert response.status_code == 200, response.content
    assert response.json()["accepted"] == 6
    assert [r["index"] for r in response.json()["results"]] == list(range(6))
    assert sum(e.cost for e in UsageEvent.objects.all()) == TOTAL


def test_it_records_one_object_per_request(world):
    response = post(world.ingest, log("success"))

    assert response.status_code == 200, response.content
    assert response.json()["accepted"] == 1


def test_it_accepts_a_gzip_body(world):
    body = gzip.compress(json.dumps([log("success")]).encode())

    response = post(world.ingest, body, HTTP_CONTENT_ENCODING="gzip")

    assert response.status_code == 200, response.content
    assert UsageEvent.objects.count() == 1


def test_a_resent_batch_counts_once(world):
    batch = [log(name) for name in ALL]
    assert post(world.ingest, batch).json()["accepted"] == 6

    again = post(world.ingest, batch)

    assert again.status_code == 200
    assert (again.json()["accepted"], again.json()["duplicates"]) == (0, 6)
    assert [Decimal(str(r["cost"])) for r in again.json()["results"]][:3] == [
        Decimal("0.0048"), Decimal("0.00255"), Decimal("0.0055")
    ]
    assert UsageEvent.objects.count() == 6
    assert sum(e.cost for e in UsageEvent.objects.all()) == TOTAL


# --- bad input ----------------------------------------------------------------------------------


def test_it_stores_the_good_logs_and_names_the_fields_of_the_bad_ones(world):
    good = log("success")
    batch = [
        good,
        log("failure", id=None),
        log("streamed_cached_tokens", startTime="yesterday"),
        log("anthropic_cache_read", completion_tokens=-5),
        "not a log",
        log("cache_hit", status="maybe"),
        log("unpriced_model", endTime=good["startTime"] - 100),
        log("success", id="too-many-cached",
            metadata={"usage_object": {"prompt_tokens_details": {"cached_tokens": 5000}}}),
        log("success", id="bad-team", metadata={"user_api_key_team_alias": ["not", "a", "name"]}),
        log("success", id="ms-times", startTime=good["startTime"] * 1000),
        log("cache_hit", id="text-flag", cache_hit="true"),
    ]

    response = post(world.ingest, batch)

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "partial"
    assert body["accepted"] == 1
    errors = {r["index"]: r["errors"] for r in body["rejected"]}
    assert sorted(errors) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert "id" in errors[1]
    assert "startTime" in errors[2]
    assert "completion_tokens" in errors[3]
    assert "non_field_errors" in errors[4]
    assert "status" in errors[5]
    assert "endTime" in errors[6]
    assert "metadata.usage_object.prompt_tokens_details.cached_tokens" in errors[7]
    assert "metadata.user_api_key_team_alias" in errors[8]
    assert "startTime" in errors[9]
    assert "cache_hit" in errors[10]
    assert list(UsageEvent.objects.values_list("request_id", flat=True)) == [good["id"]]


def test_a_bad_ndjson_line_is_rejected_alone(world):
    body = b"\n".join([json.dumps(log("success")).encode(), b"{not json", json.dumps(log("failure")).encode()])

    response = post(world.ingest, body, content_type="application/x-ndjson")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["accepted"] == 2
    assert body["rejected"][0]["index"] == 1
    assert "line 2" in body["rejected"][0]["errors"]["non_field_errors"][0]


@pytest.mark.parametrize(
    ("body", "content_type", "needle"),
    [
        (b"", "application/json", "empty"),
        (b"{not json", "application/json", "not valid JSON"),
        (b"42", "application/json", "LiteLLM logs"),
        (b"[1, NaN]", "application/json", "NaN"),
        (b"\n\n", "application/x-ndjson", "empty"),
        (b"[]", "application/json", "no LiteLLM log"),
    ],
)
def test_it_answers_400_naming_the_problem_with_a_malformed_body(world, body, content_type, needle):
    response = post(world.ingest, body, content_type=content_type)

    assert response.status_code == 400
    assert response.json()["status"] == "error"
    assert needle in response.json()["message"]
    assert not UsageEvent.objects.exists()


@pytest.mark.parametrize("start", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "1969-12-31T23:59:59Z"])
def test_a_time_outside_the_epoch_range_is_rejected_naming_it(world, start):
    response = post(world.ingest, [log("success", startTime=start)])

    assert response.status_code == 400
    assert "startTime" in response.json()["rejected"][0]["errors"]


def test_a_team_name_with_nothing_an_alias_can_hold_goes_to_the_default_team(world):
    post(world.ingest, [log("success", metadata={"user_api_key_team_alias": "日本"})])

    event = UsageEvent.objects.get()
    assert event.team.is_default
    assert event.metadata["litellm_team_alias"] == "日本"


def test_it_answers_400_when_no_log_is_valid(world):
    response = post(world.ingest, [log("success", model=None, model_group=None), log("failure", startTime=None)])

    assert response.status_code == 400
    body = response.json()
    assert body["status"] == "error"
    assert [r["index"] for r in body["rejected"]] == [0, 1]
    assert "model" in body["rejected"][0]["errors"]
    assert "startTime" in body["rejected"][1]["errors"]


def test_it_answers_400_for_bad_gzip_and_415_for_other_encodings(world):
    bad = post(world.ingest, b"not gzip at all", HTTP_CONTENT_ENCODING="gzip")
    brotli = post(world.ingest, b"....", HTTP_CONTENT_ENCODING="br")

    assert (bad.status_code, bad.json()["status"]) == (400, "error")
    assert "gzip" in bad.json()["message"]
    assert (brotli.status_code, brotli.json()["status"]) == (415, "error")


def test_it_refuses_too_many_logs_in_one_request(world, settings):
    settings.API_MAX_BATCH_EVENTS = 2

    response = post(world.ingest, [log("success", id=f"x-{i}") for i in range(3)])

    assert response.status_code == 400
    assert "batch_size" in response.json()["errors"]["non_field_errors"][0]


def test_a_gzip_body_may_not_expand_past_the_size_limit(world, settings):
    settings.API_MAX_BODY_BYTES = 2048
    body = gzip.compress(b"[" + b" " * 10_000 + b"]")

    response = post(world.ingest, body, HTTP_CONTENT_ENCODING="gzip")

    assert response.status_code == 413
    assert response.json()["status"] == "error"


# --- who may send -------------------------------------------------------------------------------


def test_an_ingest_token_pinned_to_a_team_records_into_that_team(world):
    response = post(world.pinned, [log("streamed_cached_tokens")])  # the log names team "search"

    assert response.status_code == 200, response.content
    assert stored("chatcmpl-Cq7Rt2vWxYz0aBcD3eFgH4iJkLm").team == world.chatbot


def test_a_team_display_name_becomes_an_alias_and_is_kept_in_metadata(world):
    post(world.ingest, [log("success", metadata={"user_api_key_team_alias": "  ML Platform / EU "})])

    event = UsageEvent.objects.get()
    assert event.team.alias == "ML-Platform-EU"
    assert event.metadata["litellm_team_alias"] == "  ML Platform / EU "


def test_an_unknown_team_alias_creates_the_team(world):
    post(world.ingest, [log("success", metadata={"user_api_key_team_alias": "growth"})])

    event = stored("chatcmpl-BwQ3kL9rTz8mXoP2aV7nE1cD4fGhJ")
    assert (event.team.alias, event.team.organization) == ("growth", world.acme)


def test_an_unknown_team_alias_is_rejected_when_auto_create_is_off(world):
    world.acme.auto_create_teams = False
    world.acme.save()

    response = post(world.ingest, [log("success", metadata={"user_api_key_team_alias": "growth"})])

    assert response.status_code == 400
    assert "metadata.user_api_key_team_alias" in response.json()["rejected"][0]["errors"]


def test_a_read_only_token_may_not_send(world):
    response = post(world.read, [log("success")])

    assert response.status_code == 403
    assert response.json()["status"] == "error"
    assert not UsageEvent.objects.exists()


@pytest.mark.parametrize("header", [None, "Bearer lc_not_a_real_token", "Token abc"])
def test_it_answers_401_without_a_valid_token(world, header):
    client = api()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)

    response = client.post(URL, [log("success")], format="json")

    assert response.status_code == 401
    assert response.json()["status"] == "error"
    assert not UsageEvent.objects.exists()


def test_another_organizations_token_records_into_its_own_organization_only(world):
    payload = log("success")
    post(world.globex_token, [payload])
    post(world.ingest, [copy.deepcopy(payload)])

    globex = UsageEvent.objects.get(organization=world.globex)
    acme = UsageEvent.objects.get(organization=world.acme)
    # The same LiteLLM id in two organizations is two calls; globex's alias "chatbot" is its own team.
    assert globex.team == world.globex_chatbot
    assert acme.team == world.chatbot
    assert [r["request_id"] for r in api(world.read).get("/api/v1/requests/recent").json()] == [payload["id"]]
