"""A duplicate answer never shows an event the caller could not read.

`request_id` is unique per organization, so a token pinned to team chatbot that posts an id another
team (search) already stored gets `duplicate: true` and nothing is stored again; but the stored
event's cost and tokens are search's figures, which that token may not read (GET /requests/recent
hides them), so the answer carries them as null. A pinned token still gets the figures of its own
team's events; an unpinned token gets them for any team.
"""

from __future__ import annotations

import gzip
import json
import secrets

import pytest

from metrics.models import UsageEvent
from tests.conftest import api, event
from tests.test_integration_litellm import log
from tests.test_integration_otlp import chat, export, span

# test-model: 2 USD per million input tokens, 8 per million output tokens.
SEARCH_COST = 0.01  # 1000 prompt + 1000 output tokens
CHATBOT_COST = 0.006  # 1000 prompt + 500 output tokens


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def track(token, body):
    response = api(token).post("/api/v1/metrics/track", body, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def batch(token, bodies):
    response = api(token).post("/api/v1/events", {"events": bodies}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def stored_by_search(world, request_id: str) -> None:
    """search's event, sent by an unpinned token."""
    answer = track(world.ingest, event(request_id=request_id, team_alias="search", output_tokens=1000))
    assert (answer["duplicate"], answer["cost"], answer["tokens"]) == (False, SEARCH_COST, 2000)


def test_a_pinned_token_is_not_shown_another_teams_event_on_track(world):
    stored_by_search(world, "search-1")

    answer = track(world.pinned, event(request_id="search-1"))

    assert answer["status"] == "success" and answer["duplicate"] is True
    assert answer["request_id"] == "search-1"
    assert (answer["cost"], answer["tokens"], answer["priced"]) == (None, None, None)
    assert {"status", "message", "request_id", "cost", "tokens", "duplicate"} <= set(answer)
    stored = UsageEvent.objects.get(request_id="search-1")  # nothing stored again, nothing changed
    assert (stored.team_id, stored.total_tokens) == (world.search.id, 2000)
    assert UsageEvent.objects.count() == 1


def test_a_pinned_token_is_not_shown_another_teams_event_in_a_batch(world):
    stored_by_search(world, "search-1")

    answer = batch(world.pinned, [event(request_id="search-1"), event(request_id="fresh-1")])

    assert (answer["accepted"], answer["duplicates"]) == (1, 1)
    assert answer["results"] == [
        {"index": 0, "request_id": "search-1", "duplicate": True, "cost": None},
        {"index": 1, "request_id": "fresh-1", "duplicate": False, "cost": CHATBOT_COST},
    ]
    # The same hidden id twice in one batch: both answered without figures.
    again = batch(world.pinned, [event(request_id="search-1"), event(request_id="search-1")])
    assert [(r["duplicate"], r["cost"]) for r in again["results"]] == [(True, None), (True, None)]


def test_a_pinned_token_still_gets_its_own_teams_figures(world):
    first = track(world.pinned, event(request_id="chat-1"))
    # Stored by an unpinned token into chatbot: still the pinned token's team.
    track(world.ingest, event(request_id="chat-2", team_alias="chatbot"))

    retry = track(world.pinned, event(request_id="chat-1"))
    other = batch(world.pinned, [event(request_id="chat-2")])

    assert (retry["duplicate"], retry["cost"], retry["tokens"], retry["priced"]) == (True, first["cost"], 1500, True)
    assert other["results"][0] == {"index": 0, "request_id": "chat-2", "duplicate": True, "cost": CHATBOT_COST}


def test_an_unpinned_token_gets_the_figures_of_any_team(world):
    stored_by_search(world, "search-1")
    track(world.pinned, event(request_id="chat-1"))

    on_track = track(world.both, event(request_id="search-1", team_alias="chatbot"))
    in_batch = batch(world.ingest, [event(request_id="chat-1", team_alias="search")])

    assert (on_track["duplicate"], on_track["cost"], on_track["tokens"]) == (True, SEARCH_COST, 2000)
    assert in_batch["results"][0] == {"index": 0, "request_id": "chat-1", "duplicate": True, "cost": CHATBOT_COST}


def test_another_organizations_id_is_not_a_duplicate_at_all(world):
    stored_by_search(world, "shared-id")

    answer = track(world.globex_token, event(request_id="shared-id"))

    assert (answer["duplicate"], answer["cost"]) == (False, CHATBOT_COST)


def test_the_litellm_receiver_hides_another_teams_duplicate(world):
    payload = log("success")
    api(world.ingest).generic("POST", "/api/v1/integrations/litellm",
                              json.dumps([{**payload, "metadata": {**(payload.get("metadata") or {}),
                                                                   "user_api_key_team_alias": "search"}}]),
                              content_type="application/json")
    stored = UsageEvent.objects.get()
    assert stored.team_id == world.search.id

    response = api(world.pinned).generic("POST", "/api/v1/integrations/litellm",
                                         gzip.compress(json.dumps([payload]).encode()),
                                         content_type="application/json", HTTP_CONTENT_ENCODING="gzip")

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["accepted"], body["duplicates"]) == (0, 1)
    assert body["results"] == [{"index": 0, "request_id": stored.request_id, "duplicate": True, "cost": None}]
    assert UsageEvent.objects.count() == 1


def test_the_otlp_receiver_stores_another_teams_span_once(world):
    """OTLP answers carry no figures at all: a re-sent span of another team is just not stored twice."""
    trace_id, span_id = secrets.token_bytes(16), secrets.token_bytes(8)
    request = export(span(chat(**{"llmcost.team_alias": "search"}), trace_id=trace_id, span_id=span_id))
    body = request.SerializeToString()
    for token in (world.ingest, world.pinned):
        response = api(token).generic("POST", "/v1/traces", body, content_type="application/x-protobuf")
        assert response.status_code == 200, response.content

    assert UsageEvent.objects.get().team_id == world.search.id
