"""Probes, API documentation, JSON 404s and the per-token rate limit."""

from __future__ import annotations

import pytest
from django.core.cache import cache

from metrics.models import UsageEvent
from teams.authentication import ApiTokenRateThrottle
from tests.conftest import api, event
from tests.web_support import plain_static


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """The world's four users are created with passwords: hash them cheaply in these tests."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def test_it_answers_healthz(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_it_answers_readyz_with_the_database_checked(client):
    response = client.get("/readyz")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"] == "ok"


@pytest.mark.django_db
def test_it_serves_the_api_docs(client, settings):
    plain_static(settings)  # Swagger UI's files are static files now (tests/test_docs_offline.py)
    response = client.get("/api/docs/")

    assert response.status_code == 200
    assert b"/api/schema/" in response.content  # the page loads the schema


@pytest.mark.django_db
def test_it_serves_the_openapi_schema_with_the_seeds_endpoints(client):
    response = client.get("/api/schema/")

    assert response.status_code == 200
    schema = response.content.decode()
    for path in ("/api/v1/metrics/track", "/api/v1/events", "/api/v1/metrics/cache", "/api/v1/metrics/batch",
                 "/api/v1/dashboard/metrics", "/api/v1/requests/recent"):
        assert path in schema


@pytest.mark.django_db
def test_it_serves_the_schema_as_json_on_request(client):
    response = client.get("/api/schema/?format=json")

    assert response.status_code == 200
    assert "/api/v1/metrics/track" in response.json()["paths"]


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/v1/nope", "/api/nothing/here", "/api/v1/metrics/track/extra"])
def test_it_answers_json_404_for_unknown_api_paths(client, path):
    response = client.get(path)

    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    assert response.json() == {"status": "error", "message": "Not found."}


def test_it_answers_json_405_for_a_wrong_method(world):
    response = api(world.both).get("/api/v1/metrics/track")

    assert response.status_code == 405
    assert response.json()["status"] == "error"


# --- rate limit ----------------------------------------------------------------------------------


@pytest.fixture
def tiny_rate(monkeypatch):
    monkeypatch.setattr(ApiTokenRateThrottle, "THROTTLE_RATES", {"api_token": "3/min"})
    cache.clear()
    yield
    cache.clear()


def test_it_throttles_a_token_over_its_rate(world, tiny_rate):
    client = api(world.ingest)
    for i in range(3):
        assert client.post("/api/v1/metrics/track", event(request_id=f"ok-{i}"), format="json").status_code == 200

    response = client.post("/api/v1/metrics/track", event(request_id="too-many"), format="json")

    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0
    body = response.json()
    assert body["status"] == "error"
    assert body["message"]
    assert not UsageEvent.objects.filter(request_id="too-many").exists()
    assert UsageEvent.objects.count() == 3


def test_it_counts_the_rate_per_token(world, tiny_rate):
    busy = api(world.ingest)
    for i in range(4):
        busy.post("/api/v1/metrics/track", event(request_id=f"busy-{i}"), format="json")
    assert busy.post("/api/v1/metrics/track", event(), format="json").status_code == 429

    # Another token of the same organization, and another organization, are unaffected.
    assert api(world.both).post("/api/v1/metrics/track", event(), format="json").status_code == 200
    assert api(world.globex_token).get("/api/v1/dashboard/metrics").status_code == 200


def test_it_throttles_reads_too(world, tiny_rate):
    client = api(world.read)
    statuses = [client.get("/api/v1/requests/recent").status_code for _ in range(4)]

    assert statuses == [200, 200, 200, 429]
