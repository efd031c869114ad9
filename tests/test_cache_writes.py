"""Prompt tokens written to the provider's cache (`cache_write_tokens`): part of `prompt_tokens`,
billed at the cache-write price (Anthropic: 1.25× input), stored, rolled up, shown and exported,
and carried by the SDK, LiteLLM and OpenTelemetry."""

from __future__ import annotations

import csv
import io
import json
import time
import uuid
from decimal import Decimal

import pytest
from metrics_client import SyncMetricsClient

from metrics.models import UsageEvent
from metrics.rollups import dirty_rollups_refresh
from tests.conftest import api, event, make_price
from tests.live_server import LiveServer
from tests.rollup_support import assert_rollups_equal_raw, no_dirty_marks
from tests.test_integration_litellm import log as litellm_log
from tests.test_integration_litellm import post as litellm_post
from tests.test_integration_otlp import chat, export, request_id, send, span
from tests.web_support import client_for, page_settings


@pytest.fixture(autouse=True)
def _settings(settings):
    page_settings(settings)
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def claude(world):
    """$3 input, $15 output, $0.30 cache read, $3.75 cache write per million tokens."""
    price = make_price("claude-test", input="3", output="15", cache_read="0.3", provider="anthropic")
    price.cache_write_per_mtok = Decimal("3.75")
    price.save()
    return price


def track(token: str, **fields):
    return api(token).post("/api/v1/metrics/track", event(**fields), format="json")


def money(response) -> dict:
    return json.loads(response.content, parse_float=Decimal)


def test_it_bills_cache_writes_at_the_cache_write_price_and_reads_at_the_read_price(world, claude):
    # 10,000 input tokens: 6,000 read from the cache, 3,000 written to it, 1,000 plain; 500 output.
    response = track(world.ingest, model="claude-test", prompt_tokens=10_000, cached_tokens=6_000,
                     cache_write_tokens=3_000, output_tokens=500, request_id="cw-1")

    assert response.status_code == 200, response.content
    expected = (1_000 * Decimal(3) + 6_000 * Decimal("0.3") + 3_000 * Decimal("3.75") + 500 * Decimal(15)) / 10**6
    assert money(response)["cost"] == expected == Decimal("0.02355")
    stored = UsageEvent.objects.get(request_id="cw-1")
    assert (stored.prompt_tokens, stored.cached_tokens, stored.cache_write_tokens) == (10_000, 6_000, 3_000)
    assert stored.cost == expected
    assert stored.prompt_cost == expected - 500 * Decimal(15) / 10**6


def test_a_price_without_a_cache_write_price_bills_cache_writes_as_input(world):
    response = track(world.ingest, model="test-model", prompt_tokens=1_000, cache_write_tokens=400, output_tokens=0)
    assert money(response)["cost"] == Decimal("0.002")  # 1,000 × $2/M, the writes included


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prompt_tokens": 100, "cached_tokens": 60, "cache_write_tokens": 50}, "must not exceed prompt_tokens"),
        ({"prompt_tokens": 100, "cache_write_tokens": -1}, "greater than or equal to 0"),
        ({"prompt_tokens": 100, "cache_write_tokens": "50"}, "integer"),
        ({"prompt_tokens": 100, "cache_write_tokens": 1.5}, "whole number"),
    ],
)
def test_it_refuses_cache_writes_that_cannot_be_part_of_the_prompt(world, fields, message):
    response = track(world.ingest, request_id="cw-bad", **fields)

    assert response.status_code == 400, response.content
    errors = response.json()["errors"]
    assert list(errors) == ["cache_write_tokens"] and message in " ".join(errors["cache_write_tokens"])
    assert not UsageEvent.objects.filter(request_id="cw-bad").exists()


