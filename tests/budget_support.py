"""Helpers shared by the budget tests: events of an exact cost, ingest, and a private cache per test."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from tests.conftest import api, event


def costing(usd: str, at: datetime | None = None, **overrides) -> dict:
    """An event of test-model ($2 per million prompt tokens, conftest's price) costing exactly `usd`.

    Made at `at`, or now when `at` is None.
    """
    tokens = Decimal(usd) * 500_000
    assert tokens == int(tokens), f"${usd} is not a whole number of test-model tokens"
    if at is not None:
        overrides["timestamp"] = at.isoformat()
    return event(prompt_tokens=int(tokens), output_tokens=0, **overrides)


def ingest(token: str, *bodies: dict) -> dict:
    """POST the events as one batch; every one must be accepted."""
    response = api(token).post("/api/v1/events", {"events": list(bodies)}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["accepted"] == len(bodies), response.content
    return response.json()


def private_cache(settings) -> None:
    """Give this test an empty cache of its own (budget spend is cached per budget id and period).

    Budget ids repeat between tests (and between runs), so a figure cached by an earlier test
    could answer for this one. Rather than flushing a Redis database other processes may share
    (the CI Redis also carries the Celery broker), point the cache at a fresh key prefix, or a
    fresh local-memory cache, for the duration of the test.
    """
    default = dict(settings.CACHES["default"])
    if "redis" in default["BACKEND"].lower():
        default["KEY_PREFIX"] = f"{default.get('KEY_PREFIX') or 'llmcost'}-test-{uuid.uuid4().hex}"
    else:
        default["LOCATION"] = f"test-{uuid.uuid4().hex}"
    settings.CACHES = {**settings.CACHES, "default": default}


def fast_passwords(settings) -> None:
    """The world fixture sets four passwords; the production hasher is slow by design."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
