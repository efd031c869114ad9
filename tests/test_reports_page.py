"""The Reports page (/o/<slug>/reports/) and its CSV, from every side.

The page reads through the API's FilterSet and selector; each figure it shows is checked against the
API's answer for the same parameters and against sums computed here from the `UsageEvent` rows (the
oracle of tests/test_reports_api.py, which never calls the report's code).
"""

from __future__ import annotations

import csv
import io
import json
import re
from decimal import Decimal
from html import unescape

import pytest

from metrics import report_views
from tests.budget_support import ingest
from tests.conftest import api, event
from tests.test_reports_api import MONEY, answered, at, data, expected  # noqa: F401 -- `data` is a fixture
from tests.web_support import READERS, ROLES, client_for, page_settings, users_by_role

PAGE = "/o/acme/reports/"
CSV = "/o/acme/reports.csv"
SHOWN = ("requests", "total_tokens", "cost", "list_cost", "errors")


@pytest.fixture(autouse=True)
def _pages(settings):
    page_settings(settings)


def window(data) -> dict:  # noqa: F811
    return {"range": "custom", "start": data.window["start"], "end": data.window["end"]}


def table(response) -> list[tuple[str, list[str]]]:
    """The report table as (row kind, [data-value of every cell]) in the order shown, total last."""
    assert response.status_code == 200, response.content[:500]
    html = response.content.decode()
    body = html[html.index('<table class="report">'): html.index("</table>")]
    rows = re.findall(r'<tr data-row="(\w+)"[^>]*>(.*?)</tr>', body, flags=re.S)
    return [(kind, [unescape(value) for value in re.findall(r'data-value="([^"]*)"', cells)]) for kind, cells in rows]


def as_figures(values: list[str]) -> dict:
    return {name: Decimal(value) if name in MONEY else int(value) for name, value in zip(SHOWN, values, strict=True)}


def split(rows, width: int) -> tuple[list[tuple], dict]:
    """([(key tuple, figures)] of the group rows, total figures) of a parsed table; keys None for "(none)"."""
    groups = [(tuple(value or None for value in cells[:width]), as_figures(cells[width:]))
              for kind, cells in rows if kind == "group"]
    (total,) = [as_figures(cells) for kind, cells in rows if kind == "total"]
    return groups, total


def shown_subset(figures: dict) -> dict:
    return {name: figures[name] for name in SHOWN}


def chart_of(response) -> dict:
    html = response.content.decode()
    match = re.search(r'<script id="report-chart-data" type="application/json">(.*?)</script>', html, flags=re.S)
    assert match, "no chart data on the page"
    return json.loads(match.group(1))


# --- who may see it --------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("url", [PAGE, CSV])
def test_it_lets_every_member_in_and_hides_the_organization_from_outsiders(world, data, role, url):  # noqa: F811
    response = client_for(users_by_role(world)[role]).get(url)

    if role in READERS:
        assert response.status_code == 200
    elif role == "anonymous":
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    else:
        assert response.status_code == 404


def test_it_links_the_page_in_the_navigation(world):
    html = client_for(world.member).get("/o/acme/").content.decode()

    assert '<a href="/o/acme/reports/"' in html and ">Reports</a>" in html


def test_a_team_limited_viewer_sees_only_their_teams_rows(world, data):  # noqa: F811
    client = client_for(world.viewer)
    groups, total = split(table(client.get(PAGE, {**window(data), "group": "team_alias"})), 1)
    chatbot = data.acme(team__alias="chatbot")
    rows, expected_total = expected(chatbot, ["team_alias"])

    assert [key for key, _ in groups] == [("chatbot",)]
    assert total == shown_subset(expected_total)
    assert groups[0][1] == shown_subset(rows[("chatbot",)])
    assert client.get(PAGE, {"team_alias": "search"}).status_code == 404
    assert client.get(CSV, {"team_alias": "search"}).status_code == 404


# --- the figures -----------------------------------------------------------------------------------

