"""Start-up configuration, run in fresh interpreters: bad values stop start-up naming the variable,
a production configuration passes `check --deploy`, and SQLite takes concurrent writers."""

from __future__ import annotations

import os
import re
import secrets
import sqlite3
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent  # the project root, where manage.py lives
SETUP = (
    "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'llmcost_project.settings'); "
    "django.setup()"
)
# Everything the settings module reads; the child sees only what each case sets.
APP_VARIABLES = {
    "DEBUG", "SECRET_KEY", "LLMCOST_ALLOW_DEV_SECRET", "LLMCOST_VAR_DIR", "ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS",
    "TIME_ZONE", "DATABASE_URL", "DB_CONN_MAX_AGE", "TEST_DATABASE_NAME", "REDIS_URL", "CACHE_KEY_PREFIX",
    "EMAIL_URL", "DEFAULT_FROM_EMAIL", "SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS", "API_MAX_BODY_BYTES",
    "API_RATE_LIMIT", "INGEST_MAX_FUTURE_SECONDS", "PRICE_CACHE_SECONDS", "LOG_LEVEL", "DJANGO_SETTINGS_MODULE",
    "NOTIFICATION_ALLOW_PRIVATE_URLS", "NOTIFICATION_HISTORY_DAYS", "REPRICE_HISTORY_DAYS",
}
EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|ImproperlyConfigured)\b.*?:", re.M)