def test_cache_writes_are_rolled_up_listed_shown_and_exported(world, claude):
    bodies = [
        event(model="claude-test", prompt_tokens=2_000, cached_tokens=500, cache_write_tokens=n * 100,
              request_id=f"cw-{n}", team_alias="chatbot" if n % 2 else "search")
        for n in range(1, 7)
    ]
    response = api(world.ingest).post("/api/v1/events", {"events": bodies}, format="json")
    assert response.status_code == 200 and response.json()["accepted"] == 6, response.content

    dirty_rollups_refresh()
    assert no_dirty_marks()
    assert_rollups_equal_raw()  # the oracle sums cache_write_tokens per bucket too

    recent = api(world.read).get("/api/v1/requests/recent", {"limit": 10}).json()
    assert sorted(row["cache_write_tokens"] for row in recent) == [100, 200, 300, 400, 500, 600]

    owner = client_for(world.owner)
    stored = UsageEvent.objects.get(request_id="cw-3")
    page = owner.get(f"/o/acme/requests/{stored.request_id}/").content.decode()
    assert "500 read from cache, 300 written to cache" in page
    export_body = b"".join(owner.get("/o/acme/requests.csv").streaming_content).decode()
    rows = {row["request_id"]: row for row in csv.DictReader(io.StringIO(export_body))}
    assert rows["cw-3"]["cache_write_tokens"] == "300"
    # A member limited to chatbot sees only chatbot's events, cache writes included.
    viewer_rows = csv.DictReader(io.StringIO(b"".join(
        client_for(world.viewer).get("/o/acme/requests.csv").streaming_content).decode()))
    assert {row["request_id"] for row in viewer_rows} == {"cw-1", "cw-3", "cw-5"}
    assert client_for(world.outsider).get(f"/o/acme/requests/{stored.request_id}/").status_code == 404


def test_litellm_cache_creation_tokens_are_cache_writes(world, claude):
    # Newer LiteLLM counts cache reads and writes inside prompt_tokens; older versions (and
    # Anthropic's own input_tokens) leave them out: the parts then exceed the whole.
    inside = litellm_log("success", id=f"ll-{uuid.uuid4()}", model="claude-test", custom_llm_provider="anthropic",
                         prompt_tokens=10_000, completion_tokens=500, total_tokens=10_500)
    inside["metadata"]["usage_object"] = {"cache_read_input_tokens": 6_000, "cache_creation_input_tokens": 3_000}
    outside = litellm_log("success", id=f"ll-{uuid.uuid4()}", model="claude-test", custom_llm_provider="anthropic",
                          prompt_tokens=7_000, completion_tokens=500, total_tokens=7_500)
    outside["metadata"]["usage_object"] = {"cache_read_input_tokens": 6_000, "cache_creation_input_tokens": 3_000}

    response = litellm_post(world.ingest, [inside, outside])

    assert response.status_code == 200 and response.json()["accepted"] == 2, response.content
    first, second = (UsageEvent.objects.get(request_id=log["id"]) for log in (inside, outside))
    assert (first.prompt_tokens, first.cached_tokens, first.cache_write_tokens) == (10_000, 6_000, 3_000)
    assert first.cost == Decimal("0.02355")
    assert (second.prompt_tokens, second.cached_tokens, second.cache_write_tokens) == (10_000, 6_000, 3_000)
    assert second.total_tokens == 10_500 and second.cost == Decimal("0.02355")


def test_opentelemetry_cache_creation_tokens_are_cache_writes(world, claude):
    item = span(chat(**{"gen_ai.request.model": "claude-test", "gen_ai.response.model": "claude-test",
                        "gen_ai.usage.input_tokens": 10_000, "gen_ai.usage.output_tokens": 500,
                        "gen_ai.usage.cache_read.input_tokens": 6_000,
                        "gen_ai.usage.cache_creation.input_tokens": 3_000}))

    response = send(world.ingest, export(item))

    assert response.status_code == 200, response.content
    stored = UsageEvent.objects.get(request_id=request_id(item))
    assert (stored.cached_tokens, stored.cache_write_tokens, stored.cost) == (6_000, 3_000, Decimal("0.02355"))


@pytest.mark.django_db(transaction=True)  # the live server reads what this test wrote
def test_the_sdk_sends_cache_writes(world, claude):
    with LiveServer() as live:
        client = SyncMetricsClient(base_url=live.url, api_key=world.ingest, flush_interval=60.0)
        try:
            answer = client.track_request(model="claude-test", prompt_tokens=10_000, cached_tokens=6_000,
                                          cache_write_tokens=3_000, output_tokens=500, request_id="sdk-cw",
                                          wait=True)
            assert answer["status"] == "success" and answer["cost"] == Decimal("0.02355"), answer
            queued = client.track_request(model="claude-test", prompt_tokens=100, cache_write_tokens=100,
                                          output_tokens=0, request_id="sdk-cw-queued")
            assert queued["status"] == "queued"
            assert client.flush(timeout=10)
        finally:
            client.close(timeout=2)
    deadline = time.monotonic() + 5
    while not UsageEvent.objects.filter(request_id="sdk-cw-queued").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert UsageEvent.objects.get(request_id="sdk-cw-queued").cache_write_tokens == 100
