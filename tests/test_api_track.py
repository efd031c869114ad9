"""POST /api/v1/metrics/track: the seed's one-event endpoint, from every side."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from metrics.models import UsageEvent
from teams.models import Team
from teams.services import token_revoke
from tests.conftest import api, event, make_price

URL = "/api/v1/metrics/track"

# The seed's example call (metrics_client.track_request), verbatim.
SEED_REQUEST = {
    "model": "models/gemini-2.5-flash",
    "prompt_tokens": 100,
    "output_tokens": 1746,
    "total_tokens": 1846,
    "latency_ms": 13596.617,
    "user_id": "krrish@berri.ai",
    "team_alias": "internal-chatbot-team",
    "cache_hit": False,
    "query_type": "reasoning",
}


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """The world's four users are created with passwords: hash them cheaply in these tests."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def track(token, body):
    return api(token).post(URL, body, format="json")


def money(value) -> Decimal:
    """A JSON number as the exact decimal it was written as."""
    return Decimal(str(value))


def test_it_answers_the_seed_request_in_the_seed_shape(world):
    make_price("gemini-2.5-flash", input="0.30", output="2.50", provider="google")

    response = track(world.ingest, SEED_REQUEST)

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "success"
    assert body["message"] == "Metrics tracked successfully"
    uuid.UUID(body["request_id"])  # a request id was assigned
    assert body["tokens"] == 1846
    # 100 × $0.30/M + 1746 × $2.50/M
    assert money(body["cost"]) == Decimal("0.00003") + Decimal("0.004365")

    stored = UsageEvent.objects.get(request_id=body["request_id"])
    assert stored.organization == world.acme
    assert stored.team.alias == "internal-chatbot-team"
    assert stored.model == "gemini-2.5-flash"
    assert stored.model_requested == "models/gemini-2.5-flash"
    assert stored.user_id == "krrish@berri.ai"
    assert stored.query_type == "reasoning"
    assert stored.latency_ms == pytest.approx(13596.617)
    assert stored.total_tokens == 1846
    assert stored.cost == Decimal("0.004395")
    assert stored.is_priced


def test_it_prices_cached_prompt_tokens_at_the_cache_read_rate(world):
    response = track(world.ingest, event(prompt_tokens=1000, cached_tokens=400, output_tokens=500))

    assert response.status_code == 200, response.content
    uncached = Decimal(600) * 2 / Decimal(1_000_000)
    cached = Decimal(400) * Decimal("0.5") / Decimal(1_000_000)
    output = Decimal(500) * 8 / Decimal(1_000_000)
    assert money(response.json()["cost"]) == uncached + cached + output == Decimal("0.0054")
    stored = UsageEvent.objects.get(request_id=response.json()["request_id"])
    assert stored.prompt_cost == uncached + cached
    assert stored.output_cost == output
    assert stored.cost == Decimal("0.0054")


def test_it_counts_prompt_plus_output_when_total_tokens_is_not_sent(world):
    response = track(world.ingest, event(prompt_tokens=1000, output_tokens=500))

    assert response.json()["tokens"] == 1500
    assert UsageEvent.objects.get().total_tokens == 1500


def test_it_keeps_the_clients_request_id(world):
    response = track(world.ingest, event(request_id="call-42"))

    assert response.json()["request_id"] == "call-42"
    assert UsageEvent.objects.filter(request_id="call-42").count() == 1


def test_it_prices_with_its_own_table_even_when_the_client_sends_a_cost(world):
    response = track(world.ingest, event(response_cost=99))

    assert money(response.json()["cost"]) == Decimal("0.006")
    stored = UsageEvent.objects.get()
    assert stored.cost == Decimal("0.006")
    assert stored.client_cost == Decimal(99)  # kept for comparison, never summed


def test_it_prices_an_event_at_the_price_in_force_when_it_was_made(world):
    now = datetime.now(UTC)
    make_price("test-model", input="4", output="16", start=now - timedelta(days=2))
    old = track(world.ingest, event(request_id="old", timestamp=(now - timedelta(days=3)).isoformat()))
    new = track(world.ingest, event(request_id="new", timestamp=(now - timedelta(days=1)).isoformat()))

    assert money(old.json()["cost"]) == Decimal("0.006")  # 1000 × $2/M + 500 × $8/M
    assert money(new.json()["cost"]) == Decimal("0.012")  # 1000 × $4/M + 500 × $16/M


def test_it_stores_an_unpriced_model_with_the_clients_cost(world):
    response = track(world.ingest, event(model="mystery-model-9000", response_cost=0.0123))

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["priced"] is False
    assert money(body["cost"]) == Decimal("0.0123")
    stored = UsageEvent.objects.get()
    assert stored.is_priced is False
    assert stored.price_id is None
    assert stored.cost == Decimal("0.0123")


def test_it_adds_the_clients_prompt_and_output_cost_for_an_unpriced_model(world):
    response = track(world.ingest, event(model="mystery-model-9000", prompt_cost=0.001, output_cost=0.002))

    assert money(response.json()["cost"]) == Decimal("0.003")
    assert UsageEvent.objects.get().cost == Decimal("0.003")


def test_it_records_zero_for_an_unpriced_model_without_a_client_cost(world):
    response = track(world.ingest, event(model="mystery-model-9000", prompt_tokens=10**6, output_tokens=10**6))

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["priced"] is False
    assert money(body["cost"]) == 0  # never a guess
    stored = UsageEvent.objects.get()
    assert stored.is_priced is False
    assert stored.cost == 0


