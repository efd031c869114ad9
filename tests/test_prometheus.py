"""GET /metrics: what Prometheus reads, who may read it, and what a scrape costs.

Business figures are checked against sums computed here from the raw UsageEvent rows, after the
events went in through the API and the rollups were refreshed.
"""

from __future__ import annotations

import ipaddress
import math
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from prometheus_client.parser import text_string_to_metric_families

from billing.models import Budget
from billing.selectors import budget_period, budget_status
from billing.services import budgets_evaluate
from metrics.models import UsageEvent
from metrics.rollups import dirty_rollups_refresh
from teams.models import Team
from tests.budget_support import costing, fast_passwords, ingest, private_cache
from tests.conftest import api, make_price
from tests.rollup_support import post_events, random_events
from tests.smtp_sink import free_port
from tests.test_settings import child_env, error_message, python
from tests.workers import test_database_url as worker_database_url

SCRAPE_TOKEN = "scrape-token-for-tests-0123456789"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _setup(settings):
    fast_passwords(settings)
    private_cache(settings)
    settings.PROMETHEUS_SCRAPE_TOKEN = SCRAPE_TOKEN
    settings.PROMETHEUS_ALLOWED_NETWORKS = []
    settings.PROMETHEUS_CACHE_SECONDS = 0  # each scrape computes afresh, unless a test says otherwise
    settings.PROMETHEUS_MULTIPROC_DIR = ""


def scrape(client, token: str | None = SCRAPE_TOKEN, **extra):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token is not None else {}
    return client.get("/metrics", **headers, **extra)


