"""`/metrics` for Prometheus: the service's own request metrics plus business metrics from rollups.

Request, latency and database metrics come from django-prometheus (its middleware and database
wrappers, see settings). Business metrics are computed here from the rollup tables only, never
from raw events, so a scrape costs the same at 10 M events as at 10 k:

- counters (`*_total`, the latency summary): all-time sums of the daily team-total rollup rows per
  organization, team and model. They only grow as events are rolled up (about a minute behind
  ingest), so `rate()` and `increase()` give spend and traffic over any window. Repricing a window
  to a lower price, deleting a team, or a model moving into or out of the top N (see below) makes a
  series go down, which Prometheus reads as a counter reset.
- sections registered by the layers above metrics (`register_business_section`), rendered right
  after the usage counters: billing's budgets part adds each active budget's spend, limit and used
  ratio for its current period (billing/prometheus.py). metrics imports none of their code.

Cardinality is bounded: per organization, the PROMETHEUS_TOP_MODELS costliest models (all-time)
and the PROMETHEUS_TOP_TEAMS costliest teams keep their own label and the rest are summed under
"other", so one organization yields at most (teams + 1) × (models + 1) series per metric. The
rendered business metrics are cached for PROMETHEUS_CACHE_SECONDS in the shared cache, so frequent
or parallel scrapes cost one computation.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

from llmcost_project.api_errors import error_body
from llmcost_project.db import Sum
from teams.models import Organization, Team

from .models import DailyRollup, DirtyHour, JobFailure

logger = logging.getLogger(__name__)

OTHER = "other"
CACHE_KEY = "prometheus-business-metrics:v2"

# The rollup columns summed per organization, team and model.
USAGE_COLUMNS = (
    "requests",
    "prompt_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "output_tokens",
    "cost",
    "errors",
    "cache_hits",
    "unpriced",
    "latency_sum_ms",
)
USAGE_LABELS = ("organization", "team", "model")


# --- reads: rollups only ---------------------------------------------------------------------------


def rollup_usage_totals() -> list[dict]:
    """All-time sums per organization, team and model.

    Reads the daily team-total rows: each holds one team, model and query type summed over all
    users, so summing them over query types counts every event once (the per-user rows hold the
    same events again and are left out). If total rows at another level are added to the rollup
    tables, this is the one query to adjust.
    """
    rows = (
        DailyRollup.objects.filter(is_team_total=True)
        .values("organization_id", "team_id", "model")
        .annotate(**{column: Sum(column) for column in USAGE_COLUMNS})
        .order_by()
    )
    return [{key: value or 0 for key, value in row.items()} for row in rows]


# --- the business snapshot ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BusinessSection:
    """Business metrics a layer above metrics adds to /metrics without metrics importing it.

    `compute(now)` runs inside `business_snapshot` (so its figures are cached with the rest, and its
    failure, like any other, yields llmcost_business_metrics_up 0); `families(figures)` renders what
    it computed. Registered from the owning app's AppConfig.ready().
    """

    name: str
    compute: Callable[[datetime], Any]
    families: Callable[[Any], Iterable[Metric]]


BUSINESS_SECTIONS: dict[str, BusinessSection] = {}


def register_business_section(section: BusinessSection) -> None:
    """Add (or, under the same name, replace) a section; sections render in registration order."""
    BUSINESS_SECTIONS[section.name] = section


@dataclass
class BusinessSnapshot:
    """Everything the business metrics say, labelled and capped, before rendering."""

    computed_at: float
    # (organization, team, model) labels -> sums of USAGE_COLUMNS
    usage: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    # section name -> what its `compute` returned (see BusinessSection)
    sections: dict[str, Any] = field(default_factory=dict)
    pending_hours: int = 0
    # job -> (failures ever recorded, units failing now): see metrics.failures
    job_failures: dict[str, tuple[int, int]] = field(default_factory=dict)


def _top(totals: dict, count: int) -> set:
    """The `count` keys with the largest (cost, requests); ties broken by key, so the choice is stable."""
    ranked = sorted(totals, key=lambda key: (-totals[key][0], -totals[key][1], str(key)))
    return set(ranked[:count])


def cap_usage(
    rows: Iterable[dict], *, top_models: int, top_teams: int, org_slugs: dict[int, str], team_aliases: dict[int, str]
) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Label the rows (organization slug, team alias, model), folding all but each organization's
    costliest teams and models into "other"."""
    by_org: dict[int, list[dict]] = defaultdict(list)
    for row in rows:
        by_org[row["organization_id"]].append(row)
    usage: dict[tuple[str, str, str], dict[str, Any]] = {}
    for organization_id, org_rows in by_org.items():
        model_rank: dict[str, list] = defaultdict(lambda: [Decimal(0), 0])
        team_rank: dict[int, list] = defaultdict(lambda: [Decimal(0), 0])
        for row in org_rows:
            for rank in (model_rank[row["model"]], team_rank[row["team_id"]]):
                rank[0] += row["cost"]
                rank[1] += row["requests"]
        kept_models, kept_teams = _top(model_rank, top_models), _top(team_rank, top_teams)
        slug = org_slugs.get(organization_id, str(organization_id))
        for row in org_rows:
            team = team_aliases.get(row["team_id"], str(row["team_id"])) if row["team_id"] in kept_teams else OTHER
            model = row["model"] if row["model"] in kept_models else OTHER
            sums = usage.setdefault((slug, team, model), dict.fromkeys(USAGE_COLUMNS, 0))
            for column in USAGE_COLUMNS:
                sums[column] += row[column]
    return usage