GROUPINGS = [  # (page parameters, the API's group_by)
    ({"group": "team_alias"}, "team_alias"),
    ({"group": "model", "then": "day"}, "model,day"),
    ({"group": "metadata", "group_key": "feature"}, "metadata.feature"),
    ({"group": "tag", "then": "metadata", "then_key": "feature"}, "tag,metadata.feature"),
    ({"group": "hour"}, "hour"),
    ({"group": "end_user", "then": "query_type"}, "end_user,query_type"),
]


@pytest.mark.parametrize(("page", "group_by"), GROUPINGS)
def test_the_table_equals_the_api_and_the_raw_events(world, data, page, group_by):  # noqa: F811
    response = client_for(world.owner).get(PAGE, {**window(data), **page})
    width = len(group_by.split(","))
    groups, total = split(table(response), width)
    answer = api(world.read).get("/api/v1/reports/spend", {"group_by": group_by, **data.window})
    api_rows, api_total = answered(answer.json())
    oracle, oracle_total = expected(data.acme(), group_by.split(","))

    assert total == shown_subset(api_total) == shown_subset(oracle_total)
    assert groups == [(key, shown_subset(figures)) for key, figures in api_rows]  # same rows, same order
    assert dict(groups) == {key: shown_subset(figures) for key, figures in oracle.items()}


def test_it_filters_as_the_api_does(world, data):  # noqa: F811
    params = {"team_alias": "chatbot", "tag": "prod", "model_filter": "test-model", "end_user": "cust-1"}
    response = client_for(world.member).get(
        PAGE, {**window(data), "group": "model", "meta_key": "feature", "meta_value": "summary", **params})
    groups, total = split(table(response), 1)
    answer = api(world.read).get("/api/v1/reports/spend", {
        "group_by": "model", "metadata.feature": "summary", **data.window, **params}).json()
    chosen = [row for row in data.acme(team__alias="chatbot", end_user="cust-1")
              if "prod" in row.tags and row.metadata.get("feature") == "summary"]

    assert chosen and total["requests"] == len(chosen) == answer["total"]["requests"]
    assert total == shown_subset(expected(chosen, ["model"])[1])
    assert groups == [(key, shown_subset(figures)) for key, figures in answered(answer)[0]]


def test_groups_past_the_row_limit_are_one_other_row(world, data):  # noqa: F811
    response = client_for(world.owner).get(PAGE, {**window(data), "group": "metadata", "group_key": "feature",
                                                  "then": "team_alias", "limit": "2"})
    rows = table(response)
    answer = api(world.read).get("/api/v1/reports/spend", {"group_by": "metadata.feature,team_alias",
                                                            "limit": 2, **data.window}).json()
    oracle, _ = expected(data.acme(), ["metadata.feature", "team_alias"])

    assert [kind for kind, _ in rows] == ["group", "group", "other", "total"]
    other = as_figures(rows[2][1][2:])
    assert other == shown_subset({name: answer["rows"][-1][name] if name not in MONEY else
                                  Decimal(str(answer["rows"][-1][name])) for name in SHOWN})
    assert f"Other ({len(oracle) - 2} groups)" in response.content.decode()
    assert sum(figures["requests"] for figures in oracle.values()) == sum(
        as_figures(cells[2:])["requests"] for kind, cells in rows if kind != "total")


def test_the_chart_stacks_the_first_dimensions_costliest_values_per_day(world, data):  # noqa: F811
    more = [event(request_id=f"f{n}", timestamp=at(n), metadata={"feature": f"feature-{n}"},
                  prompt_tokens=1000 * (n + 1)) for n in range(10)]
    ingest(world.both, *more)
    response = client_for(world.member).get(PAGE, {**window(data), "group": "metadata", "group_key": "feature"})
    chart = chart_of(response)
    rows = data.acme()
    _, total = expected(rows, ["metadata.feature"])

    assert chart["granularity"] == "hour"  # a 48-hour range
    assert len(chart["labels"]) == 48
    assert len(chart["datasets"]) == report_views.CHART_STACKS + 1
    assert chart["datasets"][-1]["label"].startswith("Other (")
    assert all(len(series["data"]) == 48 for series in chart["datasets"])
    assert sum(sum(series["data"]) for series in chart["datasets"]) == pytest.approx(float(total["cost"]))
    costliest = sorted(expected(rows, ["metadata.feature"])[0].items(), key=lambda item: -item[1]["cost"])
    assert chart["datasets"][0]["label"] == (costliest[0][0][0] or "(none)")

    week = chart_of(client_for(world.member).get(PAGE, {"group": "model", "range": "7d"}))
    assert week["granularity"] == "day" and len(week["labels"]) in (7, 8)