def samples(body: bytes) -> dict[tuple[str, frozenset], float]:
    """(sample name, labels) -> value, parsed with prometheus_client's own parser."""
    parsed = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            parsed[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return parsed


def series(parsed: dict, name: str) -> dict[frozenset, float]:
    return {labels: value for (sample, labels), value in parsed.items() if sample == name}


def labels(**values: str) -> frozenset:
    return frozenset(values.items())


def raw_usage() -> dict[tuple[str, str, str], dict]:
    """Per (organization slug, team alias, model), summed from the raw events with Decimal."""
    teams = {team.pk: (team.organization.slug, team.alias) for team in Team.objects.select_related("organization")}
    sums: dict[tuple, dict] = defaultdict(lambda: defaultdict(int))
    for e in UsageEvent.objects.values():
        s = sums[(*teams[e["team_id"]], e["model"])]
        s["requests"] += 1
        s["cost"] += e["cost"]
        s["prompt_tokens"] += e["prompt_tokens"]
        s["cached_tokens"] += e["cached_tokens"]
        s["cache_write_tokens"] += e["cache_write_tokens"]
        s["output_tokens"] += e["output_tokens"]
        s["errors"] += e["status"] == "error"
        s["cache_hits"] += e["cache_hit"]
        s["unpriced"] += not e["is_priced"]
        s["latency_ms"] += e["latency_ms"]
    return sums


@pytest.fixture
def usage(world, monkeypatch):
    """Random events over two days in acme (three teams, four models) and globex, rolled up."""
    rng = random.Random(20260115)
    make_price("other-model", input="0.15", output="0.6")
    newest = datetime.now(UTC) - timedelta(minutes=5)
    post_events(world.both, random_events(rng, count=240, newest=newest, span=timedelta(hours=40), prefix="a"))
    post_events(world.globex_token, random_events(rng, count=60, newest=newest, span=timedelta(hours=30), prefix="g"))
    # No other writer runs here: the rollup need not pause between hours for one.
    monkeypatch.setattr("metrics.rollups.SQLITE_WRITER_GAP_SECONDS", 0, raising=False)
    dirty_rollups_refresh()
    return raw_usage()


# --- content -----------------------------------------------------------------------------------------


def test_it_exports_cost_tokens_requests_errors_and_latency_equal_to_the_raw_events(client, usage):
    parsed = samples(scrape(client).content)

    cost = series(parsed, "llmcost_cost_usd_total")
    assert {dict(k)["organization"] for k in cost} == {"acme", "globex"}
    assert len(cost) == len(usage)
    for (org, team, model), want in usage.items():
        key = labels(organization=org, team=team, model=model)
        assert cost[key] == float(want["cost"]), (key, cost[key], want["cost"])
        assert series(parsed, "llmcost_requests_total")[key] == want["requests"]
        assert series(parsed, "llmcost_errors_total")[key] == want["errors"]
        assert series(parsed, "llmcost_cache_hits_total")[key] == want["cache_hits"]
        assert series(parsed, "llmcost_unpriced_requests_total")[key] == want["unpriced"]
        tokens = series(parsed, "llmcost_tokens_total")
        uncached = want["prompt_tokens"] - want["cached_tokens"] - want["cache_write_tokens"]
        assert tokens[key | {("kind", "prompt_uncached")}] == uncached
        assert tokens[key | {("kind", "prompt_cached")}] == want["cached_tokens"]
        assert tokens[key | {("kind", "prompt_cache_write")}] == want["cache_write_tokens"]
        assert tokens[key | {("kind", "output")}] == want["output_tokens"]
        assert series(parsed, "llmcost_llm_latency_seconds_count")[key] == want["requests"]
        assert math.isclose(series(parsed, "llmcost_llm_latency_seconds_sum")[key], want["latency_ms"] / 1000,
                            rel_tol=1e-9)
    assert series(parsed, "llmcost_business_metrics_up") == {frozenset(): 1.0}
    assert series(parsed, "llmcost_rollup_pending_hours") == {frozenset(): 0.0}


def test_it_does_not_count_events_before_they_are_rolled_up(client, world, usage):
    ingest(world.ingest, costing("1.00", team_alias="chatbot", model="test-model"))

    before = series(samples(scrape(client).content), "llmcost_requests_total")
    pending = series(samples(scrape(client).content), "llmcost_rollup_pending_hours")[frozenset()]
    dirty_rollups_refresh()
    after = series(samples(scrape(client).content), "llmcost_requests_total")

    key = labels(organization="acme", team="chatbot", model="test-model")
    assert pending >= 1
    assert after[key] == before[key] + 1
    assert sum(after.values()) == sum(before.values()) + 1


def test_it_exports_request_and_database_metrics_of_the_service(client, usage):
    client.get("/healthz")

    body = scrape(client).content
    parsed = samples(body)

    healthz = labels(status="200", view="healthz", method="GET")
    assert series(parsed, "django_http_responses_total_by_status_view_method_total")[healthz] >= 1
    names = {name for name, _ in parsed}
    assert "django_http_requests_latency_seconds_by_view_method_bucket" in names
    assert "django_db_execute_total" in names


def test_it_exports_each_active_budgets_spend_limit_and_used_ratio(client, world):
    now = datetime.now(UTC)
    ingest(world.ingest, costing("3.00", team_alias="chatbot", user_id="alice"),
           costing("1.00", team_alias="search", user_id="bob"))
    ingest(world.globex_token, costing("2.00", team_alias="chatbot"))
    org = Budget.objects.create(organization=world.acme, amount_usd=Decimal(10), name="acme all")
    team = Budget.objects.create(organization=world.acme, team=world.chatbot, amount_usd=Decimal(5), period="daily")
    user = Budget.objects.create(organization=world.acme, team=world.chatbot, user_id="alice", amount_usd=Decimal(2))
    globex = Budget.objects.create(organization=world.globex, amount_usd=Decimal(4), period="weekly")
    Budget.objects.create(organization=world.acme, amount_usd=Decimal(1), is_active=False)
    dirty_rollups_refresh()
    budgets_evaluate()  # user budgets report the spend of their last evaluation

    parsed = samples(scrape(client).content)

    ratios = series(parsed, "llmcost_budget_used_ratio")
    expected = {
        org: ("acme", "", "organization", Decimal("4.00")),
        team: ("acme", "chatbot", "team", Decimal("3.00")),
        user: ("acme", "chatbot", "user", Decimal("3.00")),
        globex: ("globex", "", "organization", Decimal("2.00")),
    }
    assert len(ratios) == len(expected)  # the inactive budget is left out
    for budget, (slug, alias, scope, spend) in expected.items():
        start, end = budget_period(budget, now)
        if not start <= now - timedelta(seconds=1) < end:  # the events may fall in a period just ended
            continue
        key = labels(organization=slug, team=alias, budget_id=str(budget.pk), name=budget.name, scope=scope,
                     period=budget.period)
        assert series(parsed, "llmcost_budget_spend_usd")[key] == float(spend)
        assert series(parsed, "llmcost_budget_limit_usd")[key] == float(budget.amount_usd)
        assert ratios[key] == float(spend / budget.amount_usd)
        # The same figure the budget check answers (which also reads the open tail of raw events).
        assert budget_status(budget, fresh=True).spend == spend


def test_a_user_budget_reports_its_last_evaluation_in_the_organizations_time_zone(client, world):
    world.acme.time_zone = "America/New_York"
    world.acme.save()
    user = Budget.objects.create(organization=world.acme, team=world.chatbot, user_id="alice",
                                 amount_usd=Decimal(6), period="daily")
    start, _ = budget_period(user, datetime.now(UTC))
    ingest(world.ingest, costing("3.00", at=start + timedelta(seconds=1), team_alias="chatbot", user_id="alice"),
           costing("1.00", at=start + timedelta(seconds=1), team_alias="chatbot", user_id="bob"))
    dirty_rollups_refresh()
    key = labels(organization="acme", team="chatbot", budget_id=str(user.pk), name="", scope="user", period="daily")

    before = samples(scrape(client).content)
    budgets_evaluate()
    after = samples(scrape(client).content)

    assert series(before, "llmcost_budget_spend_usd")[key] == 0  # not evaluated in this period yet
    if budget_period(user, datetime.now(UTC))[0] == start:  # the day did not end meanwhile
        assert series(after, "llmcost_budget_spend_usd")[key] == 3.0
        assert series(after, "llmcost_budget_used_ratio")[key] == 0.5


# --- bounded cardinality ------------------------------------------------------------------------------


def test_it_keeps_the_costliest_models_and_teams_per_organization_and_sums_the_rest_as_other(
    client, world, settings
):
    settings.PROMETHEUS_TOP_MODELS = 2
    settings.PROMETHEUS_TOP_TEAMS = 1
    for name in ("alpha", "beta", "gamma", "delta"):
        make_price(name, input="2", output="8")  # test-model's price, so costing() applies
    # acme: models costing 4 > 3 > 2 > 1 USD, in teams chatbot (7) and search (3); globex alone.
    ingest(world.ingest, costing("4.00", model="alpha", team_alias="chatbot"),
           costing("3.00", model="beta", team_alias="chatbot"),
           costing("2.00", model="gamma", team_alias="search"),
           costing("1.00", model="delta", team_alias="search"))
    ingest(world.globex_token, costing("0.50", model="delta", team_alias="chatbot"))
    dirty_rollups_refresh()

    cost = series(samples(scrape(client).content), "llmcost_cost_usd_total")

    acme = {(dict(k)["team"], dict(k)["model"]): v for k, v in cost.items() if dict(k)["organization"] == "acme"}
    assert acme == {
        ("chatbot", "alpha"): 4.0,
        ("chatbot", "beta"): 3.0,
        ("other", "other"): 3.0,  # search's two cheapest models
    }
    # Another organization's ranking is its own: its one model and team keep their names.
    assert cost[labels(organization="globex", team="chatbot", model="delta")] == 0.5


def test_it_bounds_series_per_organization_whatever_the_number_of_models_and_teams(client, world, settings):
    settings.PROMETHEUS_TOP_MODELS = 3
    settings.PROMETHEUS_TOP_TEAMS = 2
    for i in range(30):
        make_price(f"model-{i}", input="2", output="8")
    events = [
        costing(f"{1 + i % 7}.00", model=f"model-{i}", team_alias=f"team-{i % 5}", request_id=f"r{i}")
        for i in range(30)
    ]
    ingest(world.ingest, *events)
    dirty_rollups_refresh()

    parsed = samples(scrape(client).content)

    for name in ("llmcost_cost_usd_total", "llmcost_requests_total", "llmcost_llm_latency_seconds_count"):
        found = series(parsed, name)
        assert len({dict(k)["model"] for k in found}) <= 3 + 1
        assert len({dict(k)["team"] for k in found}) <= 2 + 1
    assert sum(series(parsed, "llmcost_requests_total").values()) == 30  # nothing lost by folding
    total = sum((Decimal(e["prompt_tokens"]) * 2 / 1_000_000 for e in events), Decimal(0))
    assert math.isclose(sum(series(parsed, "llmcost_cost_usd_total").values()), float(total), rel_tol=1e-12)


# --- cost of a scrape ------------------------------------------------------------------------------------


def test_it_never_reads_raw_events_and_its_query_count_does_not_grow_with_them(client, world, usage):
    Budget.objects.create(organization=world.acme, amount_usd=Decimal(10))
    Budget.objects.create(organization=world.acme, team=world.chatbot, user_id="alice@acme.test",
                          amount_usd=Decimal(1))

    with CaptureQueriesContext(connection) as queries:
        response = scrape(client)

    assert response.status_code == 200
    statements = [q["sql"].lower() for q in queries.captured_queries]
    assert not [sql for sql in statements if "metrics_usageevent" in sql]
    assert len(statements) <= 10, statements


def test_it_serves_business_metrics_from_the_cache_between_computations(client, world, usage, settings):
    settings.PROMETHEUS_CACHE_SECONDS = 60
    first = series(samples(scrape(client).content), "llmcost_requests_total")
    ingest(world.ingest, costing("1.00", team_alias="chatbot"))
    dirty_rollups_refresh()

    with CaptureQueriesContext(connection) as queries:
        cached = series(samples(scrape(client).content), "llmcost_requests_total")

    assert cached == first
    assert not [q for q in queries.captured_queries if "rollup" in q["sql"].lower()]
    settings.PROMETHEUS_CACHE_SECONDS = 0
    assert sum(series(samples(scrape(client).content), "llmcost_requests_total").values()) == sum(first.values()) + 1


def test_it_still_serves_request_metrics_when_business_metrics_fail_and_does_not_cache_the_failure(
    client, world, monkeypatch, settings
):
    settings.PROMETHEUS_CACHE_SECONDS = 60

    def broken():
        raise RuntimeError("database unavailable")

    with monkeypatch.context() as patch:
        patch.setattr("metrics.prometheus.rollup_usage_totals", broken)
        response = scrape(client)

    assert response.status_code == 200
    parsed = samples(response.content)
    assert series(parsed, "llmcost_business_metrics_up") == {frozenset(): 0.0}
    assert any(name.startswith("django_http_") for name, _ in parsed)
    assert series(samples(scrape(client).content), "llmcost_business_metrics_up") == {frozenset(): 1.0}


# --- who may scrape ------------------------------------------------------------------------------------


def test_it_answers_the_scrape_token(client, world):
    response = scrape(client)

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")


@pytest.mark.parametrize("token", [None, "", "wrong-token-of-the-right-length", SCRAPE_TOKEN + "x",
                                   SCRAPE_TOKEN[:-1]])
def test_it_refuses_a_missing_or_wrong_token(client, world, token):
    response = scrape(client, token=token)

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["status"] == "error"
    assert b"llmcost_" not in response.content


def test_it_refuses_a_token_sent_another_way(client, world):
    for header in (f"Token {SCRAPE_TOKEN}", SCRAPE_TOKEN, f"Basic {SCRAPE_TOKEN}"):
        assert client.get("/metrics", HTTP_AUTHORIZATION=header).status_code == 401
    assert client.get("/metrics", {"token": SCRAPE_TOKEN}).status_code == 401


def test_it_refuses_sessions_and_api_tokens_of_every_kind(client, world, django_user_model):
    staff = django_user_model.objects.create_superuser("root@example.test", "root@example.test", "pw-root-12345")
    for user in (world.owner, world.member, world.outsider, staff):
        client.force_login(user)
        assert scrape(client, token=None).status_code == 401, user
        client.logout()
    for token in (world.ingest, world.read, world.both, world.pinned, world.globex_token):
        assert api(token).get("/metrics").status_code == 401


def test_it_refuses_everyone_when_nothing_is_configured_and_debug_is_off(client, world, settings):
    settings.PROMETHEUS_SCRAPE_TOKEN = ""

    response = scrape(client)

    assert response.status_code == 403
    assert "PROMETHEUS_SCRAPE_TOKEN" in response.json()["message"]


def test_it_answers_anyone_on_a_debug_server_when_nothing_is_configured(client, world, settings):
    settings.PROMETHEUS_SCRAPE_TOKEN = ""
    settings.DEBUG = True

    assert scrape(client, token=None).status_code == 200


def test_it_answers_only_allowed_networks(client, world, settings):
    settings.PROMETHEUS_SCRAPE_TOKEN = ""
    settings.PROMETHEUS_ALLOWED_NETWORKS = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128")]

    assert scrape(client, token=None, REMOTE_ADDR="10.20.30.40").status_code == 200
    assert scrape(client, token=None, REMOTE_ADDR="::1").status_code == 200
    assert scrape(client, token=None, REMOTE_ADDR="::ffff:10.1.1.1").status_code == 200
    refused = scrape(client, token=None, REMOTE_ADDR="192.168.1.5")
    assert refused.status_code == 403
    assert b"llmcost_" not in refused.content
    # A forwarded-for header is written by the client: it does not count.
    assert scrape(client, token=None, REMOTE_ADDR="192.168.1.5", HTTP_X_FORWARDED_FOR="10.0.0.1").status_code == 403


def test_it_needs_both_the_network_and_the_token_when_both_are_configured(client, world, settings):
    settings.PROMETHEUS_ALLOWED_NETWORKS = [ipaddress.ip_network("10.0.0.0/8")]

    assert scrape(client, REMOTE_ADDR="10.0.0.9").status_code == 200
    assert scrape(client, token="wrong-token-of-the-right-length", REMOTE_ADDR="10.0.0.9").status_code == 401
    assert scrape(client, REMOTE_ADDR="172.16.0.1").status_code == 403


def test_it_answers_other_methods_with_a_json_405(client, world):
    response = client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {SCRAPE_TOKEN}")

    assert response.status_code == 405
    assert response.json()["status"] == "error"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PROMETHEUS_ALLOWED_NETWORKS", "10.0.0.0/8,not-a-network"),
        ("PROMETHEUS_SCRAPE_TOKEN", "short"),
        ("PROMETHEUS_CACHE_SECONDS", "soon"),
        ("PROMETHEUS_TOP_MODELS", "0"),
        ("PROMETHEUS_MULTIPROC_DIR", "/nonexistent/prometheus-multiproc"),
    ],
)
def test_it_refuses_to_start_with_a_malformed_prometheus_setting(tmp_path, variable, value):
    result = python(["manage.py", "check"], child_env(tmp_path, **{variable: value}))

    assert result.returncode != 0
    message = error_message(result.stderr)
    assert "ImproperlyConfigured" in message and variable in message, result.stderr[-2000:]