def business_snapshot(now: datetime | None = None) -> BusinessSnapshot:
    """Compute every business figure now (a few grouped queries over rollup tables)."""
    now = now or datetime.now(UTC)
    rows = rollup_usage_totals()
    org_ids = {row["organization_id"] for row in rows}
    team_ids = {row["team_id"] for row in rows}
    org_slugs = dict(Organization.objects.filter(id__in=org_ids).values_list("id", "slug"))
    team_aliases = dict(Team.objects.filter(id__in=team_ids).values_list("id", "alias"))
    snapshot = BusinessSnapshot(computed_at=now.timestamp())
    snapshot.usage = cap_usage(
        rows,
        top_models=settings.PROMETHEUS_TOP_MODELS,
        top_teams=settings.PROMETHEUS_TOP_TEAMS,
        org_slugs=org_slugs,
        team_aliases=team_aliases,
    )
    for name, section in BUSINESS_SECTIONS.items():
        snapshot.sections[name] = section.compute(now)
    snapshot.pending_hours = DirtyHour.objects.count()
    for job, total, failing in JobFailure.objects.values("job").annotate(
        total=Sum("total_failures"), failing=Count("id", filter=Q(resolved_at__isnull=True))
    ).values_list("job", "total", "failing").order_by("job"):
        snapshot.job_failures[job] = (total or 0, failing)
    return snapshot


# --- exposition --------------------------------------------------------------------------------------


def business_metric_families(snapshot: BusinessSnapshot) -> Iterator[Metric]:
    """The snapshot as Prometheus metric families. Money leaves Decimal only here, as the float
    the text format carries."""
    cost = CounterMetricFamily("llmcost_cost_usd", "Cost of LLM calls in USD (rolled-up events).", labels=USAGE_LABELS)
    requests = CounterMetricFamily("llmcost_requests", "LLM calls (rolled-up events).", labels=USAGE_LABELS)
    errors = CounterMetricFamily("llmcost_errors", "LLM calls reported with status error.", labels=USAGE_LABELS)
    cache_hits = CounterMetricFamily(
        "llmcost_cache_hits", "LLM calls answered from the client's response cache.", labels=USAGE_LABELS
    )
    unpriced = CounterMetricFamily(
        "llmcost_unpriced_requests", "LLM calls whose model had no price (cost as the client sent it).",
        labels=USAGE_LABELS,
    )
    # Token kinds partition prompt + output tokens, so a sum over `kind` is meaningful: cached
    # prompt tokens are not counted again as prompt tokens.
    tokens = CounterMetricFamily(
        "llmcost_tokens",
        "Tokens by kind: prompt_uncached + prompt_cached + prompt_cache_write = prompt tokens; output. "
        "Kinds do not overlap.",
        labels=(*USAGE_LABELS, "kind"),
    )
    latency = SummaryMetricFamily(
        "llmcost_llm_latency_seconds", "Latency of LLM calls as the client measured it.", labels=USAGE_LABELS
    )
    for labels, sums in sorted(snapshot.usage.items()):
        values = list(labels)
        cost.add_metric(values, float(sums["cost"]))
        requests.add_metric(values, sums["requests"])
        errors.add_metric(values, sums["errors"])
        cache_hits.add_metric(values, sums["cache_hits"])
        unpriced.add_metric(values, sums["unpriced"])
        uncached = sums["prompt_tokens"] - sums["cached_tokens"] - sums["cache_write_tokens"]
        tokens.add_metric([*values, "prompt_uncached"], uncached)
        tokens.add_metric([*values, "prompt_cached"], sums["cached_tokens"])
        tokens.add_metric([*values, "prompt_cache_write"], sums["cache_write_tokens"])
        tokens.add_metric([*values, "output"], sums["output_tokens"])
        latency.add_metric(values, sums["requests"], float(sums["latency_sum_ms"]) / 1000)
    yield from (cost, requests, errors, cache_hits, unpriced, tokens, latency)

    for name, section in BUSINESS_SECTIONS.items():
        if name in snapshot.sections:
            yield from section.families(snapshot.sections[name])

    yield GaugeMetricFamily(
        "llmcost_rollup_pending_hours", "Hours with events not yet rolled up (business metrics lag them).",
        value=snapshot.pending_hours,
    )
    failures = CounterMetricFamily(
        "llmcost_job_failures", "Units of background work (one organization's chunk, budget, alert...) that failed.",
        labels=("job",),
    )
    failing = GaugeMetricFamily(
        "llmcost_job_units_failing", "Units of background work failing now, waiting for their retry.", labels=("job",)
    )
    for job, (total, now_failing) in sorted(snapshot.job_failures.items()):
        failures.add_metric([job], total)
        failing.add_metric([job], now_failing)
    yield from (failures, failing)
    yield GaugeMetricFamily(
        "llmcost_business_metrics_computed_timestamp_seconds", "When the business metrics were computed.",
        value=snapshot.computed_at,
    )


