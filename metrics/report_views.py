"""The Reports page (`/o/<slug>/reports/`) and its CSV: spend by one or two dimensions, as a table and a
stacked bar chart over time.

One parser for the API and the pages: the page's form speaks in fields a person fills in (a range, a
select per grouping dimension with a metadata key beside it, one metadata key=value pair);
`report_parameters` spells them as the API's parameters and the API's own FilterSet
(`SpendReportFilterSet`) parses and bounds them. Its errors come back named by the page's fields, so
each shows next to the field it is about. Figures come from the same selector as the API
(`metrics.reports.spend_report`): the table is one call, the chart another (grouped by the first
dimension and the day or hour), the CSV repeats the table's call.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from django.http import HttpRequest, JsonResponse, QueryDict, StreamingHttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import urlencode

from teams.access import AccessScope
from teams.selectors import declared_dimension_keys
from teams.web import org_page

from .export_api import focus_csv_response
from .focus_filters import FocusExportFilterSet
from .report_filters import KEY_RULE, SpendQuery, SpendReportFilterSet
from .reports import DIMENSIONS, METADATA_KEY, METADATA_PREFIX, spend_report
from .templatetags.metrics_format import full_money
from .views import FORMULA_START, RANGE_LABELS

# The grouping select: every dimension of the API, and "metadata key…" (with a text input for the key).
DIMENSION_LABELS = {
    "team_alias": "Team", "model": "Model", "provider": "Provider", "user_id": "User", "end_user": "End user",
    "query_type": "Query type", "tag": "Tag", "day": "Day", "hour": "Hour", "metadata": "Metadata key…",
}
if set(DIMENSION_LABELS) - {"metadata"} != set(DIMENSIONS):  # a new dimension must be offered here too
    raise ImportError(f"report_views.DIMENSION_LABELS does not match reports.DIMENSIONS {DIMENSIONS}")
TIME_DIMENSIONS = ("day", "hour")

RANGE_HOURS = {"24h": 24, "7d": 24 * 7, "30d": 24 * 30}
DEFAULT_RANGE = "30d"
DEFAULT_GROUP = "team_alias"
DEFAULT_ROWS = 25
# The filters the page passes to the FilterSet under the API's own names.
PASSED = ("team_alias", "model_filter", "user_id", "end_user", "tag", "limit")
HOURLY_UP_TO = timedelta(hours=48)  # the chart shows hours up to this range, days beyond
CHART_STACKS = 8  # the first dimension's costliest values get a stack each; the rest one "Other" stack
CHART_ROWS = 5000  # (value, day) groups fetched for the chart; past them the chart says what it leaves out

# The page field a FilterSet error belongs next to.
FIELD_OF_PARAMETER = {"group_by": "group", "time_range_hours": "range", "metadata": "meta_key"}


def _page_field(parameter: str) -> str:
    if parameter.startswith(METADATA_PREFIX):
        return "meta_value"
    return FIELD_OF_PARAMETER.get(parameter, parameter)


@dataclass(frozen=True)
class Parsed:
    query: SpendQuery | None  # None when anything is wrong
    errors: dict[str, list[str]]  # by page field
    api_data: QueryDict  # the same report as the API's parameters


def report_parameters(params: QueryDict) -> tuple[QueryDict, dict[str, list[str]]]:
    """The page's fields spelled as the API's parameters, and the problems only the page can see
    (a metadata grouping or filter without its key or value, a custom range without a start)."""
    data = QueryDict(mutable=True)
    errors: dict[str, list[str]] = {}
    dimensions = []
    for field, key_field in (("group", "group_key"), ("then", "then_key")):
        chosen = params.get(field, "").strip() or (DEFAULT_GROUP if field == "group" else "")
        if not chosen:
            continue
        if chosen != "metadata":
            dimensions.append(chosen[:64])  # an unknown name: the FilterSet says so
            continue
        key = params.get(key_field, "").strip()
        if not key:
            errors[key_field] = ["Give the metadata key to group by."]
        elif not METADATA_KEY.fullmatch(key):
            errors[key_field] = [f"metadata.<key>: {KEY_RULE}"]
        else:
            dimensions.append(f"{METADATA_PREFIX}{key}")
    if dimensions:
        data["group_by"] = ",".join(dimensions)

    chosen_range = params.get("range") or ("custom" if params.get("start") else DEFAULT_RANGE)
    if chosen_range in RANGE_HOURS:
        data["time_range_hours"] = str(RANGE_HOURS[chosen_range])
    elif chosen_range == "custom":
        for name in ("start", "end"):
            moment = params.get(name, "").strip()
            if moment:
                data[name] = moment
        if "start" not in data:
            errors["start"] = ["Give a start for a custom range."]
    else:
        errors["range"] = [f"Choose one of {', '.join(RANGE_LABELS)}."]

    for name in PASSED:  # empty fields mean "any"; a repeated one stays repeated for the FilterSet to refuse
        values = [value for value in params.getlist(name) if value.strip()]
        if values:
            data.setlist(name, values)
    data.setdefault("limit", str(DEFAULT_ROWS))

    key, value = params.get("meta_key", "").strip(), params.get("meta_value", "")
    if key and not value.strip():
        errors["meta_value"] = ["Give the value this metadata key must have."]
    elif value.strip() and not key:
        errors["meta_key"] = ["Give the metadata key to filter on."]
    elif key:
        data[f"{METADATA_PREFIX}{key[:64]}"] = value
    return data, errors


def parse(params: QueryDict) -> Parsed:
    data, errors = report_parameters(params)
    filterset = SpendReportFilterSet(data=data)
    for parameter, messages in filterset.errors.items():
        if parameter == "group_by" and "group_by" not in data:
            continue  # the grouping's missing key already says why
        errors.setdefault(_page_field(parameter), []).extend(str(message) for message in messages)
    if errors:
        return Parsed(query=None, errors=errors, api_data=data)
    return Parsed(query=filterset.spend_query(), errors={}, api_data=data)


# --- presenting -------------------------------------------------------------------------------------


def _key_text(name: str, value: Any) -> str:
    if value is None:
        return "(none)"
    if name == "hour":
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M")
    return str(value)


def dimension_label(name: str) -> str:
    if name.startswith(METADATA_PREFIX):
        return f"metadata · {name[len(METADATA_PREFIX):]}"
    return DIMENSION_LABELS[name]


def table_rows(report: dict) -> list[dict]:
    """The report's rows as the table shows them: key cells (text and raw value) and figures."""
    rows = []
    for row in report["rows"]:
        other = bool(row.get("other"))
        keys = [
            {"text": f"Other ({row['groups']} groups)" if other else _key_text(name, row["key"][name]),
             "value": "" if other or row["key"][name] is None else row["key"][name]}
            for name in report["group_by"]
        ]
        rows.append({"kind": "other" if other else "group", "keys": keys, **row})
    return rows


