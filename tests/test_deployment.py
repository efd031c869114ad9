"""The deployment files agree with the project: docker-compose.yml, the Dockerfile, the Prometheus
and Grafana configuration under deploy/.

Docker does not run in the test environment, so these tests read the files and check each claim
they make against the code: every command they run exists, every variable they set is one the
settings module reads, every service can be health-checked, no secret is built into the image,
Prometheus scrapes the web service where it listens, and every metric the Grafana dashboard
queries is one /metrics really exports.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from celery import Celery
from celery.app.utils import find_app
from celery.bin.celery import celery as celery_cli
from django.core.management import get_commands
from django.urls import resolve
from prometheus_client.parser import text_string_to_metric_families

from billing.models import Budget
from metrics.prometheus import metrics_view
from metrics.rollups import dirty_rollups_refresh
from tests.budget_support import costing, fast_passwords, ingest, private_cache

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, dict] = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PROMETHEUS = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
GRAFANA_DIR = ROOT / "deploy/grafana"
# Programs of the base image the app containers may call besides the project's own commands.
SYSTEM_TOOLS = {"find", "grep", "test"}
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|_URL$")


# --- reading the files ---------------------------------------------------------------------------------


def settings_variables() -> set[str]:
    """Every environment variable llmcost_project/settings.py reads, found in its source."""
    tree = ast.parse((ROOT / "llmcost_project/settings.py").read_text())
    # The module's own readers take the variable's name first (`def env_int(name, ...)`).
    readers = {"get", "getenv"} | {
        node.name for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.args.args and node.args.args[0].arg == "name"
    }
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            is_environ = not isinstance(func, ast.Attribute) or ast.unparse(func.value) in ("os.environ", "os")
            if name in readers and is_environ and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
        if isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
            found.add(ast.literal_eval(node.slice))
    return found


def env_file_keys(path: Path) -> dict[str, str]:
    keys = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            keys[key.strip()] = value
    return keys


def interpolated_variables() -> set[str]:
    """Variables docker compose substitutes from .env (`${NAME...}`; `$$` escapes a literal `$`)."""
    return set(re.findall(r"(?<!\$)\$\{(\w+)", COMPOSE_TEXT))


def app_services() -> dict[str, dict]:
    """Services running the project's image."""
    return {name: service for name, service in SERVICES.items() if "build" in service}