class BusinessCollector:
    """A prometheus_client collector of the business metrics, computed when collected.

    A failure (say, the database is down) yields only llmcost_business_metrics_up 0, so the
    request metrics beside it are still served.
    """

    def __init__(self) -> None:
        self.up = False

    def collect(self) -> Iterator[Metric]:
        try:
            families = list(business_metric_families(business_snapshot()))
            self.up = True
        except Exception:
            logger.exception("computing business metrics for /metrics failed")
            families, self.up = [], False
        yield from families
        yield GaugeMetricFamily(
            "llmcost_business_metrics_up", "1 if the business metrics were computed.", value=int(self.up)
        )


def business_metrics_text() -> bytes:
    """The business metrics in the text format, from the shared cache when computed less than
    PROMETHEUS_CACHE_SECONDS ago. The rendered text is cached, not the figures: rendering a few
    thousand samples costs more than reading them back. A failure is not cached."""
    ttl = settings.PROMETHEUS_CACHE_SECONDS
    text = cache.get(CACHE_KEY) if ttl > 0 else None
    if isinstance(text, bytes):
        return text
    collector = BusinessCollector()
    text = generate_latest(collector)
    if ttl > 0 and collector.up:
        cache.set(CACHE_KEY, text, ttl)
    return text


def _request_metrics():
    """The request metrics of this process, or under gunicorn of all its workers."""
    if settings.PROMETHEUS_MULTIPROC_DIR:
        # Each worker counts its own requests into files; merge them all.
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=settings.PROMETHEUS_MULTIPROC_DIR)
        return registry
    return REGISTRY


# --- who may scrape ----------------------------------------------------------------------------------


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def scrape_refusal(request: HttpRequest) -> HttpResponse | None:
    """None if the request may read /metrics, else the refusal to send.

    A scrape token, when configured, must come as `Authorization: Bearer <token>` (compared in
    constant time; API tokens and sessions do not count). Allowed networks, when configured, are
    matched against the connecting address (REMOTE_ADDR, never a forwarded header a client could
    write). When both are configured both must pass. With neither, only a DEBUG server answers.
    """
    token, networks = settings.PROMETHEUS_SCRAPE_TOKEN, settings.PROMETHEUS_ALLOWED_NETWORKS
    if not token and not networks:
        if settings.DEBUG:
            return None
        return JsonResponse(
            error_body("Metrics are disabled: set PROMETHEUS_SCRAPE_TOKEN or PROMETHEUS_ALLOWED_NETWORKS."), status=403
        )
    if networks:
        try:
            address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
        except ValueError:
            address = None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped  # an IPv4 client of a server listening on IPv6
        if address is None or not any(address in network for network in networks):
            return JsonResponse(error_body("This address may not read metrics."), status=403)
    if token:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(_digest(presented.strip()), _digest(token)):
            response = JsonResponse(error_body("Send the scrape token as 'Authorization: Bearer <token>'."), status=401)
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    return None


def metrics_view(request: HttpRequest) -> HttpResponse:
    refusal = scrape_refusal(request)
    if refusal is not None:
        return refusal
    if request.method not in ("GET", "HEAD"):
        response = JsonResponse(error_body(f"Method {request.method} not allowed; use GET."), status=405)
        response["Allow"] = "GET, HEAD"
        return response
    # Two independent blocks of metric families (django_*/process_* and llmcost_*): the text
    # format allows them one after the other.
    body = generate_latest(_request_metrics()) + business_metrics_text()
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