def child_env(var_dir: Path, **overrides: str | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in APP_VARIABLES}
    env.update(
        DEBUG="false",
        SECRET_KEY=secrets.token_urlsafe(50),
        LLMCOST_VAR_DIR=str(var_dir),
        DATABASE_URL=f"sqlite:///{var_dir / 'db.sqlite3'}",
    )
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def python(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def error_message(stderr: str) -> str:
    """The message of the exception that stopped the process (not the traceback's source lines)."""
    starts = list(EXCEPTION_LINE.finditer(stderr))
    return stderr[starts[-1].start():] if starts else stderr


MALFORMED = {
    "DEBUG": {"DEBUG": "maybe"},
    "DATABASE_URL-scheme": {"DATABASE_URL": "notaurl://x"},
    "DATABASE_URL-port": {"DATABASE_URL": "postgres://h:notaport/db"},
    "DATABASE_URL-unsupported": {"DATABASE_URL": "mysql://user@h/db"},
    "REDIS_URL": {"REDIS_URL": "http://x"},
    "EMAIL_URL-port": {"EMAIL_URL": "smtp://user@mail.example.com:notaport"},
    "EMAIL_URL-scheme": {"EMAIL_URL": "notascheme://x"},
    "TIME_ZONE": {"TIME_ZONE": "Mars/Olympus"},
    "API_MAX_BODY_BYTES": {"API_MAX_BODY_BYTES": "lots"},
    "SECRET_KEY": {"SECRET_KEY": None, "DEBUG": "false"},
    "NOTIFICATION_ALLOW_PRIVATE_URLS": {"NOTIFICATION_ALLOW_PRIVATE_URLS": "sometimes"},
    "NOTIFICATION_HISTORY_DAYS": {"NOTIFICATION_HISTORY_DAYS": "0"},
    "REPRICE_HISTORY_DAYS": {"REPRICE_HISTORY_DAYS": "a while"},
}
DEFAULTS = ("NOTIFICATION_ALLOW_PRIVATE_URLS", "NOTIFICATION_HISTORY_DAYS", "REPRICE_HISTORY_DAYS")


@pytest.fixture(scope="module")
def startups(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Every start-up case at once, in parallel (each is a fresh interpreter)."""
    var_dir = tmp_path_factory.mktemp("startup")
    cases = {name: (["-c", SETUP], child_env(var_dir, **env)) for name, env in MALFORMED.items()}
    cases["valid"] = (["-c", SETUP], child_env(var_dir))
    print_defaults = f"; from django.conf import settings; print([getattr(settings, name) for name in {DEFAULTS}])"
    cases["defaults"] = (["-c", SETUP + print_defaults], child_env(var_dir))
    cases["deploy-check"] = (
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        child_env(var_dir, DEBUG="false", SECRET_KEY=secrets.token_urlsafe(64), ALLOWED_HOSTS="example.com"),
    )
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        futures = {name: pool.submit(python, args, env) for name, (args, env) in cases.items()}
        return {name: future.result() for name, future in futures.items()}


def test_it_starts_with_valid_settings(startups):
    result = startups["valid"]
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("case", list(MALFORMED))
def test_it_refuses_to_start_with_a_malformed_variable_and_names_it(startups, case):
    variable = case.split("-")[0]
    result = startups[case]
    assert result.returncode != 0, f"started with {MALFORMED[case]}"
    message = error_message(result.stderr)
    assert variable in message, f"the error does not name {variable}:\n{message}"


def test_channel_urls_must_be_public_and_history_is_kept_90_days_by_default(startups):
    result = startups["defaults"]
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[False, 90, 90]"


def test_it_passes_the_deployment_checks_in_production_configuration(startups):
    result = startups["deploy-check"]
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


# --- SQLite with concurrent writers ----------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import django
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmcost_project.settings")
    django.setup()
    from django.db import transaction
    from metrics.schemas import EventIn
    from metrics.services import usage_events_record
    from teams.access import authenticate_token
    from teams.models import Team

    name, raw, signals, rounds = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    Team.objects.exists()  # connected
    (signals / f"{name}.ready").touch()
    while not (signals / "go").exists():  # both writers begin together
        time.sleep(0.002)
    for i in range(rounds):
        token = authenticate_token(raw)
        with transaction.atomic():  # read, then write, in one transaction
            Team.objects.filter(organization=token.organization).count()
            Team.objects.create(organization=token.organization, alias=f"{name}-{i}")
        event = EventIn(model="m", prompt_tokens=10, request_id=f"{name}-{i}", team_alias=f"{name}-{i}")
        recorded, rejected = usage_events_record(token=token, events=[(0, event)])
        assert not rejected and not recorded[0].duplicate
    print("finished", name)
    """
)
SETUP_WORLD = textwrap.dedent(
    """
    import os, django
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmcost_project.settings")
    django.setup()
    from django.core.management import call_command
    from teams.services import organization_create, token_create
    call_command("migrate", interactive=False, verbosity=0)
    organization = organization_create(slug="shared")
    print(token_create(organization=organization, can_ingest=True)[1])
    """
)


def test_it_lets_two_processes_write_to_one_sqlite_database_at_once(tmp_path):
    database = tmp_path / "shared.sqlite3"
    env = child_env(tmp_path, DATABASE_URL=f"sqlite:///{database}")
    made = python(["-c", SETUP_WORLD], env)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]

    rounds = 120
    signals = tmp_path / "signals"
    signals.mkdir()
    writers = {
        name: subprocess.Popen([sys.executable, "-c", WRITER, name, token, str(signals), str(rounds)], cwd=ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in ("w1", "w2")
    }
    deadline = time.monotonic() + 60
    while not all((signals / f"{name}.ready").exists() for name in writers):
        assert time.monotonic() < deadline and all(w.poll() is None for w in writers.values()), "a writer died"
        time.sleep(0.01)
    (signals / "go").touch()
    for name, writer in writers.items():
        stdout, stderr = writer.communicate(timeout=180)
        assert "database is locked" not in stderr, f"{name}: {stderr[-2000:]}"
        assert writer.returncode == 0, f"{name}: {stderr[-3000:]}"
        assert f"finished {name}" in stdout

    with closing(sqlite3.connect(database)) as db:
        events = db.execute("SELECT count(*) FROM metrics_usageevent").fetchone()[0]
        teams = db.execute("SELECT count(*) FROM teams_team WHERE alias LIKE 'w_-%'").fetchone()[0]
    assert (events, teams) == (2 * rounds, 2 * rounds)