def _buckets(start: datetime, end: datetime, granularity: str, zone: ZoneInfo) -> list[str]:
    """Every day or hour of the range, spelled as the report spells its `day`/`hour` keys."""
    if granularity == "day":
        day, last = start.astimezone(zone).date(), (end - timedelta(microseconds=1)).astimezone(zone).date()
        days = []
        while day <= last:
            days.append(day.isoformat())
            day += timedelta(days=1)
        return days
    moment = start.astimezone(zone).replace(minute=0, second=0, microsecond=0).astimezone(UTC)
    hours = []
    while moment < end:
        hours.append(moment.astimezone(zone).isoformat())
        moment += timedelta(hours=1)
    return hours


def _bucket_label(key: str, granularity: str) -> str:
    moment = datetime.fromisoformat(key)
    return moment.strftime("%d %b %H:%M") if granularity == "hour" else moment.strftime("%a %d %b")


def spend_chart(*, scope: AccessScope, query: SpendQuery) -> dict:
    """Cost per day (hour for ranges up to 48 h), stacked by the first dimension's costliest values and
    one "Other" stack: one report grouped by (first dimension, day or hour)."""
    filters = query.filters
    granularity = "hour" if filters.end - filters.start <= HOURLY_UP_TO else "day"
    first = query.group_by[0]
    stacked = first not in TIME_DIMENSIONS
    group_by = (first, granularity) if stacked else (granularity,)
    report = spend_report(scope=scope, filters=filters, group_by=group_by, limit=CHART_ROWS)
    zone = ZoneInfo(scope.organization.time_zone)

    costs: dict[Any, dict[str, Decimal]] = {}
    unplaced: dict[str, Any] | None = None
    for row in report["rows"]:
        if row.get("other"):
            unplaced = {"groups": row["groups"], "cost": row["cost"]}
            continue
        value = row["key"][first] if stacked else "Cost"
        by_bucket = costs.setdefault(value, {})
        bucket = row["key"][granularity]
        by_bucket[bucket] = by_bucket.get(bucket, Decimal(0)) + row["cost"]
    buckets = sorted(set(_buckets(filters.start, filters.end, granularity, zone)).union(
        bucket for by_bucket in costs.values() for bucket in by_bucket))
    ranking = sorted(costs, key=lambda value: (-sum(costs[value].values()), value is not None, value or ""))
    top, rest = ranking[:CHART_STACKS], ranking[CHART_STACKS:]
    datasets = [
        {"label": _key_text(first, value) if stacked else "Cost",
         "data": [float(costs[value].get(bucket, 0)) for bucket in buckets]}
        for value in top
    ]
    if rest:
        datasets.append({
            "label": f"Other ({len(rest)})",
            "data": [float(sum((costs[value].get(bucket, Decimal(0)) for value in rest), Decimal(0)))
                     for bucket in buckets],
        })
    return {
        "granularity": granularity,
        "dimension": dimension_label(first) if stacked else None,
        "labels": [_bucket_label(bucket, granularity) for bucket in buckets],
        "datasets": datasets,
        "unplaced": unplaced,
    }


