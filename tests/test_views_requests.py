"""The requests table (/o/<slug>/requests/), one request's page and the CSV export, from every side."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from metrics import views
from metrics.models import UsageEvent
from tests.conftest import api, event
from tests.web_support import client_for, page_settings

REQUESTS = "/o/acme/requests/"
CSV = "/o/acme/requests.csv"


@pytest.fixture(autouse=True)
def _pages(settings):
    page_settings(settings)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def send(token: str, items: list[dict]) -> None:
    response = api(token).post("/api/v1/events", items, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["accepted"] == len(items)


def listed(response) -> list[str]:
    """The request ids of a requests page, in the order shown."""
    assert response.status_code == 200, response.content[:300]
    html = response.content.decode()
    table = html[html.index("<tbody>") : html.index("</tbody>")]
    return re.findall(r'href="/o/acme/requests/([^"]+)/"', table)


def acme_events(**conditions) -> list[UsageEvent]:
    now = datetime.now(UTC)
    return list(UsageEvent.objects.filter(organization__slug="acme", timestamp__gte=now - timedelta(hours=24),
                                          **conditions).select_related("team"))


@pytest.fixture
def data(world):
    now = datetime.now(UTC)

    def ago(minutes: float) -> str:
        return iso(now - timedelta(minutes=minutes))

    items = [
        event(request_id="r1", team_alias="chatbot", prompt_tokens=1000, output_tokens=500, latency_ms=120,
              user_id="alice", query_type="chat", timestamp=ago(10), time_to_first_token_ms=30),
        event(request_id="r2", team_alias="chatbot", prompt_tokens=10, output_tokens=2000, latency_ms=900,
              cache_hit=True, user_id="bob", query_type="rag", timestamp=ago(20), is_batched=True, batch_id="b",
              batch_size=4),
        event(request_id="r3", team_alias="search", model="other-model", response_cost=0.123456789, prompt_tokens=3,
              output_tokens=4, latency_ms=50, status="error", error_message="upstream 500", user_id="=HYPERLINK()",
              timestamp=ago(30), time_to_first_token_ms=10),
        event(request_id="r4", team_alias="search", model="test-model-mini", prompt_tokens=300, output_tokens=300,
              latency_ms=4000, user_id="alice", query_type="tool", timestamp=ago(40), metadata={"route": "/chat"},
              tags=["prod"]),
        event(request_id="team/with slash?", team_alias="chatbot", prompt_tokens=7, output_tokens=7, latency_ms=7,
              user_id="carol", timestamp=ago(50), end_user="customer-9"),
        event(request_id="old", team_alias="chatbot", timestamp=ago(60 * 30)),  # outside the default 24 h
    ]
    send(world.both, items)
    send(world.globex_token, [event(request_id="g1", team_alias="chatbot", timestamp=ago(5))])
    return items


# --- who may see it ----------------------------------------------------------------------------------------

PAGES = [REQUESTS, CSV, "/o/acme/requests/r1/"]


@pytest.mark.parametrize("url", PAGES)
def test_it_sends_anonymous_visitors_to_log_in(world, data, url):
    response = client_for(None).get(url)

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/o/acme/")


@pytest.mark.parametrize("url", PAGES)
def test_it_hides_the_organization_from_outsiders(world, data, url):
    assert client_for(world.outsider).get(url).status_code == 404


@pytest.mark.parametrize("who", ["owner", "member"])
def test_it_lists_every_team_for_owners_and_members(world, data, who):
    ids = listed(client_for(getattr(world, who)).get(REQUESTS))

    assert ids == ["r1", "r2", "r3", "r4", "team/with%20slash%3F"]


def test_it_lists_only_a_limited_viewers_teams(world, data):
    client = client_for(world.viewer)

    assert listed(client.get(REQUESTS)) == ["r1", "r2", "team/with%20slash%3F"]
    assert client.get(REQUESTS, {"team": "search"}).status_code == 404
    rows = list(csv.DictReader(io.StringIO(b"".join(client.get(CSV).streaming_content).decode())))
    assert {row["team"] for row in rows} == {"chatbot"}


# --- one request ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["owner", "member", "viewer"])
def test_it_shows_one_request(world, data, who):
    response = client_for(getattr(world, who)).get("/o/acme/requests/r1/")
    html = response.content.decode()

    assert response.status_code == 200
    assert "r1" in html and "chatbot" in html and "alice" in html
    assert "1,500" in html  # total tokens, for people
    assert "$0.006" in html  # 1000 × $2/M + 500 × $8/M
    assert "exactly $0.0060000000" in html
    assert "120 ms" in html and "30 ms" in html


def test_it_shows_metadata_errors_and_odd_ids(world, data):
    client = client_for(world.owner)
    r3 = client.get("/o/acme/requests/r3/").content.decode()
    r4 = client.get("/o/acme/requests/r4/").content.decode()
    odd = client.get("/o/acme/requests/team/with%20slash%3F/")

    assert "upstream 500" in r3 and "no price matched" in r3
    assert "&quot;route&quot;: &quot;/chat&quot;" in r4 and "prod" in r4
    assert odd.status_code == 200 and b"customer-9" in odd.content


@pytest.mark.parametrize(
    "who, url",
    [
        ("owner", "/o/acme/requests/g1/"),  # globex's request id
        ("owner", "/o/acme/requests/nope/"),
        ("viewer", "/o/acme/requests/r3/"),  # a team the viewer cannot see
        ("outsider", "/o/globex/requests/r1/"),  # acme's id asked of globex
        ("outsider", "/o/acme/requests/r1/"),
    ],
)
def test_it_answers_404_for_requests_out_of_reach(world, data, who, url):
    assert client_for(getattr(world, who)).get(url).status_code == 404


def test_it_shows_an_outsider_their_own_request(world, data):
    assert client_for(world.outsider).get("/o/globex/requests/g1/").status_code == 200


# --- filters -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"team": "search"}, ["r3", "r4"]),
        ({"model": "OTHER"}, ["r3"]),  # part of the name, any case
        ({"user": "alice"}, ["r1", "r4"]),
        ({"min_cost": "0.01"}, ["r2", "r3"]),
        ({"min_cost": "0.006"}, ["r1", "r2", "r3"]),
        ({"status": "error"}, ["r3"]),
        ({"status": "success", "team": "chatbot", "user": "bob"}, ["r2"]),
        ({"range": "7d"}, ["r1", "r2", "r3", "r4", "team/with%20slash%3F", "old"]),
    ],
)
def test_it_filters_requests(world, data, params, expected):
    assert listed(client_for(world.owner).get(REQUESTS, params)) == expected


def test_it_reads_a_custom_range(world, data):
    now = datetime.now(UTC)
    params = {"range": "custom", "start": iso(now - timedelta(minutes=35)), "end": iso(now - timedelta(minutes=15))}

    assert listed(client_for(world.owner).get(REQUESTS, params)) == ["r2", "r3"]


@pytest.mark.parametrize("params", [{"sort": "password"}, {"sort": "-organization__name"}, {"page": "0"},
                                    {"per_page": "1000"}, {"status": "lost"}, {"min_cost": "x"}])
def test_it_refuses_bad_parameters(world, data, params):
    response = client_for(world.owner).get(REQUESTS, params)

    assert response.status_code == 400
    assert b"Please fix the filters" in response.content
    assert client_for(world.owner).get(CSV, params).status_code == 400


# --- sorting ---------------------------------------------------------------------------------------------------


def sort_key(name: str):
    def key(e: UsageEvent):
        value = {
            "time": e.timestamp, "request_id": e.request_id, "team": e.team.alias, "user": e.user_id,
            "model": e.model, "query_type": e.query_type, "status": e.status, "prompt_tokens": e.prompt_tokens,
            "output_tokens": e.output_tokens, "total_tokens": e.total_tokens, "cost": e.cost,
            "latency": e.latency_ms, "ttft": e.time_to_first_token_ms, "cache": e.cache_hit, "batched": e.is_batched,
        }[name]
        return value

    return key


def expected_order(name: str, descending: bool) -> list[str]:
    events = acme_events()
    present = [e for e in events if sort_key(name)(e) is not None]
    missing = [e for e in events if sort_key(name)(e) is None]
    # ties broken by id in the same direction; missing values (no TTFT) last either way
    present.sort(key=lambda e: (sort_key(name)(e), e.id), reverse=descending)
    missing.sort(key=lambda e: e.id, reverse=descending)
    return [e.request_id for e in present + missing]


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("column", list(views.REQUEST_SORTS))
def test_it_sorts_by_every_column(world, data, column, descending):
    sort = f"-{column}" if descending else column
    ids = listed(client_for(world.owner).get(REQUESTS, {"sort": sort}))

    assert [i.replace("%20", " ").replace("%3F", "?") for i in ids] == expected_order(column, descending)


def test_it_links_every_column_heading_to_its_sort(world, data):
    html = client_for(world.owner).get(REQUESTS, {"sort": "cost", "team": "chatbot"}).content.decode()

    for column in views.REQUEST_SORTS:
        assert re.search(rf'href="\?[^"]*sort=-?{column}\b', html), column
    assert 'aria-sort="ascending"' in html
    assert "sort=-cost" in html  # the current column flips
    assert "team=chatbot" in html  # filters stay


# --- pagination ----------------------------------------------------------------------------------------------


@pytest.fixture
def many(world):
    now = datetime.now(UTC)
    items = [event(request_id=f"m{i:03d}", timestamp=iso(now - timedelta(minutes=i + 1)), latency_ms=i + 1)
             for i in range(60)]
    send(world.both, items)
    return [item["request_id"] for item in items]


def test_it_pages_through_requests_without_counting_them(world, many):
    client = client_for(world.owner)
    seen = []
    page, url = 1, REQUESTS
    with CaptureQueriesContext(connection) as queries:
        while True:
            response = client.get(url, {"per_page": 25, "page": page})
            ids = listed(response)
            seen += ids
            html = response.content.decode()
            assert f"Rows {25 * (page - 1) + 1}–{25 * (page - 1) + len(ids)}" in html
            if 'rel="next"' not in html:
                break
            page += 1

    assert page == 3
    assert seen == many  # newest first, each once
    assert not [q for q in queries.captured_queries if "COUNT(*)" in q["sql"].upper()]
    assert 'rel="prev"' in html


def test_it_keeps_filters_and_sort_across_pages(world, many):
    html = client_for(world.owner).get(REQUESTS, {"per_page": 25, "sort": "latency", "model": "test"}).content.decode()

    next_link = re.search(r'href="\?([^"]+)" rel="next"', html).group(1)
    assert "sort=latency" in next_link and "model=test" in next_link and "page=2" in next_link
    second = listed(client_for(world.owner).get(f"{REQUESTS}?{next_link.replace('&amp;', '&')}"))
    assert second == [f"m{i:03d}" for i in range(25, 50)]


def test_it_stops_at_a_cap_and_points_to_the_csv(world, many, monkeypatch):
    monkeypatch.setattr(views, "MAX_ROWS", 50)
    client = client_for(world.owner)

    last = client.get(REQUESTS, {"per_page": 25, "page": 2})
    beyond = client.get(REQUESTS, {"per_page": 25, "page": 3})

    assert len(listed(last)) == 25 and b'rel="next"' not in last.content
    assert b"stops at 50 rows" in last.content
    assert listed(beyond) == [] and b"stops at 50 rows" in beyond.content


@pytest.mark.parametrize("count", [5, 200])
def test_it_runs_a_bounded_number_of_queries(world, django_assert_max_num_queries, count):
    now = datetime.now(UTC)
    teams, models = ("chatbot", "search", "ops", "web"), ("test-model", "other-model", "gpt-4o")
    send(world.both, [event(request_id=f"q{i}", team_alias=teams[i % 4], model=models[i % 3],
                            timestamp=iso(now - timedelta(seconds=30 * i + 5))) for i in range(count)])
    client = client_for(world.owner)

    with django_assert_max_num_queries(8):
        assert client.get(REQUESTS, {"sort": "team"}).status_code == 200
    with django_assert_max_num_queries(6):
        assert client.get("/o/acme/requests/q1/").status_code == 200
    with django_assert_max_num_queries(6):
        response = client.get(CSV)
        assert len(b"".join(response.streaming_content).splitlines()) == count + 1


# --- CSV ---------------------------------------------------------------------------------------------------------


def csv_rows(response) -> list[dict]:
    assert response.status_code == 200
    assert response.streaming is True
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_it_exports_exactly_the_filtered_requests(world, data):
    rows = csv_rows(client_for(world.owner).get(CSV, {"team": "search"}))
    by_id = {e.request_id: e for e in acme_events(team__alias="search")}

    assert [row["request_id"] for row in rows] == ["r3", "r4"]
    for row in rows:
        e = by_id[row["request_id"]]
        assert Decimal(row["cost_usd"]) == e.cost
        assert Decimal(row["prompt_cost_usd"]) == e.prompt_cost
        assert int(row["total_tokens"]) == e.total_tokens
        assert float(row["latency_ms"]) == e.latency_ms
        assert datetime.fromisoformat(row["timestamp"].replace("Z", "+00:00")) == e.timestamp
        assert row["team"] == "search" and row["model"] == e.model and row["status"] == e.status
    assert rows[0]["cost_usd"] == "0.1234567890"  # every stored digit, no rounding
    assert rows[0]["error_message"] == "upstream 500"
    assert rows[0]["time_to_first_token_ms"] == "10.0" and rows[1]["time_to_first_token_ms"] == ""


def test_it_exports_what_the_table_shows_in_its_order(world, data):
    client = client_for(world.owner)
    for params in [{}, {"sort": "cost"}, {"min_cost": "0.006"}, {"user": "alice", "sort": "-latency"},
                   {"status": "error"}, {"range": "7d", "sort": "request_id"}]:
        table = [i.replace("%20", " ").replace("%3F", "?") for i in listed(client.get(REQUESTS, params))]
        assert [row["request_id"] for row in csv_rows(client.get(CSV, params))] == table, params


def test_it_sums_to_the_same_money_as_the_events(world, data):
    rows = csv_rows(client_for(world.owner).get(CSV))

    assert sum(Decimal(row["cost_usd"]) for row in rows) == sum(e.cost for e in acme_events())


def test_it_names_the_file_and_streams_in_chunks(world, data, monkeypatch):
    calls = []
    original = UsageEvent.objects.none().__class__.iterator

    def spy(self, chunk_size=None):
        calls.append(chunk_size)
        return original(self, chunk_size=chunk_size)

    monkeypatch.setattr(type(UsageEvent.objects.none()), "iterator", spy)
    response = client_for(world.owner).get(CSV)
    rows = csv_rows(response)

    assert calls == [views.CSV_CHUNK]
    assert len(rows) == 5
    assert re.fullmatch(r'attachment; filename="acme-requests-\d{8}T\d{4}Z-\d{8}T\d{4}Z\.csv"',
                        response["Content-Disposition"])


def test_it_defuses_spreadsheet_formulas(world, data):
    rows = csv_rows(client_for(world.owner).get(CSV, {"status": "error"}))

    assert rows[0]["user_id"] == "'=HYPERLINK()"


def test_it_exports_a_header_only_for_no_match(world, data):
    response = client_for(world.owner).get(CSV, {"user": "nobody"})
    content = b"".join(response.streaming_content).decode()

    assert content.splitlines() == [",".join(header for header, _ in views.CSV_FIELDS)]


def test_it_links_the_csv_with_the_same_filters(world, data):
    html = client_for(world.owner).get(REQUESTS, {"team": "search", "sort": "cost", "page": "1"}).content.decode()

    assert 'href="/o/acme/requests.csv?team=search&amp;sort=cost"' in html


def test_it_escapes_what_clients_sent(world):
    send(world.both, [event(request_id="<img src=x onerror=alert(1)>", user_id="<script>x</script>")])
    html = client_for(world.owner).get(REQUESTS).content.decode()

    assert "<script>x</script>" not in html and "<img src=x" not in html
