"""Every query parameter of every read endpoint and page is bounded: beyond its bounds a 400 names it.

The API answers the one error shape naming the parameter; pages answer 400 with the filter
form's error shown, dashboard.json and requests.csv a JSON error. Never a 500: times are limited
to 2000-2100 (UTC), costs and counts to ranges the database and date arithmetic hold. The parsers
(`QueryParams`, `QueryForm`) refuse to define an unbounded parameter at all.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from django import forms
from rest_framework import serializers

from llmcost_project.api_errors import MomentField, QueryForm, QueryMoment, QueryParams, unbounded_fields
from tests.conftest import api, event
from tests.web_support import page_settings

HUGE = "99999999999999999999999"
FAR_FUTURE, FAR_PAST = "9999-12-31T00:00:00", "0001-01-01T00:00:00"
LONG = "x" * 300


@pytest.fixture(autouse=True)
def _pages(settings):
    page_settings(settings)


@pytest.fixture
def recorded(world):
    """Two events in acme: one costing 0.006 USD (priced), one 0.5 USD (the client's cost)."""
    client = api(world.ingest)
    assert client.post("/api/v1/metrics/track", event(request_id="cheap"), format="json").status_code == 200
    unpriced = event(request_id="dear", model="no-price-model", response_cost=0.5)
    assert client.post("/api/v1/metrics/track", unpriced, format="json").status_code == 200
    return world


def get(client, url: str, params: dict):
    client.raise_request_exception = False  # a crash must show as the 500 a browser would get
    return client.get(url, params)


def csv_rows(response) -> list[str]:
    return b"".join(response.streaming_content).decode().splitlines()[1:]


# --- the API ---------------------------------------------------------------------------------------

RANGE_CASES = [
    ({"start": FAR_FUTURE, "end": "9999-12-31T23:59:59"}, "start"),
    ({"start": FAR_PAST, "end": "0001-01-02T00:00:00"}, "start"),
    ({"end": "0001-01-02T00:00:00"}, "end"),  # start would be end minus the range: before year 1
    ({"end": "0001-01-01T00:30:00", "time_range_hours": "1"}, "end"),
    ({"start": "0001-01-01T00:00:00+14:00"}, "start"),
    ({"end": "9999-12-31T23:59:59-01:00"}, "end"),
    ({"start": "2101-01-01T00:00:00Z"}, "start"),
    ({"start": "1999-12-31T23:59:59Z"}, "start"),
    ({"time_range_hours": HUGE}, "time_range_hours"),
    ({"time_range_hours": "0"}, "time_range_hours"),
    ({"team_alias": LONG}, "team_alias"),
    ({"model_filter": LONG}, "model_filter"),
]
RECENT_CASES = [
    ({"min_cost": HUGE}, "min_cost"),
    ({"min_cost": "-1.79e308"}, "min_cost"),
    ({"min_cost": "1.79e308"}, "min_cost"),
    ({"min_cost": "nan"}, "min_cost"),
    ({"min_cost": "inf"}, "min_cost"),
    ({"min_cost": "-inf"}, "min_cost"),
    ({"min_cost": "-0.01"}, "min_cost"),
    ({"min_cost": "1e-30"}, "min_cost"),
    ({"min_cost": "100000000.01"}, "min_cost"),
    ({"min_cost": "ten"}, "min_cost"),
    ({"min_cost": ""}, "min_cost"),
    ({"limit": HUGE}, "limit"),
    ({"limit": "0"}, "limit"),
    ({"status": "maybe"}, "status"),
    ({"user_id": LONG}, "user_id"),
    ({"user_id": "a\x00b"}, "user_id"),
    ({"query_type": LONG}, "query_type"),
]


def _ids(cases) -> list[str]:
    return [",".join(f"{k}={v[:24]}" for k, v in params.items()) for params, _ in cases]


@pytest.mark.parametrize("url", ["/api/v1/requests/recent", "/api/v1/dashboard/metrics"])
@pytest.mark.parametrize("params, field", RANGE_CASES, ids=_ids(RANGE_CASES))
def test_an_out_of_bounds_range_parameter_is_a_400_naming_it(recorded, url, params, field):
    response = get(api(recorded.read), url, params)

    assert response.status_code == 400, response.content[:300]
    body = response.json()
    assert body["status"] == "error"
    assert field in body["errors"], body


@pytest.mark.parametrize("params, field", RECENT_CASES, ids=_ids(RECENT_CASES))
def test_an_out_of_bounds_recent_requests_filter_is_a_400_naming_it(recorded, params, field):
    response = get(api(recorded.read), "/api/v1/requests/recent", params)

    assert response.status_code == 400, response.content[:300]
    assert field in response.json()["errors"], response.json()


@pytest.mark.parametrize("params, field", [({"team_alias": LONG}, "team_alias"), ({"user_id": LONG}, "user_id"),
                                           ({"user_id": ""}, "user_id")])
def test_an_out_of_bounds_budget_check_parameter_is_a_400_naming_it(recorded, params, field):
    response = get(api(recorded.ingest), "/api/v1/budget/check", params)

    assert response.status_code == 400, response.content[:300]
    assert field in response.json()["errors"]


@pytest.mark.parametrize("min_cost, expected", [("0", {"cheap", "dear"}), ("0.1", {"dear"}),
                                                ("100000000", set()), ("0.0060000000", {"cheap", "dear"})])
def test_the_recent_requests_filters_within_bounds_select_as_asked(recorded, min_cost, expected):
    response = get(api(recorded.read), "/api/v1/requests/recent", {"min_cost": min_cost})

    assert response.status_code == 200, response.content[:300]
    assert {row["request_id"] for row in response.json()} == expected


def test_the_recent_requests_filters_combine(recorded):
    response = get(api(recorded.read), "/api/v1/requests/recent",
                   {"status": "success", "user_id": "alice@acme.test", "min_cost": "0.1", "limit": "5",
                    "start": "2000-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z", "time_range_hours": "8784"})

    assert response.status_code == 400  # 2000-2100 is longer than the longest range
    response = get(api(recorded.read), "/api/v1/requests/recent",
                   {"status": "success", "user_id": "alice@acme.test", "min_cost": "0.1", "limit": "5"})
    assert [row["request_id"] for row in response.json()] == ["dear"]


# --- pages -------------------------------------------------------------------------------------------

PAGE_CASES = [
    ({"range": "custom", "start": "9999-12-31", "end": "9999-12-31T23:59"}, "start"),
    ({"range": "custom", "start": "0001-01-01", "end": "0001-01-02"}, "start"),
    ({"range": "custom", "start": "2024-01-01", "end": "9999-12-31"}, "end"),
    ({"start": "0001-01-01T00:00"}, "start"),
    ({"min_cost": HUGE}, "min_cost"),
    ({"min_cost": "-1.79e308"}, "min_cost"),
    ({"min_cost": "nan"}, "min_cost"),
    ({"min_cost": "1e-30"}, "min_cost"),
    ({"team": LONG}, "team"),
    ({"user": LONG}, "user"),
]
REQUESTS_PAGE_CASES = [*PAGE_CASES, ({"page": HUGE}, "page"), ({"page": "0"}, "page"),
                       ({"per_page": "1000000"}, "per_page"), ({"sort": "-password"}, "sort")]


@pytest.mark.parametrize("params, field", PAGE_CASES, ids=_ids(PAGE_CASES))
def test_the_dashboard_answers_400_with_the_form_error_for_an_out_of_bounds_filter(recorded, params, field):
    client = api()
    client.force_login(recorded.owner)

    page = get(client, "/o/acme/", params)
    data = get(client, "/o/acme/dashboard.json", params)

    assert page.status_code == 400, page.content[:300]
    assert page.context["form"].errors[field]
    assert data.status_code == 400, data.content[:300]
    assert field in data.json()["errors"]


@pytest.mark.parametrize("params, field", REQUESTS_PAGE_CASES, ids=_ids(REQUESTS_PAGE_CASES))
def test_the_requests_page_and_its_csv_answer_400_for_an_out_of_bounds_filter(recorded, params, field):
    client = api()
    client.force_login(recorded.owner)

    page = get(client, "/o/acme/requests/", params)
    export = get(client, "/o/acme/requests.csv", params)

    assert page.status_code == 400, page.content[:300]
    assert page.context["form"].errors[field]
    assert export.status_code == 400, export.content[:300]
    assert field in export.json()["errors"]


def test_the_last_page_before_the_row_cap_is_still_answered(recorded):
    client = api()
    client.force_login(recorded.owner)

    response = get(client, "/o/acme/requests/", {"page": "401", "per_page": "25"})

    assert response.status_code == 200
    assert response.context["capped"]


def test_the_export_within_bounds_selects_as_asked(recorded):
    client = api()
    client.force_login(recorded.owner)

    response = get(client, "/o/acme/requests.csv", {"range": "custom", "start": "2000-01-01", "end": "2100-01-01",
                                                     "min_cost": "0.1"})

    assert response.status_code == 400  # longer than 366 days: the form's own rule, named
    response = get(client, "/o/acme/requests.csv", {"min_cost": "0.1"})
    assert response.status_code == 200
    assert [line.split(",")[0] for line in csv_rows(response)] == ["dear"]


# --- the parsers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("field", [
    serializers.IntegerField(min_value=0),
    serializers.DecimalField(max_digits=None, decimal_places=2, min_value=0, max_value=10),
    serializers.CharField(),
    serializers.DateTimeField(),
    serializers.JSONField(),
], ids=lambda f: type(f).__name__)
def test_an_api_query_parser_with_an_unbounded_parameter_cannot_be_defined(field):
    with pytest.raises(TypeError, match="unbounded query parameters \\['value'\\]"):
        type("Query", (QueryParams,), {"value": field})


@pytest.mark.parametrize("field", [
    forms.IntegerField(max_value=5),
    forms.DecimalField(min_value=0),
    forms.CharField(),
    forms.DateTimeField(),
], ids=lambda f: type(f).__name__)
def test_a_page_query_form_with_an_unbounded_parameter_cannot_be_defined(field):
    with pytest.raises(TypeError, match="unbounded query parameters \\['value'\\]"):
        type("Query", (QueryForm,), {"value": field})


def test_bounded_parameters_of_every_kind_are_accepted():
    fields = {
        "n": serializers.IntegerField(min_value=0, max_value=9),
        "d": serializers.DecimalField(max_digits=5, decimal_places=2, min_value=Decimal(0), max_value=Decimal(9)),
        "t": serializers.CharField(max_length=5), "c": serializers.ChoiceField(choices=["a"]),
        "m": QueryMoment(), "f": MomentField(), "g": forms.TypedChoiceField(choices=[(1, 1)], coerce=int),
    }
    assert unbounded_fields(fields) == []
