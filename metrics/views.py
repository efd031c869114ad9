"""Pages for metrics: the dashboard (and its JSON for auto-refresh), the requests table, one request, CSV.

Every read goes through the user's `AccessScope` (given by `org_page`) and the selectors in
`metrics.selectors`; the dashboard's figures come from rollups plus the raw open tail, so they
equal sums over raw events and cost a bounded number of queries whatever the data size.

Filters live in the query string so every view can be bookmarked: range=24h|7d|30d|custom (with
start and end), team, model (matches a family, as the API does), user, min_cost. min_cost
selects requests; the dashboard's aggregates come from rollups, which know no single request's
cost, so there it applies to the recent-requests panel only (the page says so).
"""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.http import JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode

from billing.pricing.calculate import CostSource
from llmcost_project.api_errors import (
    MAX_QUERY_COST_USD,
    QUERY_COST_DIGITS,
    QUERY_COST_PLACES,
    MomentField,
    QueryForm,
)
from teams.access import AccessScope
from teams.web import org_page

from .models import UsageEvent
from .rollups import day_of
from .selectors import (
    DEFAULT_REQUEST_SORT,
    REQUEST_SORTS,
    EventFilter,
    batch_report,
    bucket_starts,
    cache_report,
    dashboard_panels,
    has_events,
    kpi_figures,
    period_totals,
    recent_requests,
    request_ordering,
    request_page,
    scoped_events,
    spend_anomalies,
    with_team,
)
from .templatetags.metrics_format import (
    duration_ms,
    full_money,
    per_thousand_tokens,
    percent,
    thousands,
    usd,
    usd_request,
)

RANGES = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}
RANGE_LABELS = {"24h": "Last 24 hours", "7d": "Last 7 days", "30d": "Last 30 days", "custom": "Custom range"}
MAX_RANGE = timedelta(days=366)
DATETIME_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"]
PAGE_SIZES = (25, 50, 100)
MAX_ROWS = 10_000  # offset pagination stops here: narrow the filters or export CSV beyond it
RECENT_ON_DASHBOARD = 10
CSV_CHUNK = 2000
REFRESH_SECONDS = 30


# --- filters ---------------------------------------------------------------------------------------


class FilterForm(QueryForm):
    range = forms.ChoiceField(choices=list(RANGE_LABELS.items()), required=False)
    start = MomentField(required=False, input_formats=DATETIME_FORMATS, label="From")
    end = MomentField(required=False, input_formats=DATETIME_FORMATS, label="To")
    team = forms.CharField(required=False, max_length=100)
    model = forms.CharField(required=False, max_length=200)
    user = forms.CharField(required=False, max_length=255)
    min_cost = forms.DecimalField(
        required=False, min_value=0, max_value=MAX_QUERY_COST_USD, max_digits=QUERY_COST_DIGITS,
        decimal_places=QUERY_COST_PLACES, label="Min cost",
    )

    def clean(self):
        data = super().clean() or {}
        if self.errors:
            return data
        chosen = data.get("range") or ("custom" if data.get("start") or data.get("end") else "24h")
        now = timezone.now()
        if chosen == "custom":
            start, end = data.get("start"), data.get("end") or now
            if start is None:
                raise ValidationError({"start": "Give a start for a custom range."})
            if start >= end:
                raise ValidationError({"end": "The end must be after the start."})
            if end - start > MAX_RANGE:
                raise ValidationError({"start": "A range may span at most 366 days."})
        else:
            end = now
            start = end - RANGES[chosen]
        data["range"] = chosen
        data["filters"] = EventFilter(
            start=start.astimezone(UTC),
            end=end.astimezone(UTC),
            team_alias=data.get("team") or None,
            model=data.get("model") or None,
            user_id=data.get("user") or None,
        )
        return data