def test_it_answers_a_repeated_request_id_with_the_stored_event(world):
    first = track(world.ingest, event(request_id="r-1"))
    again = track(world.ingest, event(request_id="r-1", prompt_tokens=5000, output_tokens=5000, latency_ms=1))

    assert again.status_code == 200, again.content
    body = again.json()
    assert body["status"] == "success"
    assert body["duplicate"] is True
    assert "duplicate" in body["message"].lower()
    assert body["request_id"] == "r-1"
    assert money(body["cost"]) == money(first.json()["cost"]) == Decimal("0.006")
    assert body["tokens"] == 1500
    stored = UsageEvent.objects.get()  # counted once
    assert stored.prompt_tokens == 1000
    assert stored.latency_ms == 120.5
    assert first.json()["duplicate"] is False
    dashboard = api(world.read).get("/api/v1/dashboard/metrics").json()
    assert dashboard["total_requests"] == 1
    assert money(dashboard["total_cost"]) == Decimal("0.006")


def test_it_keeps_request_ids_apart_per_organization(world):
    track(world.ingest, event(request_id="shared-id"))
    response = track(world.globex_token, event(request_id="shared-id"))

    assert response.json()["duplicate"] is False
    assert UsageEvent.objects.filter(request_id="shared-id").count() == 2


def test_it_files_the_event_under_the_named_team(world):
    track(world.ingest, event(team_alias="search"))

    assert UsageEvent.objects.get().team == world.search


def test_it_files_an_event_without_team_under_the_default_team(world):
    body = event()
    del body["team_alias"]
    track(world.ingest, body)

    team = UsageEvent.objects.get().team
    assert team.organization == world.acme
    assert team.is_default


def test_it_creates_an_unknown_team_in_the_tokens_organization(world):
    response = track(world.ingest, event(team_alias="brand-new"))

    assert response.status_code == 200, response.content
    team = Team.objects.get(alias="brand-new")
    assert team.organization == world.acme
    assert UsageEvent.objects.get().team == team


def test_it_files_a_pinned_tokens_event_under_its_team(world):
    track(world.pinned, event(request_id="a", team_alias="search"))
    track(world.pinned, event(request_id="b", team_alias="not-a-team-yet"))
    body = event(request_id="c")
    del body["team_alias"]
    track(world.pinned, body)

    assert {e.team for e in UsageEvent.objects.all()} == {world.chatbot}
    assert UsageEvent.objects.count() == 3
    assert not Team.objects.filter(alias="not-a-team-yet").exists()


def test_it_rejects_an_unknown_team_when_auto_create_is_off(world):
    world.acme.auto_create_teams = False
    world.acme.save()
    teams = Team.objects.count()

    response = track(world.ingest, event(team_alias="brand-new"))

    assert response.status_code == 400, response.content
    body = response.json()
    assert body["status"] == "error"
    assert "team_alias" in body["errors"]
    assert UsageEvent.objects.count() == 0
    assert Team.objects.count() == teams


def test_it_still_accepts_known_teams_when_auto_create_is_off(world):
    world.acme.auto_create_teams = False
    world.acme.save()

    response = track(world.ingest, event(team_alias="search"))

    assert response.status_code == 200, response.content
    assert UsageEvent.objects.get().team == world.search


def test_it_files_the_event_in_the_tokens_organization_only(world):
    response = track(world.globex_token, event(team_alias="chatbot"))

    assert response.status_code == 200, response.content
    stored = UsageEvent.objects.get()
    assert stored.organization == world.globex
    assert stored.team == world.globex_chatbot


def test_it_takes_a_naive_seed_timestamp_as_utc(world):
    when = (datetime.now(UTC) - timedelta(hours=3)).replace(microsecond=0)
    track(world.ingest, event(timestamp=when.strftime("%Y-%m-%d %H:%M:%S")))

    assert UsageEvent.objects.get().timestamp == when


def test_it_accepts_a_token_that_may_ingest_and_read(world):
    assert track(world.both, event()).status_code == 200
    assert UsageEvent.objects.count() == 1


def test_it_refuses_a_read_only_token(world):
    response = track(world.read, event())

    assert response.status_code == 403
    assert response.json()["status"] == "error"
    assert "ingest" in response.json()["message"]
    assert UsageEvent.objects.count() == 0


def test_it_requires_a_token(world):
    response = track(None, event())

    assert response.status_code == 401
    assert response.json()["status"] == "error"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert UsageEvent.objects.count() == 0


def test_it_refuses_a_revoked_token(world):
    token_revoke(token=world.tokens["ingest"])

    response = track(world.ingest, event())

    assert response.status_code == 401
    assert response.json()["status"] == "error"
    assert UsageEvent.objects.count() == 0


@pytest.mark.parametrize(
    "header",
    [
        "Bearer garbage",
        "Bearer lc_00000000_notarealsecretnotarealsecret",
        "Bearer {ingest}x",  # the right lookup with a wrong secret
        "Bearer",
        "Bearer {ingest} extra",
        "Token {ingest}",
        "Basic dXNlcjpwYXNz",
    ],
)
def test_it_refuses_a_garbage_token(world, header):
    client = api()
    client.credentials(HTTP_AUTHORIZATION=header.format(ingest=world.ingest))

    response = client.post(URL, event(), format="json")

    assert response.status_code == 401
    assert response.json()["status"] == "error"
    assert UsageEvent.objects.count() == 0