def shell_commands(text: str) -> list[list[str]]:
    """A shell command line split into simple commands (at &&, ||, ;, |)."""
    lexer = shlex.shlex(text.replace("$$", "$"), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in ("&&", "||", ";", "|"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [*commands, current] if current else commands


def argv_commands(argv: list[str]) -> list[list[str]]:
    if argv[:2] in (["sh", "-c"], ["/bin/sh", "-c"]):
        return [cmd for command in shell_commands(argv[2]) for cmd in argv_commands(command)]
    return [argv]


def service_commands(service: dict) -> list[list[str]]:
    command = service.get("command")
    if command is None:
        return []
    argv = shlex.split(command) if isinstance(command, str) else command
    return argv_commands(argv)


def healthcheck_commands(service: dict) -> list[list[str]]:
    test = service["healthcheck"]["test"]
    if test[0] == "CMD-SHELL":
        return [cmd for command in shell_commands(test[1]) for cmd in argv_commands(command)]
    assert test[0] == "CMD", test
    return argv_commands(test[1:])


def dockerfile_cmd() -> list[str]:
    lines = [line for line in DOCKERFILE.splitlines() if line.startswith("CMD ")]
    assert len(lines) == 1, "one CMD"
    return json.loads(lines[0][len("CMD ") :])


def option(argv: list[str], *names: str) -> str | None:
    for index, token in enumerate(argv):
        if token in names:
            return argv[index + 1]
        for name in names:
            if token.startswith(f"{name}="):
                return token.split("=", 1)[1]
    return None


def bind_port(argv: list[str]) -> int:
    return int(option(argv, "--bind", "-b").rsplit(":", 1)[1])


def web_argv() -> list[str]:
    (argv,) = service_commands(SERVICES["web"])
    return argv


# --- commands --------------------------------------------------------------------------------------------


def check_command(argv: list[str]) -> None:
    """The program exists and what it is asked to run exists in the project."""
    program = argv[0]
    if program in ("python", "python3") and argv[1] == "manage.py":
        assert argv[2] in get_commands(), f"no manage.py command {argv[2]!r}"
    elif program in ("python", "python3") and argv[1] == "-c":
        compile(argv[2], "<healthcheck>", "exec")
        for url in re.findall(r"https?://[^'\"\s]+", argv[2]):
            parts = urlsplit(url)
            assert parts.port == bind_port(web_argv()), url
            assert resolve(parts.path), url
    elif program == "gunicorn":
        config = option(argv, "-c", "--config")
        assert config is None or (ROOT / config).is_file(), f"no gunicorn config {config}"
        targets = [token for token in argv[1:] if re.fullmatch(r"[a-zA-Z_][\w.]*:[a-zA-Z_]\w*", token)]
        assert len(targets) == 1, argv
        module, attribute = targets[0].split(":")
        assert callable(getattr(importlib.import_module(module), attribute)), targets[0]
        assert option(argv, "--bind", "-b"), "gunicorn must bind beyond the container's loopback"
    elif program == "celery":
        app = option(argv, "-A", "--app")
        assert isinstance(find_app(app), Celery), f"-A {app} is not a Celery app"
        subcommand = next(token for token in argv[1:] if token in celery_cli.commands)
        assert subcommand in ("worker", "beat", "inspect"), argv
    else:
        assert program in SYSTEM_TOOLS, f"unknown program {program!r} in {argv}"


@pytest.mark.parametrize("name", sorted(app_services()))
def test_it_runs_only_commands_that_exist_in_the_project(name):
    service = app_services()[name]
    commands = service_commands(service) + (healthcheck_commands(service) if "healthcheck" in service else [])
    assert commands, name
    for argv in commands:
        check_command(argv)


def test_it_starts_the_image_with_a_command_that_exists():
    check_command(dockerfile_cmd())
    assert bind_port(dockerfile_cmd()) == bind_port(web_argv())
    assert f"EXPOSE {bind_port(web_argv())}" in DOCKERFILE


def test_it_runs_the_web_service_with_the_multiprocess_metrics_config():
    assert option(web_argv(), "-c", "--config") == "deploy/gunicorn.conf.py"
    assert option(dockerfile_cmd(), "-c", "--config") == "deploy/gunicorn.conf.py"


def test_it_runs_exactly_one_beat():
    beats = [name for name in app_services() if any("beat" in argv for argv in service_commands(SERVICES[name]))]
    assert beats == ["beat"]
    assert "deploy" not in SERVICES["beat"] or SERVICES["beat"]["deploy"].get("replicas", 1) == 1


# --- environment ------------------------------------------------------------------------------------------


def test_the_settings_variables_are_found_in_the_settings_source():
    found = settings_variables()
    # A few the settings module is known to read, so the source reader cannot silently find nothing.
    assert {"SECRET_KEY", "DATABASE_URL", "REDIS_URL", "ALLOWED_HOSTS", "PROMETHEUS_SCRAPE_TOKEN"} <= found


@pytest.mark.parametrize("name", sorted(app_services()))
def test_it_sets_only_variables_the_settings_read(name):
    environment = app_services()[name].get("environment", {})
    assert isinstance(environment, dict)
    assert set(environment) - settings_variables() == set()


def test_the_env_example_holds_only_settings_and_compose_variables():
    keys = set(env_file_keys(ROOT / ".env.example"))
    assert keys - settings_variables() - interpolated_variables() == set()


def test_the_env_example_sets_every_variable_compose_requires():
    required = set(re.findall(r"(?<!\$)\$\{(\w+):\?", COMPOSE_TEXT))
    assert required
    assert required - set(env_file_keys(ROOT / ".env.example")) == set()


def test_every_app_service_reads_the_env_file():
    for name, service in app_services().items():
        assert service.get("env_file") == ".env", name


# --- health --------------------------------------------------------------------------------------------


def test_every_service_has_a_healthcheck_or_is_a_one_shot_job_others_wait_for():
    for name, service in SERVICES.items():
        if "healthcheck" in service:
            assert service["healthcheck"]["test"], name
            continue
        assert service.get("restart") == "no", f"{name} has no healthcheck"
        waiting = [
            other for other, spec in SERVICES.items()
            if spec.get("depends_on", {}).get(name, {}).get("condition") == "service_completed_successfully"
        ]
        assert waiting, f"one-shot {name} is waited for by no service"


def test_every_dependency_waits_for_health_or_completion():
    for name, service in SERVICES.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in SERVICES, (name, dependency)
            expected = "service_healthy" if "healthcheck" in SERVICES[dependency] else "service_completed_successfully"
            assert rule["condition"] == expected, (name, dependency)


# --- secrets ---------------------------------------------------------------------------------------------


def test_no_secret_is_written_into_the_dockerfile():
    secrets = {key for key in env_file_keys(ROOT / ".env.example") if SECRET_NAME.search(key)}
    secrets |= {name for name in settings_variables() | interpolated_variables() if SECRET_NAME.search(name)}
    assert {"SECRET_KEY", "POSTGRES_PASSWORD", "PROMETHEUS_SCRAPE_TOKEN", "GRAFANA_ADMIN_PASSWORD"} <= secrets
    for name in secrets:
        # Assigned a literal (anything but a value computed at build time: "$(...)" or "$VAR").
        literal = re.search(rf"\b{name}\s*=\s*(?![\"']?\$)\S", DOCKERFILE)
        assert literal is None, f"{name} has a literal value in the Dockerfile"
        assert not re.search(rf"^\s*(ENV|ARG)\b.*\b{name}\b", DOCKERFILE, re.M), f"{name} is built into the image"


def test_the_env_file_never_reaches_the_image():
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ".env" in ignored
    assert "COPY . ." in DOCKERFILE  # so the ignore file is what keeps .env out


def test_compose_holds_no_secret_literal():
    for name, service in SERVICES.items():
        environment = service.get("environment", {})
        for key, value in environment.items():
            if SECRET_NAME.search(key) and key not in ("DATABASE_URL", "REDIS_URL"):
                assert str(value).startswith("${"), f"{name}: {key} must come from .env"
    database_url = SERVICES["web"]["environment"]["DATABASE_URL"]
    assert "${POSTGRES_PASSWORD" in database_url


# --- Prometheus and Grafana ------------------------------------------------------------------------------------


def llmcost_job() -> dict:
    (job,) = [job for job in PROMETHEUS["scrape_configs"] if job["job_name"] == "llmcost"]
    return job


def test_prometheus_scrapes_the_web_service_where_it_listens():
    job = llmcost_job()
    (target,) = [target for group in job["static_configs"] for target in group["targets"]]
    host, port = target.rsplit(":", 1)
    assert host == "web" and host in SERVICES
    assert int(port) == bind_port(web_argv())
    path = job.get("metrics_path", "/metrics")
    assert resolve(path).func is metrics_view
    assert job.get("scheme", "http") == "http"
    # The scraper's Host header must be allowed by Django.
    assert host in SERVICES["web"]["environment"]["ALLOWED_HOSTS"].split(",")
    redirect_exempt = importlib.import_module("llmcost_project.settings").SECURE_REDIRECT_EXEMPT
    assert any(re.match(pattern, path.lstrip("/")) for pattern in redirect_exempt)


def test_prometheus_sends_the_scrape_token_from_the_env_file():
    job = llmcost_job()
    assert job["authorization"]["type"] == "Bearer"
    token_file = job["authorization"]["credentials_file"]
    prometheus = SERVICES["prometheus"]
    startup = " ".join(prometheus["entrypoint"])
    assert f"> {token_file}" in startup and "$$PROMETHEUS_SCRAPE_TOKEN" in startup
    assert prometheus["environment"]["PROMETHEUS_SCRAPE_TOKEN"].startswith("${PROMETHEUS_SCRAPE_TOKEN")
    assert "PROMETHEUS_SCRAPE_TOKEN" in settings_variables()  # the web service checks the same variable


def test_prometheus_loads_the_config_from_deploy():
    prometheus = SERVICES["prometheus"]
    config = re.search(r"--config\.file=(\S+)", " ".join(prometheus["entrypoint"])).group(1)
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in prometheus["volumes"]}
    assert mounts[config] == "./deploy/prometheus/prometheus.yml"


def test_every_mounted_deploy_file_exists():
    for service in SERVICES.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source


def test_grafana_provisions_the_prometheus_service_as_its_data_source():
    provisioning = yaml.safe_load((GRAFANA_DIR / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = provisioning["datasources"]
    url = urlsplit(source["url"])
    assert url.hostname == "prometheus" and url.hostname in SERVICES
    assert url.port == 9090
    assert "9090" in " ".join(SERVICES["prometheus"]["healthcheck"]["test"])
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in SERVICES["grafana"]["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"


def test_grafana_provisions_the_dashboard_on_its_data_source():
    provider = yaml.safe_load((GRAFANA_DIR / "provisioning/dashboards/llmcost.yml").read_text())["providers"][0]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in SERVICES["grafana"]["volumes"]}
    assert mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    (source,) = yaml.safe_load((GRAFANA_DIR / "provisioning/datasources/prometheus.yml").read_text())["datasources"]
    for panel in dashboard()["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == source["uid"], panel["title"]


def dashboard() -> dict:
    return json.loads((GRAFANA_DIR / "dashboards/llmcost.json").read_text())


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords, labels
    (inside {...} or by (...)), durations or Grafana variables."""
    expr = re.sub(r"\$\w+", " ", expr)  # $__range, $organization
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', " ", expr)  # strings
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)\s*(\()?", expr):
        name, call = match.groups()
        if not call and name.lower() not in PROMQL_WORDS:
            names.add(name)
    return names


def dashboard_metric_names() -> set[str]:
    names = set()
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            names |= promql_metric_names(target["expr"])
    for variable in dashboard()["templating"]["list"]:
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        names |= set(re.findall(r"label_values\(\s*([a-zA-Z_:][\w:]*)\s*,", query))
    return names


def test_the_promql_reader_finds_metric_names_only():
    expr = ('histogram_quantile(0.95, sum by (le, view) (rate(django_x_bucket{view=~"a|b"}[$__rate_interval])))'
            ' / on (view) sum(increase(llmcost_y_total[5m] offset 1h)) * 3600')
    assert promql_metric_names(expr) == {"django_x_bucket", "llmcost_y_total"}


def test_every_metric_the_dashboard_queries_is_exported_by_metrics(world, settings, client):
    fast_passwords(settings)
    private_cache(settings)
    settings.PROMETHEUS_SCRAPE_TOKEN = "deployment-test-scrape-token"
    settings.PROMETHEUS_CACHE_SECONDS = 0
    ingest(world.ingest, costing("1.50", team_alias="chatbot", user_id="alice"))
    Budget.objects.create(organization=world.acme, team=world.chatbot, amount_usd=Decimal(10))
    dirty_rollups_refresh()
    client.get("/healthz")

    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer deployment-test-scrape-token")

    assert response.status_code == 200
    exported = {
        sample.name for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }
    queried = dashboard_metric_names()
    assert {"llmcost_cost_usd_total", "llmcost_tokens_total", "llmcost_budget_used_ratio",
            "django_http_requests_latency_seconds_by_view_method_bucket"} <= queried
    assert queried - exported == set()


def test_the_image_build_collects_static_files_for_production(tmp_path):
    """The Dockerfile's collectstatic runs with DEBUG off: the manifest storage rewrites every URL
    a stylesheet or script references and fails on one that is not shipped."""
    environment = {
        **os.environ, "DEBUG": "false", "SECRET_KEY": "collectstatic-only-0123456789abcdefghijklmnop",
        "LLMCOST_VAR_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "llmcost_project.settings",
    }
    collect = (
        "import django, sys; django.setup(); from django.conf import settings; "
        "settings.STATIC_ROOT = sys.argv[1]; from django.core.management import call_command; "
        "call_command('collectstatic', interactive=False, verbosity=0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", collect, str(tmp_path / "static")],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert any((tmp_path / "static" / "vendor" / "chartjs").glob("chart.umd.min.*.js"))  # hashed names
