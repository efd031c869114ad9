"""Recommendations: for the costliest groups of calls (team × query type × model) in a range, cheaper
models the organization could try, each with what it would have saved on exactly those calls.

Method, bounded so a page can afford it:
1. The groups: one GROUP BY (team, query type, model, provider) over the caller's raw events in range,
   the `GROUPS` costliest.
2. The candidates of a group: priced chat models of the platform's price table (a price row in force at
   the end of the range, with an output price above 0: embeddings and other input-only models are left
   out) ranked by list price (input + output USD per million tokens): the `SAME_PROVIDER` cheapest of
   the group's own provider, then the `OTHER_PROVIDERS` cheapest of any other provider, each cheaper
   by list price than the group's model (when the group's model has a list price).
3. Each candidate is priced by `metrics.insights.what_ifs` (the what-if's own ledger pricing, per call,
   organization price list, call's own moment) restricted to the group's calls (its team, query type
   and model); a candidate is kept only if it saves money on them. Same-provider candidates come first,
   then the others; each family ordered by saving, largest first.
4. For candidates the organization already uses (events of that model name in range, in the caller's
   scope), their observed latency P95 (the project's latency sketch, within 1 %) and error rate (the
   `IS_ERROR` rule) over the range: one grouped read for all candidates of all groups.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal

from django.db.models import Count, Q

from billing.models.prices import ModelPrice
from llmcost_project.db import Sum
from teams.access import AccessScope

from . import sketch
from .insights import InsightFilters, insight_events, what_ifs
from .selectors import IS_ERROR

GROUPS = 5
SAME_PROVIDER = 3
OTHER_PROVIDERS = 2
RATE_QUANTUM = Decimal("0.0001")
PERCENT_QUANTUM = Decimal("0.01")


def chat_prices(at: datetime) -> dict[tuple[str, str], Decimal]:
    """(provider, model) → list price (input + output USD per million tokens) of each chat model's price
    row in force at `at` (daily-window rows aside). One query; the latest row per model wins."""
    rows = (
        ModelPrice.objects.filter(effective_from__lte=at, daily_from__isnull=True)
        .order_by("provider", "model", "effective_from")
        .values_list("provider", "model", "input_per_mtok", "output_per_mtok")
    )
    prices: dict[tuple[str, str], Decimal] = {}
    for provider, model, input_rate, output_rate in rows:
        prices[(provider, model)] = input_rate + output_rate if output_rate > 0 else Decimal(-1)
    return {key: price for key, price in prices.items() if price >= 0}


def _candidates(prices: dict[tuple[str, str], Decimal], provider: str, model: str) -> list[tuple[str, str, str]]:
    """(family, provider, model) of the few models worth pricing for a group of `model` at `provider`."""
    ceiling = prices.get((provider, model))
    ranked = sorted(
        (price, key) for key, price in prices.items()
        if key[1] != model and (ceiling is None or price < ceiling)
    )  # fmt: skip
    same = [key for _, key in ranked if key[0] == provider][:SAME_PROVIDER]
    other = [key for _, key in ranked if key[0] != provider][:OTHER_PROVIDERS]
    return [("same_provider", *key) for key in same] + [("other_provider", *key) for key in other]


def _observed(scope: AccessScope, filters: InsightFilters, models: set[str]) -> dict[str, dict]:
    """Requests, errors, error rate and latency P95 of each of `models` the caller's events used in range."""
    if not models:
        return {}
    events = insight_events(scope=scope, filters=replace(filters, query_type=None)).filter(model__in=models)
    rows = (
        events.order_by()
        .values("model", bucket=sketch.bucket_expression())
        .annotate(n=Count("id"), errors=Count("id", filter=IS_ERROR))
    )
    sketches: dict[str, dict[int, int]] = {}
    counts: dict[str, list[int]] = {}
    for row in rows:
        sketches.setdefault(row["model"], {})[row["bucket"]] = row["n"]
        tally = counts.setdefault(row["model"], [0, 0])
        tally[0] += row["n"]
        tally[1] += row["errors"]
    return {
        model: {
            "requests": requests,
            "errors": errors,
            "error_rate": (Decimal(errors) / requests).quantize(RATE_QUANTUM, ROUND_HALF_EVEN),
            "error_percent": (Decimal(errors) * 100 / requests).quantize(PERCENT_QUANTUM, ROUND_HALF_EVEN),
            "latency_p95_ms": sketch.quantiles(sketches[model], (95,))["p95"],
        }
        for model, (requests, errors) in counts.items()
    }


def recommendations(*, scope: AccessScope, filters: InsightFilters, groups: int = GROUPS) -> dict:
    """The costliest groups in range and the cheaper models each could try (see the module docstring)."""
    events = insight_events(scope=scope, filters=filters)
    top = list(
        events.order_by()
        .values("team__alias", "query_type", "model", "provider")
        .annotate(requests=Count("id"), cost=Sum("cost"))
        .filter(Q(cost__gt=0))
        .order_by("-cost", "team__alias", "query_type", "model", "provider")[:groups]
    )
    prices = chat_prices(filters.end)
    answer_groups = []
    used: set[str] = set()
    for group in top:
        candidates = _candidates(prices, group["provider"], group["model"])
        names = {f"{provider}/{model}": (family, provider, model) for family, provider, model in candidates}
        group_filters = replace(filters, team_alias=group["team__alias"], query_type=group["query_type"])
        priced = what_ifs(scope=scope, filters=group_filters, model=group["model"], alternatives=list(names))
        rows = []
        for alternative, answer in priced.items():
            family, provider, model = names[alternative]
            if answer["savings"] <= 0:
                continue
            rows.append({
                "family": family, "provider": provider, "model": model, "alternative": alternative,
                "list_price_per_mtok": prices[(provider, model)],
                **{name: answer[name] for name in ("requests", "actual_cost", "alternative_cost", "savings",
                                                   "savings_percent", "unpriced_requests")},
            })  # fmt: skip
            used.add(model)
        rows.sort(key=lambda row: (row["family"] != "same_provider", -row["savings"], row["alternative"]))
        answer_groups.append({
            "team_alias": group["team__alias"], "query_type": group["query_type"], "model": group["model"],
            "provider": group["provider"], "requests": group["requests"], "cost": group["cost"],
            "candidates": rows,
        })  # fmt: skip
    observed = _observed(scope, filters, used)
    for answer_group in answer_groups:
        for row in answer_group["candidates"]:
            row["observed"] = observed.get(row["model"])
    return {"groups": answer_groups, "start": filters.start, "end": filters.end}