# --- several gunicorn workers ------------------------------------------------------------------------------


@pytest.mark.parametrize("configured_dir", [True, False], ids=["PROMETHEUS_MULTIPROC_DIR set", "unset"])
def test_it_merges_the_request_counts_of_every_gunicorn_worker(world, tmp_path, configured_dir):
    """A real gunicorn with two workers: whichever worker answers a scrape, it counts all requests.

    With PROMETHEUS_MULTIPROC_DIR set, files of an earlier run there are cleared first; unset,
    deploy/gunicorn.conf.py picks a fresh directory.
    """
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(DATABASE_URL=worker_database_url(), PROMETHEUS_SCRAPE_TOKEN=SCRAPE_TOKEN)
    if configured_dir:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "prometheus")
        (tmp_path / "prometheus").mkdir()
        (tmp_path / "prometheus" / "counter_99999.db").write_bytes(b"left over from an earlier run")
    log = open(tmp_path / "gunicorn.log", "w+")  # noqa: SIM115
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", "llmcost_project.wsgi:application",
         "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "2"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"

    def get(path: str, token: str | None = None) -> tuple[int, str]:
        request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if get("/healthz")[0] == 200:
                    break
            except OSError:
                pass
            log.seek(0)
            assert server.poll() is None and time.monotonic() < deadline, f"gunicorn did not start:\n{log.read()}"
            time.sleep(0.2)
        for _ in range(40):
            assert get("/healthz")[0] == 200
        healthz = labels(status="200", view="healthz", method="GET")
        counts = set()
        for _ in range(6):  # answered by either worker
            status, body = get("/metrics", SCRAPE_TOKEN)
            assert status == 200, body[:500]
            parsed = samples(body.encode())
            counts.add(series(parsed, "django_http_responses_total_by_status_view_method_total")[healthz])
            assert series(parsed, "llmcost_business_metrics_up") == {frozenset(): 1.0}
        assert counts == {41.0}  # the readiness probe that answered 200 plus 40
        assert get("/metrics")[0] == 401
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