def _form_values(request: HttpRequest) -> dict[str, str]:
    """What the form shows: the URL's values, the defaults where it has none."""
    values = {name: request.GET.get(name, "") for name in (
        "group", "group_key", "then", "then_key", "range", "start", "end", "meta_key", "meta_value", *PASSED)}
    values["group"] = values["group"] or DEFAULT_GROUP
    values["range"] = values["range"] or ("custom" if values["start"] else DEFAULT_RANGE)
    values["limit"] = values["limit"] or str(DEFAULT_ROWS)
    return values


def _query(request: HttpRequest) -> str:
    return urlencode([(key, value) for key, values in request.GET.lists() for value in values if value != ""])


@org_page
def reports(request, scope):
    parsed = parse(request.GET)
    query = _query(request)
    context: dict[str, Any] = {
        "scope": scope,
        "nav": "reports",
        "values": _form_values(request),
        "errors": parsed.errors,
        "dimensions": list(DIMENSION_LABELS.items()),
        "range_labels": RANGE_LABELS,
        "teams": list(scope.teams().values_list("alias", flat=True)),
        "declared_keys": declared_dimension_keys(organization=scope.organization),  # offered as metadata keys
        "query": query,
    }
    if parsed.query is None:
        return render(request, "metrics/reports.html", context, status=400)
    q = parsed.query
    report = spend_report(scope=scope, filters=q.filters, group_by=q.group_by, limit=q.limit)
    context |= {
        "report": report,
        "columns": [dimension_label(name) for name in q.group_by],
        "rows": table_rows(report),
        "by_tag": "tag" in q.group_by,
        "chart": spend_chart(scope=scope, query=q),
        "api_url": f"{reverse('reports-spend')}?{parsed.api_data.urlencode(safe=',')}",
        "focus_query": urlencode({
            "start": q.filters.start.astimezone(UTC).isoformat(), "end": q.filters.end.astimezone(UTC).isoformat(),
            **({"team_alias": q.filters.team_alias} if q.filters.team_alias else {}),
        }),
    }
    return render(request, "metrics/reports.html", context)


# --- CSV --------------------------------------------------------------------------------------------

CSV_FIGURES = (("requests", "requests"), ("total_tokens", "total_tokens"), ("cost_usd", "cost"),
               ("list_cost_usd", "list_cost"), ("errors", "errors"))


class _Echo:
    def write(self, value):
        return value


def _csv_text(value: str) -> str:
    # A spreadsheet would run it as a formula: quote it as text (as the requests CSV does).
    return f"'{value}" if value.startswith(FORMULA_START) else value


def csv_lines(report: dict) -> Iterator[str]:
    """The table as CSV: a `row` column (group, other or total), the key columns (raw values: ISO times,
    empty for none), the figures with exact amounts."""
    writer = csv.writer(_Echo())
    yield writer.writerow(["row", *report["group_by"], *(header for header, _ in CSV_FIGURES)])
    for row in table_rows(report):
        keys = [_csv_text(str(cell["value"])) for cell in row["keys"]]
        yield writer.writerow([row["kind"], *keys, *(_csv_figure(name, row[name]) for _, name in CSV_FIGURES)])
    total = report["total"]
    yield writer.writerow(["total", *([""] * len(report["group_by"])),
                           *(_csv_figure(name, total[name]) for _, name in CSV_FIGURES)])


def _csv_figure(name: str, value) -> str:
    return full_money(value) if name in ("cost", "list_cost") else str(value)


@org_page
def reports_csv(request, scope):
    """Exactly the table the page shows for the same parameters, with its total row."""
    parsed = parse(request.GET)
    if parsed.query is None:
        return JsonResponse({"status": "error", "errors": parsed.errors}, status=400)
    q = parsed.query
    report = spend_report(scope=scope, filters=q.filters, group_by=q.group_by, limit=q.limit)
    stamp = "%Y%m%dT%H%MZ"
    dimensions = "-".join(name.replace(METADATA_PREFIX, "") for name in q.group_by)
    filename = (f"{scope.organization.slug}-spend-by-{dimensions}-{q.filters.start.astimezone(UTC):{stamp}}-"
                f"{q.filters.end.astimezone(UTC):{stamp}}.csv")
    response = StreamingHttpResponse(csv_lines(report), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@org_page
def reports_focus_csv(request, scope):
    """The FOCUS export of the page's range and team (the API's, with the session's access)."""
    filterset = FocusExportFilterSet(data=request.GET)
    if not filterset.is_valid():
        return JsonResponse({"status": "error", "errors": filterset.errors}, status=400)
    return focus_csv_response(scope=scope, query=filterset.focus_query())
