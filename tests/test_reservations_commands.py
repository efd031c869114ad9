"""`create_budget --end-user / --token / --on-error`: the new budget scopes from the command line."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from billing.models import Budget
from tests.budget_support import fast_passwords


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    fast_passwords(settings)


def run(*args) -> str:
    out = StringIO()
    call_command("create_budget", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_it_creates_an_end_user_budget(world):
    output = run("acme", "--amount", "5", "--period", "daily", "--hard", "--end-user", "customer-7")
    budget = Budget.objects.get()
    assert budget.end_user == "customer-7" and budget.team is None and budget.scope == "end_user"
    assert budget.on_error == Budget.OnError.ALLOW
    assert "end user customer-7" in output


def test_it_creates_a_token_budget_from_the_prefix_that_denies_when_the_store_is_away(world):
    token = world.tokens["ingest"]
    run("acme", "--amount", "5", "--period", "daily", "--hard", "--token", token.display_prefix, "--on-error", "deny")
    budget = Budget.objects.get()
    assert budget.token == token and budget.scope == "token" and budget.on_error == Budget.OnError.DENY


def test_it_takes_the_whole_token_too(world):
    run("acme", "--amount", "5", "--period", "daily", "--token", world.ingest)
    assert Budget.objects.get().token == world.tokens["ingest"]


def test_it_refuses_another_organizations_token(world):
    with pytest.raises(CommandError, match="No token"):
        run("acme", "--amount", "5", "--period", "daily", "--token", world.tokens["globex_token"].display_prefix)
    assert not Budget.objects.exists()


def test_it_refuses_an_unknown_on_error(world):
    with pytest.raises(CommandError):
        run("acme", "--amount", "5", "--period", "daily", "--on-error", "maybe")
