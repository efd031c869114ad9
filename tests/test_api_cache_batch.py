"""POST /api/v1/metrics/cache and /api/v1/metrics/batch: the seed's cache and batch reports."""

from __future__ import annotations

from decimal import Decimal

import pytest

from metrics.models import BatchRun, CacheStat
from teams.models import Team
from teams.services import token_revoke
from tests.conftest import api

CACHE = "/api/v1/metrics/cache"
BATCH = "/api/v1/metrics/batch"

# The seed's client.track_cache_metrics(...) and client.track_batch(...) arguments.
SEED_CACHE = {"cache_hit": 150, "cache_miss": 50, "avg_lookup_time_ms": 2.5, "team_alias": "internal-chatbot-team"}
SEED_BATCH = {
    "batch_id": "batch_123",
    "batch_size": 10,
    "total_tokens": 5000,
    "batch_cost": 0.125,
    "batch_latency_ms": 3500,
    "team_alias": "internal-chatbot-team",
}


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """The world's four users are created with passwords: hash them cheaply in these tests."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def post(token, url, body):
    client = api(token)
    client.raise_request_exception = False  # a crash must show up as the 500 a client would get
    return client.post(url, body, format="json")


def without(body: dict, key: str) -> dict:
    return {k: v for k, v in body.items() if k != key}


def counts():
    return CacheStat.objects.count(), BatchRun.objects.count(), Team.objects.count()


# --- cache ---------------------------------------------------------------------------------------


def test_it_records_the_seeds_cache_metrics(world):
    response = post(world.ingest, CACHE, SEED_CACHE)

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "success"
    assert body["message"]
    stat = CacheStat.objects.get()
    assert body["id"] == stat.pk
    assert stat.organization == world.acme
    assert stat.team.alias == "internal-chatbot-team"
    assert stat.team.organization == world.acme
    assert (stat.cache_hit, stat.cache_miss, stat.avg_cache_lookup_time_ms) == (150, 50, 2.5)


def test_it_files_cache_metrics_without_team_under_the_default_team(world):
    post(world.ingest, CACHE, {"cache_hit": 1, "cache_miss": 2})

    stat = CacheStat.objects.get()
    assert stat.team.is_default
    assert stat.team.organization == world.acme


def test_it_files_a_pinned_tokens_cache_metrics_under_its_team(world):
    post(world.pinned, CACHE, dict(SEED_CACHE, team_alias="search"))

    assert CacheStat.objects.get().team == world.chatbot


def test_it_files_cache_metrics_in_the_tokens_organization(world):
    post(world.globex_token, CACHE, dict(SEED_CACHE, team_alias="chatbot"))

    stat = CacheStat.objects.get()
    assert stat.organization == world.globex
    assert stat.team == world.globex_chatbot


# --- batch ---------------------------------------------------------------------------------------


def test_it_records_the_seeds_batch(world):
    response = post(world.ingest, BATCH, SEED_BATCH)

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "success"
    assert body["batch_id"] == "batch_123"
    assert body["duplicate"] is False
    run = BatchRun.objects.get()
    assert run.organization == world.acme
    assert run.team.alias == "internal-chatbot-team"
    assert (run.batch_size, run.total_tokens, run.batch_latency_ms) == (10, 5000, 3500)
    assert run.batch_cost == Decimal("0.125")
    assert run.status == "success"


def test_it_stores_a_repeated_batch_id_once(world):
    post(world.ingest, BATCH, SEED_BATCH)

    response = post(world.ingest, BATCH, dict(SEED_BATCH, batch_size=99, batch_cost=7))

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["duplicate"] is True
    assert "duplicate" in body["message"].lower()
    run = BatchRun.objects.get()
    assert run.batch_size == 10  # the first report stands
    assert run.batch_cost == Decimal("0.125")


def test_it_keeps_batch_ids_apart_per_organization(world):
    post(world.ingest, BATCH, SEED_BATCH)

    response = post(world.globex_token, BATCH, dict(SEED_BATCH, team_alias="chatbot"))

    assert response.json()["duplicate"] is False
    runs = {run.organization: run for run in BatchRun.objects.all()}
    assert set(runs) == {world.acme, world.globex}
    assert runs[world.globex].team == world.globex_chatbot


def test_it_files_a_pinned_tokens_batch_under_its_team(world):
    post(world.pinned, BATCH, dict(SEED_BATCH, team_alias="search"))

    assert BatchRun.objects.get().team == world.chatbot


# --- bad input, both endpoints ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, body, field",
    [
        pytest.param(CACHE, dict(SEED_CACHE, cache_hit=-1), "cache_hit", id="cache-negative-hits"),
        pytest.param(CACHE, dict(SEED_CACHE, cache_miss="50"), "cache_miss", id="cache-string-misses"),
        pytest.param(CACHE, dict(SEED_CACHE, cache_hit=1.5), "cache_hit", id="cache-fractional-hits"),
        pytest.param(CACHE, dict(SEED_CACHE, cache_hit=10**12), "cache_hit", id="cache-absurd-hits"),
        pytest.param(CACHE, dict(SEED_CACHE, avg_lookup_time_ms=True), "avg_lookup_time_ms", id="cache-bool-time"),
        pytest.param(CACHE, dict(SEED_CACHE, avg_lookup_time_ms=-1), "avg_lookup_time_ms", id="cache-negative-time"),
        pytest.param(CACHE, dict(SEED_CACHE, team_alias="no spaces"), "team_alias", id="cache-bad-alias"),
        pytest.param(CACHE, dict(SEED_CACHE, timestamp="2999-01-01T00:00:00Z"), "timestamp", id="cache-future"),
        pytest.param(CACHE, dict(SEED_CACHE, timestamp="soon"), "timestamp", id="cache-bad-time"),
        pytest.param(CACHE, dict(SEED_CACHE, hit_rate=0.75), "hit_rate", id="cache-unknown-field"),
        pytest.param(BATCH, without(SEED_BATCH, "batch_id"), "batch_id", id="batch-no-id"),
        pytest.param(BATCH, without(SEED_BATCH, "batch_size"), "batch_size", id="batch-no-size"),
        pytest.param(BATCH, dict(SEED_BATCH, batch_id=""), "batch_id", id="batch-empty-id"),
        pytest.param(BATCH, dict(SEED_BATCH, batch_id=123), "batch_id", id="batch-number-id"),
        pytest.param(BATCH, dict(SEED_BATCH, batch_id="b" * 129), "batch_id", id="batch-long-id"),
        pytest.param(BATCH, dict(SEED_BATCH, batch_size=0), "batch_size", id="batch-zero-size"),
        pytest.param(BATCH, dict(SEED_BATCH, batch_size="10"), "batch_size", id="batch-string-size"),
        pytest.param(BATCH, dict(SEED_BATCH, total_tokens=-1), "total_tokens", id="batch-negative-tokens"),
        pytest.param(BATCH, dict(SEED_BATCH, batch_cost=-0.1), "batch_cost", id="batch-negative-cost"),
        pytest.param(BATCH, dict(SEED_BATCH, batch_cost=10**12), "batch_cost", id="batch-absurd-cost"),
        pytest.param(BATCH, dict(SEED_BATCH, batch_cost="0.125"), "batch_cost", id="batch-string-cost"),
        pytest.param(BATCH, dict(SEED_BATCH, batch_latency_ms=False), "batch_latency_ms", id="batch-bool-latency"),
        pytest.param(BATCH, dict(SEED_BATCH, status="done"), "status", id="batch-unknown-status"),
        pytest.param(BATCH, dict(SEED_BATCH, items=[]), "items", id="batch-unknown-field"),
    ],
)
def test_it_rejects_bad_input_naming_the_field(world, url, body, field):
    before = counts()

    response = post(world.ingest, url, body)

    assert response.status_code == 400, response.content[:500]
    answer = response.json()
    assert answer["status"] == "error"
    assert field in answer["errors"], answer
    assert counts() == before


@pytest.mark.parametrize("url", [CACHE, BATCH])
@pytest.mark.parametrize("data", [b"{nope", b'{"cache_hit": NaN, "batch_latency_ms": NaN}', b"[]", b'"x"'])
def test_it_rejects_a_body_that_is_not_a_json_object(world, url, data):
    before = counts()
    client = api(world.ingest)
    client.raise_request_exception = False

    response = client.post(url, data, content_type="application/json")

    assert response.status_code == 400, response.content[:500]
    assert response.json()["status"] == "error"
    assert counts() == before


@pytest.mark.parametrize("url, body", [(CACHE, SEED_CACHE), (BATCH, SEED_BATCH)], ids=["cache", "batch"])
def test_it_rejects_an_unknown_team_when_auto_create_is_off(world, url, body):
    world.acme.auto_create_teams = False
    world.acme.save()
    before = counts()

    response = post(world.ingest, url, body)

    assert response.status_code == 400, response.content[:500]
    answer = response.json()
    assert answer["status"] == "error"
    assert "team_alias" in answer["errors"]
    assert counts() == before


@pytest.mark.parametrize("url, body", [(CACHE, SEED_CACHE), (BATCH, SEED_BATCH)], ids=["cache", "batch"])
def test_it_creates_an_unknown_team_when_auto_create_is_on(world, url, body):
    response = post(world.ingest, url, body)

    assert response.status_code == 200, response.content
    assert Team.objects.filter(organization=world.acme, alias="internal-chatbot-team").exists()
    assert not Team.objects.filter(organization=world.globex, alias="internal-chatbot-team").exists()


# --- who may send ----------------------------------------------------------------------------------


@pytest.mark.parametrize("url, body", [(CACHE, SEED_CACHE), (BATCH, SEED_BATCH)], ids=["cache", "batch"])
def test_it_accepts_ingest_tokens(world, url, body):
    assert post(world.both, url, body).status_code == 200
    assert sum(counts()[:2]) == 1


@pytest.mark.parametrize("url, body", [(CACHE, SEED_CACHE), (BATCH, SEED_BATCH)], ids=["cache", "batch"])
def test_it_refuses_a_read_only_token(world, url, body):
    before = counts()

    response = post(world.read, url, body)

    assert response.status_code == 403
    assert response.json()["status"] == "error"
    assert counts() == before


@pytest.mark.parametrize("url, body", [(CACHE, SEED_CACHE), (BATCH, SEED_BATCH)], ids=["cache", "batch"])
def test_it_requires_a_token(world, url, body):
    before = counts()

    response = post(None, url, body)

    assert response.status_code == 401
    assert response.json()["status"] == "error"
    assert counts() == before


@pytest.mark.parametrize("url, body", [(CACHE, SEED_CACHE), (BATCH, SEED_BATCH)], ids=["cache", "batch"])
def test_it_refuses_revoked_and_garbage_tokens(world, url, body):
    token_revoke(token=world.tokens["ingest"])
    before = counts()

    assert post(world.ingest, url, body).status_code == 401
    assert post("lc_deadbeef_garbagegarbagegarbage", url, body).status_code == 401
    assert counts() == before
