"""`manage.py create_budget`: the operator's way to set a limit for an organization, a team or a user."""

from __future__ import annotations

from decimal import Decimal
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


def only_budget() -> Budget:
    return Budget.objects.select_related("organization", "team").get()


def test_it_creates_an_organization_budget_with_the_default_thresholds(world):
    output = run("acme", "--amount", "250", "--period", "monthly")
    budget = only_budget()
    assert budget.organization == world.acme
    assert budget.team is None and budget.user_id == ""
    assert budget.amount_usd == Decimal(250)
    assert budget.period == Budget.Period.MONTHLY
    assert budget.thresholds == [50, 80, 100]
    assert budget.is_hard is False
    assert budget.extra_emails == []
    assert budget.is_active
    assert f"Created budget {budget.pk}" in output


def test_it_creates_a_hard_team_budget_with_thresholds_and_extra_recipients(world):
    run(
        "acme",
        "--team",
        "chatbot",
        "--amount",
        "12.50",
        "--period",
        "weekly",
        "--thresholds",
        "90,25,100,25",
        "--hard",
        "--email",
        "finance@acme.test",
        "--email",
        "cto@acme.test",
        "--name",
        "chatbot weekly",
    )
    budget = only_budget()
    assert (budget.organization, budget.team) == (world.acme, world.chatbot)
    assert budget.amount_usd == Decimal("12.5")
    assert budget.period == Budget.Period.WEEKLY
    assert budget.thresholds == [25, 90, 100]  # sorted, once each
    assert budget.is_hard is True
    assert budget.extra_emails == ["finance@acme.test", "cto@acme.test"]
    assert budget.name == "chatbot weekly"


def test_it_creates_a_daily_budget_for_one_user_within_a_team(world):
    run("acme", "--team", "search", "--user", "alice@acme.test", "--amount", "5", "--period", "daily")
    budget = only_budget()
    assert (budget.team, budget.user_id, budget.period) == (world.search, "alice@acme.test", "daily")


def test_it_finds_the_team_within_the_named_organization(world):
    # Both organizations have a team called "chatbot".
    run("globex", "--team", "chatbot", "--amount", "5", "--period", "daily")
    budget = only_budget()
    assert (budget.organization, budget.team) == (world.globex, world.globex_chatbot)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["initech", "--amount", "5", "--period", "daily"], "initech"),
        (["acme", "--team", "billing", "--amount", "5", "--period", "daily"], "billing"),
        (["acme", "--user", "alice@acme.test", "--amount", "5", "--period", "daily"], "team"),
        (["acme", "--amount", "5", "--period", "yearly"], "yearly"),
        (["acme", "--period", "daily"], "--amount"),
        (["acme", "--amount", "5"], "--period"),
    ],
    ids=["unknown-org", "unknown-team", "user-without-team", "bad-period", "no-amount", "no-period"],
)
def test_it_refuses_an_unknown_organization_or_team_and_incomplete_arguments(world, args, message):
    with pytest.raises(CommandError, match=message):
        run(*args)
    assert not Budget.objects.exists()


def test_it_does_not_take_a_team_from_another_organization(world):
    world.globex_chatbot.alias = "globex-only"
    world.globex_chatbot.save()
    with pytest.raises(CommandError, match="globex-only"):
        run("acme", "--team", "globex-only", "--amount", "5", "--period", "daily")
    assert not Budget.objects.exists()


@pytest.mark.parametrize(
    "amount",
    ["ten", "", "1,5", "0", "-5", "0.00", "NaN", "sNaN", "Infinity", "-Infinity", "1e20", "0.0000001"],
)
def test_it_refuses_an_amount_that_is_not_a_positive_dollar_figure(world, amount):
    with pytest.raises(CommandError):
        run("acme", "--amount", amount, "--period", "daily")
    assert not Budget.objects.exists()


@pytest.mark.parametrize("thresholds", ["50,abc", "50.5", "0", "-5", "1001", "50,0", "", ","])
def test_it_refuses_bad_thresholds(world, thresholds):
    with pytest.raises(CommandError):
        run("acme", "--amount", "5", "--period", "daily", "--thresholds", thresholds)
    assert not Budget.objects.exists()


@pytest.mark.parametrize("address", ["not-an-email", "finance@", "@acme.test", "a b@acme.test", ""])
def test_it_refuses_a_bad_email_address(world, address):
    with pytest.raises(CommandError, match="--email"):
        run("acme", "--amount", "5", "--period", "daily", "--email", "ok@acme.test", "--email", address)
    assert not Budget.objects.exists()