def test_a_larger_report_costs_no_more_queries(world, data, django_assert_max_num_queries):  # noqa: F811
    client = client_for(world.owner)
    params = {**window(data), "group": "metadata", "group_key": "feature", "then": "day", "limit": "3"}
    client.get(PAGE, params)  # warm the session and the price book
    with django_assert_max_num_queries(12):
        assert client.get(PAGE, params).status_code == 200
    ingest(world.both, *[event(request_id=f"m{n}", timestamp=at(n / 3), metadata={"feature": f"x{n}"},
                               team_alias="search" if n % 2 else "chatbot") for n in range(60)])
    with django_assert_max_num_queries(12):
        response = client.get(PAGE, params)
    assert response.status_code == 200 and [kind for kind, _ in table(response)][-2:] == ["other", "total"]


# --- the form --------------------------------------------------------------------------------------


def test_the_choices_stay_in_the_url_and_fill_the_form(world, data):  # noqa: F811
    params = {"group": "metadata", "group_key": "feature", "then": "team_alias", "range": "7d",
              "team_alias": "search", "model_filter": "gpt", "user_id": "bob", "end_user": "cust-2", "tag": "prod",
              "meta_key": "environment", "meta_value": "prod", "limit": "10"}
    html = client_for(world.member).get(PAGE, params).content.decode()

    assert re.search(r'<select name="group"[^>]*>.*?<option value="metadata" selected>', html, re.S)
    assert re.search(r'<select name="then"[^>]*>.*?<option value="team_alias" selected>', html, re.S)
    assert re.search(r'<select name="range"[^>]*>.*?<option value="7d" selected>', html, re.S)
    assert re.search(r'<select name="team_alias"[^>]*>.*?<option value="search" selected>', html, re.S)
    for name in ("group_key", "model_filter", "user_id", "end_user", "tag", "meta_key", "meta_value", "limit"):
        assert re.search(rf'name="{name}" value="{re.escape(params[name])}"', html), name
    csv_link = re.search(r'id="report-csv" href="([^"]+)"', html).group(1)
    assert csv_link.startswith(CSV + "?") and "group_key=feature" in unescape(csv_link)


BAD = [  # (parameters, the field whose error shows, words of the message)
    ({"group": "colour"}, "group", "unknown dimension"),
    ({"group": "model", "then": "model"}, "group", "twice"),
    ({"group": "metadata"}, "group_key", "metadata key"),
    ({"group": "metadata", "group_key": "no spaces"}, "group_key", "1 to 64 characters"),
    ({"limit": "0"}, "limit", "greater than or equal to 1"),
    ({"limit": "lots"}, "limit", "whole number"),
    ({"range": "forever"}, "range", "Choose one of"),
    ({"range": "custom"}, "start", "Give a start"),
    ({"range": "custom", "start": "2024-05-02T00:00", "end": "2024-05-01T00:00"}, "start", "before end"),
    ({"range": "custom", "start": "yesterday"}, "start", "valid date"),
    ({"meta_key": "env"}, "meta_value", "Give the value"),
    ({"meta_key": "bad key!", "meta_value": "x"}, "meta_key", "1 to 64 characters"),
    ({"meta_key": "env", "meta_value": "x" * 300}, "meta_value", "at most 255"),
    ({"user_id": "u" * 300}, "user_id", "at most 255"),
    ({"tag": ["a", "b"]}, "tag", "once"),
]


