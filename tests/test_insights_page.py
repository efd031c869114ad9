"""The Insights page (`/o/<slug>/insights/`) and `GET /api/v1/insights/recommendations`, from every side.

Recommendation savings are checked against `what_if` for the group's calls; latency P95 and error rates
against values computed here from the `UsageEvent` rows (exact nearest-rank P95; the sketch is within 1 %).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from metrics.insights import InsightFilters, savings, what_if
from metrics.models import UsageEvent
from teams.access import scope_for_token, scope_for_user
from tests.budget_support import ingest
from tests.conftest import api, event, make_price
from tests.web_support import client_for, page_settings

RECOMMENDATIONS = "/api/v1/insights/recommendations"
PAGE = "/o/acme/insights/"
MAX_QUERIES = 40  # session, scope, forecast, savings, 5 groups, candidates' observations, models
BASE = (datetime.now(UTC) - timedelta(days=2)).replace(minute=0, second=0, microsecond=0)


@pytest.fixture(autouse=True)
def _pages(settings):
    page_settings(settings)


def at(hours: float) -> str:
    return (BASE + timedelta(hours=hours)).isoformat()


@pytest.fixture
def data(world):
    make_price("cheap-model", input="0.5", output="1")
    make_price("mid-model", input="1", output="4")
    make_price("dear-model", input="20", output="80")  # dearer by list price: never a candidate
    make_price("embed-model", input="0.01", output="0")  # not a chat model
    make_price("budget-model", input="0.1", output="0.2", provider="otherprov")
    events = []
    for i in range(6):
        events.append(event(request_id=f"c{i}", timestamp=at(i), prompt_tokens=20_000, output_tokens=2000,
                            query_type="rag"))  # fmt: skip
    for i in range(3):
        events.append(event(request_id=f"s{i}", timestamp=at(i), team_alias="search", prompt_tokens=5000,
                            output_tokens=500, query_type="chat"))  # fmt: skip
    for i, latency in enumerate([100, 200, 300, 400, 500, 900, 1500]):
        events.append(event(request_id=f"k{i}", timestamp=at(i), model="cheap-model", prompt_tokens=100,
                            output_tokens=10, latency_ms=latency, status="error" if i in (2, 5) else "success"))
    ingest(world.both, *events)
    ingest(world.globex_token, event(request_id="g1", timestamp=at(1), model="cheap-model", latency_ms=99_999,
                                     status="error", prompt_tokens=10**6))  # fmt: skip
    return {"start": at(-24), "end": at(24)}


def recommendations_of(token: str, **params) -> dict:
    response = api(token).get(RECOMMENDATIONS, params)
    assert response.status_code == 200, response.content
    return json.loads(response.content, parse_float=Decimal)


def exact_p95(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[max(1, math.ceil(0.95 * len(ordered))) - 1]


def test_it_recommends_cheaper_models_priced_by_what_if(world, data):
    body = recommendations_of(world.read, **data)
    groups = {(g["team_alias"], g["query_type"], g["model"]): g for g in body["groups"]}
    assert ("chatbot", "rag", "test-model") in groups and ("search", "chat", "test-model") in groups
    scope = scope_for_token(world.tokens["read"])
    costs = [Decimal(str(g["cost"])) for g in body["groups"]]
    assert costs == sorted(costs, reverse=True)
    start, end = datetime.fromisoformat(data["start"]), datetime.fromisoformat(data["end"])
    for key, group in groups.items():
        rows = UsageEvent.objects.filter(organization=world.acme, team__alias=key[0], query_type=key[1],
                                         model=key[2], timestamp__gte=start, timestamp__lt=end)  # fmt: skip
        assert Decimal(str(group["cost"])) == sum((r.cost for r in rows), Decimal(0))
        names = [c["alternative"] for c in group["candidates"]]
        if key[2] == "test-model":
            assert names == ["testprov/cheap-model", "testprov/mid-model", "otherprov/budget-model"]
        for candidate in group["candidates"]:
            want = what_if(scope=scope, filters=InsightFilters(start=start, end=end, team_alias=key[0],
                                                               query_type=key[1]),
                           model=key[2], alternative=candidate["alternative"])  # fmt: skip
            assert Decimal(str(candidate["savings"])) == want["savings"] > 0
            assert Decimal(str(candidate["alternative_cost"])) == want["alternative_cost"]
            assert candidate["requests"] == want["requests"] == rows.count()
        same = [Decimal(str(c["savings"])) for c in group["candidates"] if c["family"] == "same_provider"]
        other = [Decimal(str(c["savings"])) for c in group["candidates"] if c["family"] == "other_provider"]
        assert same == sorted(same, reverse=True) and other == sorted(other, reverse=True)
        assert [c["family"] for c in group["candidates"]] == ["same_provider"] * len(same) + ["other_provider"] * len(
            other
        )
        assert not any(c["model"] in ("embed-model", "dear-model", key[2]) for c in group["candidates"])


def test_it_weighs_used_models_by_observed_latency_and_errors(world, data):
    body = recommendations_of(world.read, **data)
    group = next(g for g in body["groups"] if g["team_alias"] == "chatbot" and g["model"] == "test-model")
    cheap = next(c for c in group["candidates"] if c["model"] == "cheap-model")
    rows = list(UsageEvent.objects.filter(organization=world.acme, model="cheap-model"))
    errors = sum(1 for r in rows if r.status == "error")
    assert cheap["observed"]["requests"] == len(rows) == 7
    assert cheap["observed"]["errors"] == errors == 2
    assert Decimal(str(cheap["observed"]["error_rate"])) == (Decimal(errors) / len(rows)).quantize(Decimal("0.0001"))
    want = exact_p95([r.latency_ms for r in rows])
    assert abs(float(cheap["observed"]["latency_p95_ms"]) - want) <= want * 0.01  # globex's 99 999 ms would break this
    mid = next(c for c in group["candidates"] if c["model"] == "mid-model")
    assert mid["observed"] is None  # never used: nothing known


def test_it_shows_a_pinned_token_only_its_team(world, data):
    body = recommendations_of(world.pinned, **data)
    assert body["groups"] and {g["team_alias"] for g in body["groups"]} == {"chatbot"}
    cheap = next(c for g in body["groups"] for c in g["candidates"] if c["model"] == "cheap-model")
    assert cheap["observed"]["requests"] == 7  # cheap-model's calls are chatbot's


def test_it_shows_outsiders_nothing_of_acme(world, data):
    body = recommendations_of(world.globex_token, **data)
    assert all(g["team_alias"] == "chatbot" and g["model"] == "cheap-model" for g in body["groups"])
    assert sum(g["requests"] for g in body["groups"]) == 1
    assert api(world.ingest).get(RECOMMENDATIONS).status_code == 403
    assert api().get(RECOMMENDATIONS).status_code in (401, 403)
    assert api(world.read).get(RECOMMENDATIONS, {"team_alias": "nope"}).status_code == 404


def test_it_refuses_a_bad_range(world, data):
    response = api(world.read).get(RECOMMENDATIONS, {"start": data["end"], "end": data["start"]})
    assert response.status_code == 400 and "start" in response.content.decode()


# --- the page --------------------------------------------------------------------------------------


def page(user, **params):
    return client_for(user).get(PAGE, params)


@pytest.mark.parametrize("role", ["owner", "member", "viewer"])
def test_it_shows_the_page_to_members(world, data, role):
    response = page(getattr(world, role))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'aria-current="page">Insights</a>' in html
    assert 'id="recommendations"' in html and 'id="forecast"' in html and 'id="savings"' in html


def test_it_hides_the_page_from_outsiders(world, data):
    assert page(world.outsider).status_code == 404
    assert client_for(None).get(PAGE).status_code == 302


def test_it_limits_a_team_limited_viewer_to_their_team(world, data):
    response = page(world.viewer)
    forecast = response.context["forecast"]
    assert {row["team_alias"] for row in forecast["teams"]} == {"chatbot"}
    assert {g["team_alias"] for g in response.context["recommendations"]["groups"]} == {"chatbot"}
    assert b'data-group="search|' not in response.content
    assert page(world.viewer, team_alias="search").status_code == 400


def test_its_figures_equal_the_apis(world, data):
    response = page(world.owner, team_alias="chatbot", range="7d")
    assert response.status_code == 200
    context = response.context
    filters = context["filters"]
    params = {"team_alias": "chatbot", "start": filters.start.isoformat(), "end": filters.end.isoformat()}
    assert _same_recommendations(context["recommendations"], recommendations_of(world.read, **params))
    saved = json.loads(api(world.read).get("/api/v1/insights/savings", params).content, parse_float=Decimal)
    html = response.content.decode()
    for name in ("prompt_cache_saved", "response_cache_saved", "batch_saved", "error_spend"):
        assert Decimal(str(saved[name])) == context["savings"][name]
        assert saved["method"][name] in html.replace("&#x27;", "'")
    forecast = json.loads(api(world.read).get("/api/v1/insights/forecast", {"team_alias": "chatbot"}).content,
                          parse_float=Decimal)  # fmt: skip
    assert [row["team_alias"] for row in forecast["teams"]] == [r["team_alias"] for r in context["forecast"]["teams"]]
    for theirs, ours in zip(forecast["teams"], context["forecast"]["teams"], strict=True):
        assert Decimal(str(theirs["spend"])) == ours["spend"]
        assert abs(Decimal(str(theirs["projected"])) - ours["projected"]) < Decimal("0.0001")  # `now` differs


def _same_recommendations(ours: dict, theirs: dict) -> bool:
    assert [(g["team_alias"], g["model"], [c["alternative"] for c in g["candidates"]]) for g in ours["groups"]] == [
        (g["team_alias"], g["model"], [c["alternative"] for c in g["candidates"]]) for g in theirs["groups"]
    ]
    for group, other in zip(ours["groups"], theirs["groups"], strict=True):
        for candidate, their in zip(group["candidates"], other["candidates"], strict=True):
            assert candidate["savings"] == Decimal(str(their["savings"]))
    return True


def test_its_what_if_equals_what_if(world, data):
    response = page(world.member, model="test-model", alternative="testprov/mid-model")
    assert response.status_code == 200
    result = response.context["what_if"]
    filters = response.context["filters"]
    want = what_if(scope=scope_for_user(world.member, "acme"), filters=filters, model="test-model",
                   alternative="testprov/mid-model")  # fmt: skip
    assert result == want and want["requests"] == 9
    html = response.content.decode()
    assert 'id="what-if-result"' in html and f'data-value="{want["savings"]:.10f}"' in html


@pytest.mark.parametrize(
    "params, field",
    [
        ({"model": "test-model", "alternative": "no-such-model"}, "alternative"),
        ({"model": "test-model"}, "alternative"),
        ({"alternative": "cheap-model"}, "model"),
        ({"range": "9y"}, "range"),
        ({"team_alias": "nope"}, "team_alias"),
        ({"model": "x" * 300, "alternative": "cheap-model"}, "model"),
    ],
)
def test_it_shows_bad_input_next_to_the_field(world, data, params, field):
    response = page(world.owner, **params)
    assert response.status_code == 400
    assert f'id="error-{field}"' in response.content.decode()


def test_it_makes_few_queries(world, data, django_assert_max_num_queries):
    """Pricing happens in Python: one read per costliest group (at most 5), whatever the events."""
    client = client_for(world.owner)
    client.get(PAGE)  # warm the session and the price book
    params = {"model": "test-model", "alternative": "cheap-model"}
    with django_assert_max_num_queries(MAX_QUERIES):
        assert client.get(PAGE, params).status_code == 200
    more = [event(request_id=f"m{i}", timestamp=at(i % 20), prompt_tokens=1000 + i, query_type=f"q{i % 7}",
                  team_alias="search" if i % 2 else "chatbot") for i in range(60)]  # fmt: skip
    ingest(world.both, *more)
    with django_assert_max_num_queries(MAX_QUERIES):  # more groups and events: the 5-group cap holds
        assert client.get(PAGE, params).status_code == 200


def test_savings_on_the_page_are_the_selectors(world, data):
    response = page(world.owner)
    filters = response.context["filters"]
    want = savings(scope=scope_for_user(world.owner, "acme"),
                   filters=InsightFilters(start=filters.start, end=filters.end))  # fmt: skip
    assert dict(response.context["savings"]) == want
