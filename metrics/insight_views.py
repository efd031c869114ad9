"""The Insights page (`/o/<slug>/insights/`): month-end forecast per team, savings so far, recommendations
and a what-if, for the whole organization or one team (`?team_alias=`, kept in the URL).

The page's fields are spelled as the insights API's parameters and parsed by the API's own FilterSets
(`SavingsFilterSet`, `WhatIfFilterSet`); their errors show next to the field they are about, with status
400. Figures come from the API's selectors (`month_forecasts`, `savings`, `recommendations`, `what_if`).
"""

from __future__ import annotations

from typing import Any

from django.http import QueryDict
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import urlencode

from teams.web import org_page

from .forecasts import month_forecasts
from .insight_filters import SavingsFilterSet, WhatIfFilterSet
from .insights import InsightFilters, UnpricedAlternative, insight_events, savings, what_if
from .recommendations import chat_prices, recommendations
from .views import RANGE_LABELS

RANGE_HOURS = {"24h": 24, "7d": 24 * 7, "30d": 24 * 30}
DEFAULT_RANGE = "30d"
WHAT_IF_FIELDS = ("model", "alternative")
MODELS_SHOWN = 200
SAVINGS_LABELS = {
    "prompt_cache_saved": "Prompt caching",
    "response_cache_saved": "Response cache",
    "batch_saved": "Batching",
    "error_spend": "Spent on failed calls",
}


def insight_parameters(params: QueryDict, teams: list[str]) -> tuple[QueryDict, dict[str, list[str]]]:
    """The page's fields as the API's parameters, and the problems only the page can see."""
    data = QueryDict(mutable=True)
    errors: dict[str, list[str]] = {}
    chosen_range = params.get("range") or DEFAULT_RANGE
    if chosen_range in RANGE_HOURS:
        data["time_range_hours"] = str(RANGE_HOURS[chosen_range])
    else:
        errors["range"] = [f"Choose one of {', '.join(RANGE_HOURS)}."]
    team = params.get("team_alias", "").strip()
    if team and team not in teams:
        errors["team_alias"] = ["Choose one of your teams."]
    elif team:
        data["team_alias"] = team
    for name in WHAT_IF_FIELDS:
        values = [value for value in params.getlist(name) if value.strip()]
        if values:
            data.setlist(name, values)
    return data, errors


def _range_labels() -> dict[str, str]:
    return {key: label for key, label in RANGE_LABELS.items() if key in RANGE_HOURS}


@org_page
def insights(request, scope):
    teams = list(scope.teams().order_by("alias").values_list("alias", flat=True))
    data, errors = insight_parameters(request.GET, teams)
    asks_what_if = any(name in data for name in WHAT_IF_FIELDS)
    filterset = (WhatIfFilterSet if asks_what_if else SavingsFilterSet)(data=data)
    for parameter, messages in filterset.errors.items():
        field = "range" if parameter == "time_range_hours" else parameter
        errors.setdefault(field, []).extend(str(message) for message in messages)
    values = {name: request.GET.get(name, "") for name in ("team_alias", "range", *WHAT_IF_FIELDS)}
    values["range"] = values["range"] or DEFAULT_RANGE
    context: dict[str, Any] = {
        "scope": scope,
        "nav": "insights",
        "values": values,
        "errors": errors,
        "teams": teams,
        "range_labels": _range_labels(),
    }
    if errors:
        return render(request, "metrics/insights.html", context, status=400)
    filters: InsightFilters = filterset.insight_filters()
    if asks_what_if:
        try:
            context["what_if"] = what_if(scope=scope, filters=filters, model=filterset.form.cleaned_data["model"],
                                         alternative=filterset.form.cleaned_data["alternative"])  # fmt: skip
        except UnpricedAlternative:
            context["errors"] = {"alternative": ["No price for this model (platform or the organization's own)."]}
            status = 400
        else:
            status = 200
    else:
        status = 200
    base_filters = InsightFilters(start=filters.start, end=filters.end, team_alias=filters.team_alias)
    saved = savings(scope=scope, filters=base_filters)
    context |= {
        "forecast": month_forecasts(scope=scope, team_alias=filters.team_alias),
        "savings": saved,
        "savings_rows": [
            {"name": name, "label": label, "value": saved[name], "method": saved["method"][name]}
            for name, label in SAVINGS_LABELS.items()
        ],
        "recommendations": recommendations(scope=scope, filters=base_filters),
        "models": list(
            insight_events(scope=scope, filters=base_filters).order_by("model").values_list("model", flat=True)
            .distinct()[:MODELS_SHOWN]
        ),
        "priced_models": sorted(f"{provider}/{model}" for provider, model in chat_prices(filters.end)),
        "api_base": reverse("insights-recommendations").rsplit("/", 1)[0],
        "api_query": urlencode([(name, str(data[name])) for name in ("time_range_hours", "team_alias")
                                if name in data]),
        "filters": filters,
    }
    return render(request, "metrics/insights.html", context, status=status)