class RequestFilterForm(FilterForm):
    status = forms.ChoiceField(
        choices=[("", "Any status"), ("success", "Success"), ("error", "Error")], required=False
    )
    sort = forms.ChoiceField(
        choices=[(name, name) for key in REQUEST_SORTS for name in (key, f"-{key}")], required=False
    )
    # Past MAX_ROWS the page shows no rows but says where the table stops; further pages are not offered.
    page = forms.IntegerField(required=False, min_value=1, max_value=MAX_ROWS // min(PAGE_SIZES) + 1)
    per_page = forms.TypedChoiceField(
        choices=[(n, n) for n in PAGE_SIZES], coerce=int, required=False, label="Rows per page"
    )


def _parse(request, scope: AccessScope, form_class=FilterForm):
    """The bound form and its EventFilter (team resolved through the scope: 404 for unseen teams)."""
    form = form_class(request.GET)
    if not form.is_valid():
        return form, None
    filters = with_team(scope, form.cleaned_data["filters"])
    return form, filters


def _events(scope: AccessScope, filters: EventFilter, data: dict):
    """Raw events the per-request filters select (min_cost and status on top of the range filters)."""
    events = scoped_events(scope=scope, filters=filters)
    if data.get("min_cost") is not None:
        events = events.filter(cost__gte=data["min_cost"])
    if data.get("status"):
        events = events.filter(status=data["status"])
    return events


def _query(request, **changes) -> str:
    """The current query string with some parameters changed (None drops one)."""
    params = {key: value for key, value in request.GET.items() if value != ""}
    for key, value in changes.items():
        if value is None:
            params.pop(key, None)
        else:
            params[key] = value
    return urlencode(params)


# --- presenting the dashboard ----------------------------------------------------------------------

# (key, label, formatter, which direction is good: "down", "up" or None for neither)
KPIS = (
    ("total_cost", "Total cost", usd, "down"),
    ("total_tokens", "Total tokens", thousands, None),
    ("avg_latency_ms", "Average latency", duration_ms, "down"),
    ("cache_hit_rate", "Cache hit rate", percent, "up"),
    ("total_requests", "Total requests", thousands, None),
    ("error_rate", "Error rate", percent, "down"),
)
RATE_KPIS = {"cache_hit_rate", "error_rate"}
AVERAGE_KPIS = {"avg_latency_ms", *RATE_KPIS}


def _delta(key: str, current, previous, good: str | None, period: str) -> dict:
    """The change against the previous period: relative for amounts, percentage points for rates.

    `text` is short for the card ("▲ 12.5%"); `label` says it in words for screen readers and tooltips.
    """
    if current is None or previous is None:
        if previous is None:
            return {"text": "—", "label": f"no data for the previous {period}", "tone": "flat"}
        return {"text": "—", "label": "no data in this range", "tone": "flat"}
    if key in RATE_KPIS:
        change = float(current) - float(previous)
        amount = f"{abs(change):.1f} pts"
        unchanged = abs(change) < 0.05
    elif not previous:
        if not current:
            return {"text": "no change", "label": f"no change on the previous {period}", "tone": "flat"}
        return {"text": "new", "label": f"none in the previous {period}", "tone": "flat"}
    else:
        change = (float(current) - float(previous)) / float(previous) * 100
        amount = f"{abs(change):,.1f}%"
        unchanged = abs(change) < 0.05
    if unchanged:
        return {"text": "no change", "label": f"no change on the previous {period}", "tone": "flat"}
    tone = "flat" if good is None else ("good" if (change < 0) == (good == "down") else "bad")
    arrow, word = ("▲", "up") if change > 0 else ("▼", "down")
    return {"text": f"{arrow} {amount}", "label": f"{word} {amount} on the previous {period}", "tone": tone}


def _period_name(filters: EventFilter) -> str:
    """"24 h", "7 days", "6 h"; "period" for spans that are not whole hours."""
    span = filters.end - filters.start
    hours = span / timedelta(hours=1)
    if hours > 48 and span % timedelta(days=1) == timedelta(0):
        return f"{span // timedelta(days=1)} days"
    if hours == int(hours):
        return f"{int(hours)} h"
    return "period"


def _bucket_label(moment: datetime, granularity: str) -> str:
    local = timezone.localtime(moment)
    return local.strftime("%d %b %H:%M") if granularity == "hour" else local.strftime("%a %d %b")


def _anomaly_marks(series: list[dict], anomalies: list[dict], granularity: str) -> list[dict | None]:
    """Per trend bucket: None, or the bucket's cost and a note naming its anomalous hours."""
    in_bucket: dict[datetime, list[dict]] = {}
    for row in anomalies:
        bucket = row["hour"] if granularity == "hour" else day_of(row["hour"])
        in_bucket.setdefault(bucket, []).append(row)
    marks: list[dict | None] = []
    for point in series:
        rows = in_bucket.get(point["start"])
        note = "; ".join(
            f"{row['team_alias']} {timezone.localtime(row['hour']):%H:%M}: {usd(row['spend'])} "
            f"(usually {usd(row['baseline'])})"
            for row in rows or []
        )
        marks.append({"cost": _money_float(point["cost"]), "note": f"Unusual spend: {note}"} if rows else None)
    return marks


def _money_float(value) -> float:
    return float(value or 0)


def _request_row(scope: AccessScope, row: dict) -> list[dict]:
    """Cells of a recent-requests row (the dashboard panel)."""
    url = reverse("request-detail", args=[scope.organization.slug, row["request_id"]])
    return [
        {"text": timezone.localtime(row["timestamp"]).strftime("%d %b %H:%M:%S")},
        {"text": row["request_id"], "href": url, "code": True},
        {"text": row["team_alias"]},
        {"text": row["user_id"] or "—"},
        {"text": row["model"]},
        {"text": row["status"], "tone": "bad" if row["status"] == "error" else ""},
        {"text": thousands(row["total_tokens"]), "num": True},
        {"text": usd_request(row["cost"]), "num": True},
        {"text": duration_ms(row["latency_ms"]), "num": True},
    ]


def dashboard_context(request, scope: AccessScope, form: FilterForm, filters: EventFilter) -> dict:
    """Every figure of the dashboard, display-ready: the page renders it, dashboard.json returns it."""
    data = form.cleaned_data
    panels = dashboard_panels(scope=scope, filters=filters)
    granularity = panels["granularity"]
    span = filters.end - filters.start
    previous = EventFilter(
        start=filters.start - span,
        end=filters.start,
        team_alias=filters.team_alias,
        model=filters.model,
        user_id=filters.user_id,
        team_id=filters.team_id,
    )
    before = kpi_figures(period_totals(scope=scope, filters=previous))
    before_requests = before["total_requests"]
    period = _period_name(filters)
    kpis = {}
    for key, label, fmt, good in KPIS:
        current = panels["kpis"][key]
        # An average or a rate of no requests is not zero: it has no value to compare with.
        prior = before[key] if before_requests or key not in AVERAGE_KPIS else None
        kpis[key] = {
            "label": label,
            "value": current,
            "display": fmt(current),
            "previous": prior,
            "previous_display": fmt(prior),
            "delta": _delta(key, current, prior, good, period),
        }

    totals = panels["totals"]
    total_cost = totals["cost"]
    team_names = dict(scope.teams().values_list("id", "alias"))
    series = panels["series"]
    cache = cache_report(scope=scope, filters=filters, granularity=granularity)
    batches = batch_report(scope=scope, filters=filters, totals=totals)

    models = panels["models"]
    model_rows = [
        [
            {"text": model},
            {"text": usd(sums["cost"]), "num": True},
            {"text": percent(100 * sums["cost"] / total_cost) if total_cost else "—", "num": True},
            {"text": thousands(sums["requests"]), "num": True},
            {"text": thousands(sums["total_tokens"]), "num": True},
            {"text": duration_ms(sums["latency_sum_ms"] / sums["requests"]) if sums["requests"] else "—", "num": True},
            {"text": percent(100 * sums["errors"] / sums["requests"]) if sums["requests"] else "—", "num": True},
        ]
        for model, sums in models.items()
    ]
    dashboard_url = reverse("dashboard", args=[scope.organization.slug])
    team_rows = [
        [
            {"text": team_names[team_id], "href": f"{dashboard_url}?{_query(request, team=team_names[team_id])}"},
            {"text": usd(sums["cost"]), "num": True},
            {"text": percent(100 * sums["cost"] / total_cost) if total_cost else "—", "num": True},
            {"text": thousands(sums["requests"]), "num": True},
            {"text": thousands(sums["total_tokens"]), "num": True},
        ]
        for team_id, sums in panels["teams"].items()
    ]
    requests_url = reverse("requests", args=[scope.organization.slug])
    user_rows = [
        [
            {"text": user or "(no user)", "href": f"{requests_url}?{_query(request, user=user)}" if user else None},
            {"text": usd(sums["cost"]), "num": True},
            {"text": thousands(sums["requests"]), "num": True},
            {"text": thousands(sums["total_tokens"]), "num": True},
        ]
        for user, sums in list(panels["users"].items())[:10]
    ]
    recent = recent_requests(events=_events(scope, filters, data), limit=RECENT_ON_DASHBOARD)

    # Charts: the model doughnut keeps the seven costliest models and folds the rest into "Other".
    shown = list(models.items())[:7]
    other = sum((sums["cost"] for _, sums in list(models.items())[7:]), Decimal(0))
    share_labels = [model for model, _ in shown] + (["Other"] if other else [])
    share_values = [_money_float(sums["cost"]) for _, sums in shown] + ([_money_float(other)] if other else [])
    by_tokens = sorted(models.items(), key=lambda item: -item[1]["total_tokens"])[:12]
    cache_series = [cache["series"].get(start, {}) for start in bucket_starts(filters.start, filters.end, granularity)]
    query_types = panels["query_types"]
    labels = [_bucket_label(point["start"], granularity) for point in series]
    anomalies = spend_anomalies(scope=scope, filters=filters)
    anomaly_marks = _anomaly_marks(series, anomalies, granularity)

    events_split = batches["events"]
    records = batches["records"]
    if events_split is not None:
        batched, unbatched = events_split["batched"], events_split["unbatched"]
        batch: dict[str, Any] = {
            "share": percent(100 * batched["requests"] / totals["requests"]) if totals["requests"] else "—",
            "batched_requests": thousands(batched["requests"]),
            "per1k_batched": per_thousand_tokens(batched["cost"], batched["tokens"]),
            "per1k_unbatched": per_thousand_tokens(unbatched["cost"], unbatched["tokens"]),
            "avg_size": _average(records["avg_size"] or batched["avg_size"]),
        }
    else:
        batch = {
            "share": "—",
            "batched_requests": "—",
            "per1k_batched": per_thousand_tokens(records["cost"], records["tokens"]),
            "per1k_unbatched": "—",
            "avg_size": _average(records["avg_size"]),
        }
    batch |= {
        "split": events_split is not None,
        "batches": thousands(records["batches"]),
        "records_per1k": per_thousand_tokens(records["cost"], records["tokens"]),
        "records_cost": usd(records["cost"]),
        "records_latency": duration_ms(records["avg_latency_ms"]) if records["batches"] else "—",
    }
    client_lookups = cache["hits"] + cache["misses"]

    return {
        "generated_at": timezone.now(),
        "has_events": None,  # filled by the caller when it matters
        "range": {
            "key": data["range"],
            "label": RANGE_LABELS[data["range"]],
            "start": filters.start,
            "end": filters.end,
            "start_display": timezone.localtime(filters.start).strftime("%d %b %Y %H:%M"),
            "end_display": timezone.localtime(filters.end).strftime("%d %b %Y %H:%M"),
            "granularity": granularity,
            "previous_start": previous.start,
            "previous_start_display": timezone.localtime(previous.start).strftime("%d %b %Y %H:%M"),
        },
        "kpis": kpis,
        "compared_with": f"Changes compare with the previous {period}",
        "unpriced": {
            "count": totals["unpriced"],
            "display": thousands(totals["unpriced"]),
            "models": [
                {"model": model, "count": count, "display": thousands(count)}
                for model, count in panels["unpriced_models"].items()
            ],
            "models_display": ", ".join(
                f"{model} ({thousands(count)})" for model, count in panels["unpriced_models"].items()
            ),
            "prices_url": _prices_url(scope),
        },
        "percentiles": {name: duration_ms(value) for name, value in panels["latency_percentiles_ms"].items()},
        "cache": {
            "hits": thousands(totals["cache_hits"]),
            "misses": thousands(totals["requests"] - totals["cache_hits"]),
            "hit_rate": kpis["cache_hit_rate"]["display"],
            "client_reports": thousands(cache["reports"]),
            "client_hit_rate": percent(100 * cache["hits"] / client_lookups) if client_lookups else "—",
            "lookup": duration_ms(cache["lookup_ms"]),
        },
        "batch": batch,
        "anomalies": [
            {
                "hour": row["hour"],
                "hour_display": timezone.localtime(row["hour"]).strftime("%d %b %H:%M"),
                "team_alias": row["team_alias"],
                "spend": row["spend"],
                "spend_display": usd(row["spend"]),
                "baseline": row["baseline"],
                "baseline_display": usd(row["baseline"]),
            }
            for row in anomalies
        ],
        "tables": {
            "models": model_rows,
            "teams": team_rows,
            "users": user_rows,
            "recent": [_request_row(scope, row) for row in recent],
        },
        "charts": {
            "granularity": granularity,
            "trend": {
                "labels": labels,
                "cost": [_money_float(point["cost"]) for point in series],
                "requests": [point["requests"] for point in series],
                # The bucket's cost where a team had an anomalous hour in it (a marker on the line), else null.
                "anomalies": [mark["cost"] if mark else None for mark in anomaly_marks],
                "anomaly_notes": [mark["note"] if mark else None for mark in anomaly_marks],
            },
            "model_share": {"labels": share_labels, "cost": share_values},
            "tokens_by_model": {
                "labels": [model for model, _ in by_tokens],
                "prompt": [sums["prompt_tokens"] for _, sums in by_tokens],
                "output": [sums["output_tokens"] for _, sums in by_tokens],
            },
            "latency_histogram": {
                "labels": [_histogram_label(bucket) for bucket in panels["latency_histogram"]],
                "counts": [bucket["count"] for bucket in panels["latency_histogram"]],
            },
            "cache": {
                "labels": ["Hits", "Misses"],
                "events": [totals["cache_hits"], totals["requests"] - totals["cache_hits"]],
                "client": [cache["hits"], cache["misses"]],
            },
            "percentiles": {
                "labels": labels,
                "p50": [point["percentiles"]["p50"] for point in series],
                "p95": [point["percentiles"]["p95"] for point in series],
                "p99": [point["percentiles"]["p99"] for point in series],
                "ttft": [
                    round(point["ttft_sum_ms"] / point["ttft_count"], 3) if point["ttft_count"] else None
                    for point in series
                ],
            },
            "cache_lookup": {
                "labels": labels,
                "lookup_ms": [
                    round(point["lookup_ms"], 3) if point.get("lookup_ms") is not None else None
                    for point in cache_series
                ],
            },
            "query_types": {
                "labels": [name or "(none)" for name in query_types],
                "cost": [_money_float(sums["cost"]) for sums in query_types.values()],
            },
        },
    }


def _prices_url(scope: AccessScope) -> str | None:
    """The organization's Prices page, for those who may set a price there (owners and admins who
    see the whole organization: a price list changes every team's figures)."""
    if not scope.manages_whole_organization:
        return None
    return reverse("prices", args=[scope.organization.slug])


def _average(value) -> str:
    return f"{float(value):,.1f}" if value else "—"


def _histogram_label(bucket: dict) -> str:
    """"< 100 ms", "100–250 ms", "1–2 s", "≥ 10 s"."""

    def short(ms: int) -> tuple[str, str]:
        return (f"{ms // 1000:g}", "s") if ms >= 1000 else (f"{ms:g}", "ms")

    low, high = bucket["from_ms"], bucket["to_ms"]
    if low is None:
        return "< {} {}".format(*short(high))
    if high is None:
        return "≥ {} {}".format(*short(low))
    (low_n, low_u), (high_n, high_u) = short(low), short(high)
    return f"{low_n}–{high_n} {high_u}" if low_u == high_u else f"{low_n} {low_u}–{high_n} {high_u}"


def _page_context(request, scope: AccessScope, form, **extra) -> dict:
    teams = list(scope.teams().values_list("alias", flat=True))
    given = request.GET.get("range") or ""
    selected = given if given in RANGE_LABELS else ("custom" if request.GET.get("start") else "24h")
    # datetime-local inputs show only "YYYY-MM-DDTHH:MM": a valid ISO time from a bookmark is shown that way.
    moments = {}
    form.is_valid()  # cleans the form once; valid fields keep their value when others are wrong
    for name in ("start", "end"):
        value = form.cleaned_data.get(name)
        moments[f"{name}_value"] = (
            timezone.localtime(value).strftime("%Y-%m-%dT%H:%M") if value else request.GET.get(name, "")
        )
    errors = [
        (form.fields[field].label or field.replace("_", " ").capitalize() if field in form.fields else "", message)
        for field, messages in form.errors.items()
        for message in messages
    ]
    return {
        **moments,
        "filter_errors": errors,
        "selected_range": selected,
        "scope": scope,
        "form": form,
        "teams": teams,
        "range_labels": RANGE_LABELS,
        "query": _query(request),
        **extra,
    }


@org_page
def dashboard(request, scope):
    form, filters = _parse(request, scope)
    context = _page_context(
        request,
        scope,
        form,
        nav="dashboard",
        refresh_seconds=REFRESH_SECONDS,
        track_url=request.build_absolute_uri(reverse("metrics-track")),
    )
    if filters is None:
        return render(request, "metrics/dashboard.html", context, status=400)
    if not has_events(scope):
        context["empty"] = True
        return render(request, "metrics/dashboard.html", context)
    board = dashboard_context(request, scope, form, filters)
    board["has_events"] = True
    context |= {
        "board": board,
        "filters": filters,
        "min_cost": form.cleaned_data.get("min_cost"),
        "requests_query": _query(request, range=form.cleaned_data["range"]),
    }
    return render(request, "metrics/dashboard.html", context)


@org_page
def dashboard_data(request, scope):
    """The dashboard's figures as JSON, for the page's auto-refresh (session-authenticated)."""
    form, filters = _parse(request, scope)
    if filters is None:
        return JsonResponse({"status": "error", "errors": form.errors.get_json_data()}, status=400)
    board = dashboard_context(request, scope, form, filters)
    board["has_events"] = board["kpis"]["total_requests"]["value"] > 0 or has_events(scope)
    return JsonResponse(board, encoder=DjangoJSONEncoder)


# --- requests ----------------------------------------------------------------------------------------

COLUMNS = (  # (sort name, heading, numeric)
    ("time", "Time", False),
    ("request_id", "Request ID", False),
    ("team", "Team", False),
    ("user", "User", False),
    ("model", "Model", False),
    ("query_type", "Type", False),
    ("status", "Status", False),
    ("prompt_tokens", "Prompt", True),
    ("output_tokens", "Output", True),
    ("total_tokens", "Tokens", True),
    ("cost", "Cost", True),
    ("latency", "Latency", True),
    ("ttft", "TTFT", True),
    ("cache", "Cache", False),
    ("batched", "Batched", False),
)


@org_page
def requests_list(request, scope):
    form, filters = _parse(request, scope, RequestFilterForm)
    context = _page_context(request, scope, form, nav="requests", columns=[])
    if filters is None:
        return render(request, "metrics/requests.html", context, status=400)
    data = form.cleaned_data
    sort = data.get("sort") or DEFAULT_REQUEST_SORT
    per_page = data.get("per_page") or 50
    page = data.get("page") or 1
    offset = (page - 1) * per_page
    capped = offset >= MAX_ROWS
    rows = []
    if not capped:
        limit = min(per_page, MAX_ROWS - offset)
        rows = request_page(events=_events(scope, filters, data), sort=sort, offset=offset, limit=limit + 1)
    has_next = len(rows) > min(per_page, MAX_ROWS - offset) if not capped else False
    rows = rows[:per_page]
    at_cap = not capped and offset + per_page >= MAX_ROWS and has_next
    if at_cap:
        has_next = False
    columns = []
    current, descending = sort.lstrip("-"), sort.startswith("-")
    for name, heading, numeric in COLUMNS:
        if name == current:
            next_sort = name if descending else f"-{name}"
            state = "descending" if descending else "ascending"
        else:
            # Numbers and time read best biggest/newest first; text A to Z.
            next_sort = f"-{name}" if numeric or name == "time" else name
            state = None
        columns.append(
            {"name": name, "heading": heading, "numeric": numeric, "state": state,
             "query": _query(request, sort=next_sort, page=None)}
        )
    context |= {
        "columns": columns,
        "rows": rows,
        "sort": sort,
        "page": page,
        "per_page": per_page,
        "first_row": offset + 1,
        "last_row": offset + len(rows),
        "previous_query": _query(request, page=page - 1 if page > 2 else None) if page > 1 else None,
        "next_query": _query(request, page=page + 1) if has_next else None,
        "capped": capped or at_cap,
        "max_rows": MAX_ROWS,
        "csv_query": _query(request, page=None, per_page=None),
        "filters": filters,
    }
    return render(request, "metrics/requests.html", context)


@org_page
def request_detail(request, scope, request_id: str):
    event = get_object_or_404(
        scope.filter(UsageEvent.objects.select_related("team", "price")), request_id=request_id
    )
    metadata = json.dumps(event.metadata, indent=2, sort_keys=True, ensure_ascii=False) if event.metadata else ""
    usage = [
        {"key": key, "label": key.replace("_", " ").capitalize(), "count": count}
        for key, count in sorted((event.usage or {}).items())
    ]
    return render(
        request,
        "metrics/request_detail.html",
        {
            "scope": scope,
            "nav": "requests",
            "event": event,
            "metadata": metadata,
            "usage": usage,
            "cost_source": COST_SOURCE_WORDS.get(event.cost_source, event.get_cost_source_display()),
            "list_cost_differs": event.list_cost is not None and event.list_cost != event.cost,
        },
    )


# How each cost source reads on a request's page.
COST_SOURCE_WORDS = {
    CostSource.CATALOG: "the platform's price",
    CostSource.OVERRIDE: "the organization's own price for this model",
    CostSource.DISCOUNT: "the platform's price with the organization's discount",
    CostSource.CLIENT: "the client's own figure (no price matched)",
    CostSource.UNPRICED: "unpriced (no price matched and the client sent no cost)",
}


CSV_FIELDS = (  # (header, values() name)
    ("request_id", "request_id"),
    ("timestamp", "timestamp"),
    ("team", "team__alias"),
    ("user_id", "user_id"),
    ("end_user", "end_user"),
    ("model", "model"),
    ("model_requested", "model_requested"),
    ("provider", "provider"),
    ("query_type", "query_type"),
    ("status", "status"),
    ("prompt_tokens", "prompt_tokens"),
    ("output_tokens", "output_tokens"),
    ("cached_tokens", "cached_tokens"),
    ("cache_write_tokens", "cache_write_tokens"),
    ("total_tokens", "total_tokens"),
    ("prompt_cost_usd", "prompt_cost"),
    ("output_cost_usd", "output_cost"),
    ("cost_usd", "cost"),
    ("client_cost_usd", "client_cost"),
    ("is_priced", "is_priced"),
    ("latency_ms", "latency_ms"),
    ("time_to_first_token_ms", "time_to_first_token_ms"),
    ("cache_hit", "cache_hit"),
    ("cache_similarity_score", "cache_similarity_score"),
    ("is_batched", "is_batched"),
    ("batch_id", "batch_id"),
    ("batch_size", "batch_size"),
    ("error_message", "error_message"),
    # Added later: appended so that existing column positions stay.
    ("cost_source", "cost_source"),
    ("list_cost_usd", "list_cost"),
    ("usage", "usage"),
    ("provider_requested", "provider_requested"),
)
MONEY_COLUMNS = {"prompt_cost", "output_cost", "cost", "client_cost", "list_cost"}
JSON_COLUMNS = {"usage"}
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class _Echo:
    def write(self, value):
        return value


def _csv_cell(name: str, value):
    if value is None:
        return ""
    if name in MONEY_COLUMNS:
        return full_money(value)
    if name in JSON_COLUMNS:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.startswith(FORMULA_START):
        # A spreadsheet would run it as a formula: quote it as text (OWASP's CSV injection advice).
        return f"'{value}"
    return value


@org_page
def requests_csv(request, scope):
    """Exactly the requests the filters select, in the table's order, streamed in chunks."""
    form, filters = _parse(request, scope, RequestFilterForm)
    if filters is None:
        return JsonResponse({"status": "error", "errors": form.errors.get_json_data()}, status=400)
    sort = form.cleaned_data.get("sort") or DEFAULT_REQUEST_SORT
    names = [name for _, name in CSV_FIELDS]
    rows = (
        _events(scope, filters, form.cleaned_data)
        .order_by(*request_ordering(sort))
        .values_list(*names)
        .iterator(chunk_size=CSV_CHUNK)
    )
    writer = csv.writer(_Echo())

    def lines():
        yield writer.writerow([header for header, _ in CSV_FIELDS])
        for row in rows:
            yield writer.writerow([_csv_cell(name, value) for name, value in zip(names, row, strict=True)])

    stamp = "%Y%m%dT%H%MZ"
    filename = (
        f"{scope.organization.slug}-requests-{filters.start.astimezone(UTC):{stamp}}-"
        f"{filters.end.astimezone(UTC):{stamp}}.csv"
    )
    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response

