"""Where each cost came from and what went unpriced, in the read API, the pages and the CSV, from every side."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.urls import reverse

from billing.models.prices import OrganizationDiscount
from billing.pricing.book import forget_price_book
from metrics.rollups import dirty_rollups_refresh
from metrics.selectors import UNPRICED_MODELS_SHOWN
from tests.conftest import api, event
from tests.web_support import client_for, page_settings, users_by_role

DASHBOARD = "/api/v1/dashboard/metrics"
RECENT = "/api/v1/requests/recent"
DASHBOARD_PAGE = "/o/acme/"
CSV = "/o/acme/requests.csv"


@pytest.fixture(autouse=True)
def _pages(settings):
    page_settings(settings)


def iso(moment: datetime) -> str:
    return moment.isoformat()


def send(token: str, items: list[dict]) -> None:
    response = api(token).post("/api/v1/events", items, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["accepted"] == len(items), response.json()


@pytest.fixture
def data(world):
    """acme: chatbot has a discounted priced call with audio, and two unpriced models; search has a
    third unpriced model. globex has an unpriced model of its own."""
    now = datetime.now(UTC)
    OrganizationDiscount.objects.create(
        organization=world.acme, percent=Decimal(10), provider="testprov", effective_from=now - timedelta(days=30)
    )
    forget_price_book()

    def at(minutes: int) -> str:
        return iso(now - timedelta(minutes=minutes))

    send(world.ingest, [
        event(request_id="priced", timestamp=at(50), provider="TestProv", cache_write_tokens=100,
              usage={"input_audio_tokens": 300, "output_reasoning_tokens": 200}),
        event(request_id="client-1", timestamp=at(40), model="mystery-1", response_cost=0.25),
        event(request_id="client-2", timestamp=at(30), model="mystery-1", response_cost=0.25),
        event(request_id="unpriced", timestamp=at(20), model="mystery-2"),
        event(request_id="search-1", timestamp=at(10), model="mystery-3", team_alias="search"),
    ])
    send(world.globex_token, [event(request_id="globex-1", timestamp=at(15), model="globex-secret")])
    return now


def rows_by_id(token: str) -> dict[str, dict]:
    response = api(token).get(RECENT, {"limit": 100})
    assert response.status_code == 200, response.content
    return {row["request_id"]: row for row in response.json()}


# --- GET /api/v1/requests/recent -----------------------------------------------------------------


def test_it_says_where_each_recent_cost_came_from(world, data):
    rows = rows_by_id(world.read)

    priced = rows["priced"]
    assert priced["cost_source"] == "discount"
    assert priced["provider_requested"] == "TestProv"
    assert priced["provider"] == "testprov"
    assert priced["cache_write_tokens"] == 100
    assert priced["usage"] == {"input_audio_tokens": 300, "output_reasoning_tokens": 200}
    listed, cost = Decimal(str(priced["list_cost"])), Decimal(str(priced["cost"]))
    assert listed > 0
    assert cost == listed * Decimal("0.9")
    # The same money formatting as `cost`: a JSON number, not text.
    assert type(priced["list_cost"]) is type(priced["cost"])

    assert rows["client-1"]["cost_source"] == "client"
    assert Decimal(str(rows["client-1"]["cost"])) == Decimal("0.25")
    assert rows["client-1"]["list_cost"] is None
    assert rows["client-1"]["usage"] == {}
    assert rows["unpriced"]["cost_source"] == "unpriced"
    assert rows["unpriced"]["list_cost"] is None


def test_it_shows_a_pinned_token_only_its_teams_provenance(world, data):
    rows = rows_by_id(world.pinned)

    assert set(rows) == {"priced", "client-1", "client-2", "unpriced"}
    assert rows["priced"]["cost_source"] == "discount"


def test_it_shows_another_organization_nothing_of_ours(world, data):
    rows = rows_by_id(world.globex_token)

    assert set(rows) == {"globex-1"}
    assert rows["globex-1"]["cost_source"] == "unpriced"


# --- GET /api/v1/dashboard/metrics ---------------------------------------------------------------


def test_it_names_the_unpriced_models_most_first(world, data):
    body = api(world.read).get(DASHBOARD).json()

    assert body["unpriced_requests"] == 4
    assert body["unpriced_models"] == {"mystery-1": 2, "mystery-2": 1, "mystery-3": 1}
    assert list(body["unpriced_models"]) == ["mystery-1", "mystery-2", "mystery-3"]


def test_it_names_only_a_pinned_tokens_unpriced_models(world, data):
    body = api(world.pinned).get(DASHBOARD).json()

    assert body["unpriced_requests"] == 3
    assert body["unpriced_models"] == {"mystery-1": 2, "mystery-2": 1}


def test_it_names_another_organization_only_its_own_unpriced_models(world, data):
    body = api(world.globex_token).get(DASHBOARD).json()

    assert body["unpriced_requests"] == 1
    assert body["unpriced_models"] == {"globex-secret": 1}


def test_it_names_no_unpriced_model_when_everything_is_priced(world):
    send(world.ingest, [event(request_id="p1")])

    body = api(world.read).get(DASHBOARD).json()

    assert body["unpriced_requests"] == 0
    assert body["unpriced_models"] == {}


def test_it_keeps_the_twenty_models_with_most_unpriced_requests(world):
    now = datetime.now(UTC)
    items = [
        event(request_id=f"m{model:02}-{n}", model=f"mystery-{model:02}", timestamp=iso(now - timedelta(minutes=5)))
        for model in range(UNPRICED_MODELS_SHOWN + 5)
        for n in range(1 + model % 3)
    ]
    send(world.ingest, items)

    unpriced = api(world.read).get(DASHBOARD).json()["unpriced_models"]

    assert len(unpriced) == UNPRICED_MODELS_SHOWN
    counts = list(unpriced.values())
    assert counts == sorted(counts, reverse=True)
    assert min(counts) >= max(1 + m % 3 for m in range(UNPRICED_MODELS_SHOWN + 5) if f"mystery-{m:02}" not in unpriced)


def test_it_counts_unpriced_models_the_same_from_rollups(world):
    base = (datetime.now(UTC) - timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
    items = [
        event(request_id="r1", model="mystery-1", timestamp=iso(base + timedelta(minutes=10))),
        event(request_id="r2", model="mystery-1", timestamp=iso(base + timedelta(hours=1, minutes=5))),
        event(request_id="r3", model="mystery-2", timestamp=iso(base + timedelta(hours=2, minutes=5)),
              team_alias="search"),
        event(request_id="r4", timestamp=iso(base + timedelta(minutes=20))),
    ]
    send(world.ingest, items)
    window = {"start": iso(base), "end": iso(base + timedelta(hours=3))}
    before = api(world.read).get(DASHBOARD, window).json()["unpriced_models"]

    dirty_rollups_refresh()
    after = api(world.read).get(DASHBOARD, window).json()["unpriced_models"]
    pinned = api(world.pinned).get(DASHBOARD, window).json()["unpriced_models"]

    assert before == after == {"mystery-1": 2, "mystery-2": 1}
    assert pinned == {"mystery-1": 2}


# --- the dashboard page --------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["owner", "admin"])
def test_it_links_managers_to_the_prices_page(world, data, who):
    html = client_for(users_by_role(world)[who]).get(DASHBOARD_PAGE).content.decode()

    assert "data-unpriced-models" in html
    assert "mystery-1 (2), mystery-2 (1), mystery-3 (1)" in html
    assert f'href="{reverse("prices", args=["acme"])}"' in html


def test_it_names_unpriced_models_without_a_link_for_a_member(world, data):
    html = client_for(world.member).get(DASHBOARD_PAGE).content.decode()

    assert "mystery-1 (2), mystery-2 (1), mystery-3 (1)" in html
    assert "Set a price on the Prices page" not in html  # members read prices; they cannot set them
    assert "An owner or admin can set a price" in html


def test_it_names_only_a_limited_viewers_unpriced_models(world, data):
    html = client_for(world.viewer).get(DASHBOARD_PAGE).content.decode()

    assert "mystery-1 (2), mystery-2 (1)" in html
    assert "mystery-3" not in html


def test_it_names_the_outsider_only_their_own_unpriced_models(world, data):
    client = client_for(world.outsider)

    assert client.get(DASHBOARD_PAGE).status_code == 404
    html = client.get("/o/globex/").content.decode()
    assert "globex-secret (1)" in html
    assert "mystery" not in html


def test_it_shows_no_notice_when_everything_is_priced(world):
    send(world.ingest, [event(request_id="p1")])

    assert "data-unpriced-models" not in client_for(world.owner).get(DASHBOARD_PAGE).content.decode()


def test_it_refreshes_the_unpriced_models_in_the_json(world, data):
    body = client_for(world.owner).get("/o/acme/dashboard.json").json()

    assert body["unpriced"]["models_display"] == "mystery-1 (2), mystery-2 (1), mystery-3 (1)"
    assert [entry["model"] for entry in body["unpriced"]["models"]] == ["mystery-1", "mystery-2", "mystery-3"]


# --- one request's page --------------------------------------------------------------------------


def test_it_shows_a_requests_provenance_and_usage(world, data):
    html = client_for(world.owner).get("/o/acme/requests/priced/").content.decode()

    assert "the platform&#x27;s price with the organization&#x27;s discount" in html
    assert "List cost" in html
    assert "before the organization's discount" in html
    assert 'data-usage="input_audio_tokens">300' in html
    assert 'data-usage="output_reasoning_tokens">200' in html
    assert "Input audio tokens" in html
    assert "(sent as TestProv)" in html


def test_it_says_when_the_cost_is_the_clients(world, data):
    html = client_for(world.owner).get("/o/acme/requests/client-1/").content.decode()

    assert 'data-cost-source="client"' in html
    assert "the client&#x27;s own figure" in html
    assert "List cost" not in html


def test_it_shows_a_limited_viewer_only_their_teams_requests(world, data):
    client = client_for(world.viewer)

    assert 'data-cost-source="unpriced"' in client.get("/o/acme/requests/unpriced/").content.decode()
    assert client.get("/o/acme/requests/search-1/").status_code == 404


def test_it_hides_a_requests_provenance_from_outsiders(world, data):
    assert client_for(world.outsider).get("/o/acme/requests/priced/").status_code == 404


# --- the CSV export --------------------------------------------------------------------------------


def csv_rows(response) -> tuple[list[str], list[dict]]:
    assert response.status_code == 200
    text = b"".join(response.streaming_content).decode()
    header = next(csv.reader(io.StringIO(text)))
    return header, list(csv.DictReader(io.StringIO(text)))


def test_it_exports_provenance_in_columns_after_the_existing_ones(world, data):
    header, rows = csv_rows(client_for(world.owner).get(CSV))

    assert header[-4:] == ["cost_source", "list_cost_usd", "usage", "provider_requested"]
    assert header[:3] == ["request_id", "timestamp", "team"]
    by_id = {row["request_id"]: row for row in rows}
    priced = by_id["priced"]
    assert priced["cost_source"] == "discount"
    assert Decimal(priced["cost_usd"]) == Decimal(priced["list_cost_usd"]) * Decimal("0.9")
    assert json.loads(priced["usage"]) == {"input_audio_tokens": 300, "output_reasoning_tokens": 200}
    assert priced["provider_requested"] == "TestProv"
    assert by_id["client-1"]["cost_source"] == "client"
    assert by_id["client-1"]["list_cost_usd"] == ""
    assert json.loads(by_id["client-1"]["usage"]) == {}


def test_it_exports_only_a_limited_viewers_teams(world, data):
    _, rows = csv_rows(client_for(world.viewer).get(CSV))

    assert {row["request_id"] for row in rows} == {"priced", "client-1", "client-2", "unpriced"}


def test_it_exports_nothing_of_ours_to_outsiders(world, data):
    assert client_for(world.outsider).get(CSV).status_code == 404
