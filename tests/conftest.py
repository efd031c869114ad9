"""The test world: two organizations, an owner, a member, a viewer and an outsider, and tokens.

Every endpoint is exercised from each side; `world` gives them all in one fixture.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from billing.models import EPOCH, ModelPrice
from billing.pricing.book import forget_price_book
from teams.models import ApiToken, Organization, Team
from teams.services import member_add, organization_create, team_create, token_create


@dataclass
class World:
    acme: Organization
    globex: Organization
    chatbot: Team  # acme
    search: Team  # acme
    globex_chatbot: Team
    owner: object
    member: object
    viewer: object
    outsider: object  # owner of globex, stranger to acme
    ingest: str  # acme, all teams, ingest only
    read: str  # acme, all teams, read only
    both: str  # acme, all teams, ingest + read
    pinned: str  # acme, pinned to chatbot, ingest + read
    globex_token: str  # globex, ingest + read
    tokens: dict[str, ApiToken]


def api(token: str | None = None) -> APIClient:
    client = APIClient()
    if token:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def make_price(model: str, *, input: str, output: str, cache_read: str | None = None,
               provider: str = "testprov", start: datetime = EPOCH, patterns=()) -> ModelPrice:
    price = ModelPrice.objects.create(
        provider=provider, model=model, input_per_mtok=Decimal(input), output_per_mtok=Decimal(output),
        cache_read_per_mtok=Decimal(cache_read) if cache_read is not None else None,
        effective_from=start, match_patterns=list(patterns), source=ModelPrice.Source.ADMIN,
    )
    forget_price_book()
    return price


@pytest.fixture(autouse=True)
def _fresh_price_book():
    forget_price_book()
    yield
    forget_price_book()


@pytest.fixture
def world(db) -> World:
    acme = organization_create(slug="acme", name="Acme")
    globex = organization_create(slug="globex", name="Globex")
    chatbot = team_create(organization=acme, alias="chatbot")
    search = team_create(organization=acme, alias="search")
    globex_chatbot = team_create(organization=globex, alias="chatbot")
    owner = member_add(organization=acme, email="owner@acme.test", role="owner", password="pw-owner-1").user
    member = member_add(organization=acme, email="member@acme.test", role="member", password="pw-member-1").user
    viewer = member_add(
        organization=acme, email="viewer@acme.test", role="viewer", teams=[chatbot], password="pw-viewer-1"
    ).user
    outsider = member_add(organization=globex, email="boss@globex.test", role="owner", password="pw-out-1").user
    tokens = {}
    raws = {}
    for name, org, team, ingest, read in [
        ("ingest", acme, None, True, False),
        ("read", acme, None, False, True),
        ("both", acme, None, True, True),
        ("pinned", acme, chatbot, True, True),
        ("globex_token", globex, None, True, True),
    ]:
        tokens[name], raws[name] = token_create(
            organization=org, team=team, can_ingest=ingest, can_read=read, name=name
        )
    make_price("test-model", input="2", output="8", cache_read="0.5", patterns=["test-model-*"])
    return World(acme=acme, globex=globex, chatbot=chatbot, search=search, globex_chatbot=globex_chatbot,
                 owner=owner, member=member, viewer=viewer, outsider=outsider, tokens=tokens, **raws)


def event(**overrides) -> dict:
    body = {
        "model": "test-model",
        "prompt_tokens": 1000,
        "output_tokens": 500,
        "latency_ms": 120.5,
        "user_id": "alice@acme.test",
        "team_alias": "chatbot",
    }
    body.update(overrides)
    return body


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)