@pytest.mark.parametrize(("params", "field", "words"), BAD)
def test_a_bad_parameter_shows_its_error_next_to_the_field(world, params, field, words):
    client = client_for(world.member)
    response = client.get(PAGE, params)
    html = response.content.decode()

    assert response.status_code == 400
    label = re.search(rf'<label class="report-field"[^>]*>[^<]*<(?:select|input)[^>]*name="{field}".*?</label>',
                      html, re.S)
    assert label, f"no {field} field"
    assert 'aria-invalid="true"' in label.group(0)
    assert words in unescape(label.group(0)), label.group(0)
    assert '<table class="report">' not in html
    answer = client.get(CSV, params)
    assert answer.status_code == 400 and field in answer.json()["errors"]


# --- CSV -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("page", "group_by"), [GROUPINGS[1], GROUPINGS[3]])
def test_the_csv_is_the_table_shown(world, data, page, group_by):  # noqa: F811
    client = client_for(world.member)
    params = {**window(data), **page, "limit": "3"}
    shown = table(client.get(PAGE, params))
    response = client.get(CSV, params)
    lines = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))

    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith('attachment; filename="acme-spend-by-')
    assert lines[0] == ["row", *group_by.split(","), "requests", "total_tokens", "cost_usd", "list_cost_usd",
                        "errors"]
    assert [(line[0], line[1:]) for line in lines[1:]] == [
        (kind, cells if kind != "total" else ["", ""][: len(group_by.split(","))] + cells) for kind, cells in shown
    ]
    assert lines[-1][0] == "total" and Decimal(lines[-1][-3]) == expected(data.acme(), group_by.split(","))[1]["cost"]


def test_the_csv_quotes_values_a_spreadsheet_would_run(world, data):  # noqa: F811
    ingest(world.both, event(request_id="evil", timestamp=at(1), metadata={"feature": "=HYPERLINK(1)"}))
    response = client_for(world.owner).get(CSV, {**window(data), "group": "metadata", "group_key": "feature"})
    text = b"".join(response.streaming_content).decode()

    assert "'=HYPERLINK(1)" in text and "\n=HYPERLINK" not in text.replace("\r", "")


def focus_link(response) -> str:
    return unescape(re.search(r'id="report-focus" href="([^"]+)"', response.content.decode()).group(1))


@pytest.mark.parametrize("who", ["member", "viewer"])
def test_the_focus_button_exports_the_pages_range_with_the_readers_access(world, data, who):  # noqa: F811
    """The page's FOCUS export is the API's export of the same range, through the session's scope:
    its BilledCost sums to the page's total cost (a team-limited viewer's: their team's)."""
    client = client_for(getattr(world, who))
    page = client.get(PAGE, {**window(data), "group": "team_alias"})
    _, total = split(table(page), 1)
    response = client.get(focus_link(page))

    assert response.status_code == 200
    assert response["Content-Disposition"].startswith('attachment; filename="focus-acme-')
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows and sum(Decimal(row["BilledCost"]) for row in rows) == total["cost"]
    if who == "viewer":
        assert {row["SubAccountName"] for row in rows} <= {"chatbot"}


def test_the_focus_button_refuses_a_bad_range_and_outsiders(world, data):  # noqa: F811
    member = client_for(world.member)
    url = focus_link(member.get(PAGE, window(data)))
    assert client_for(users_by_role(world)["outsider"]).get(url).status_code == 404
    bad = member.get("/o/acme/reports/focus.csv", {"start": "2026-03-02", "end": "2026-03-01"})
    assert bad.status_code == 400 and set(bad.json()["errors"]) == {"start"}


def test_the_declared_dimensions_are_offered_as_metadata_keys(world):
    from teams.services import dimension_declare

    dimension_declare(organization=world.acme, key="feature")
    dimension_declare(organization=world.globex, key="globex-secret")
    html = client_for(world.member).get(PAGE).content.decode()
    datalist = re.search(r'<datalist id="declared-keys">(.*?)</datalist>', html, re.S).group(1)
    assert re.findall(r'<option value="([^"]+)">', datalist) == ["feature"]  # not another organization's
    assert 'name="group_key"' in html and 'list="declared-keys"' in html
