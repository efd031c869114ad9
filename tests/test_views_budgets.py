"""The budgets pages: owners and admins list budgets with their spend, and create, edit and delete them."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.test import Client

from billing.models import Budget, BudgetAlert
from billing.overview import budget_rows
from billing.selectors import budget_status
from billing.services import budget_create
from metrics.rollups import dirty_rollups_refresh
from teams.services import member_add, team_create, token_revoke
from tests.budget_support import costing, ingest, private_cache
from tests.web_support import client_for, counting, page_settings, users_by_role

LIST = "/o/acme/budgets/"
NEW = "/o/acme/budgets/new/"


@pytest.fixture(autouse=True)
def _page_settings(settings):
    page_settings(settings)
    private_cache(settings)


@pytest.fixture
def users(world):
    return users_by_role(world)


@pytest.fixture
def budgets(world):
    return {
        "org": budget_create(organization=world.acme, amount_usd=Decimal(100), period="monthly", name="Acme monthly"),
        "team": budget_create(organization=world.acme, team=world.chatbot, amount_usd=Decimal(10), period="weekly",
                              is_hard=True),
        "user": budget_create(organization=world.acme, team=world.chatbot, user_id="alice@acme.test",
                              amount_usd=Decimal(2), period="daily"),
        "globex": budget_create(organization=world.globex, amount_usd=Decimal(5), period="monthly", name="Globex"),
    }


def edit_url(budget: Budget, org: str = "acme") -> str:
    return f"/o/{org}/budgets/{budget.pk}/edit/"


def delete_url(budget: Budget, org: str = "acme") -> str:
    return f"/o/{org}/budgets/{budget.pk}/delete/"


def snapshot() -> list[tuple]:
    return list(Budget.objects.order_by("pk").values_list(
        "pk", "organization_id", "team_id", "user_id", "end_user", "token_id", "name", "amount_usd", "period",
        "thresholds", "is_hard", "on_error", "extra_emails", "is_active",
    ))


def form(**overrides) -> dict:
    data = {"name": "", "team": "", "user_id": "", "end_user": "", "token": "", "amount_usd": "25",
            "period": "monthly", "on_error": "allow", "thresholds": "50, 80, 100", "extra_emails": "",
            "is_active": "on"}
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


# --- who gets in ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "status"),
    [("owner", 200), ("admin", 200), ("member", 403), ("viewer", 403), ("outsider", 404), ("anonymous", 302)],
)
def test_it_shows_every_budget_page_to_owners_and_admins_only(world, users, budgets, role, status):
    client = client_for(users[role])
    for url in (LIST, NEW, edit_url(budgets["team"]), delete_url(budgets["team"])):
        response = client.get(url)
        assert response.status_code == status, url
        if role == "anonymous":
            assert response["Location"] == f"/accounts/login/?next={url}"


@pytest.mark.parametrize(("role", "status"), [("member", 403), ("viewer", 403), ("outsider", 404)])
def test_it_refuses_writes_from_readers_and_outsiders(world, users, budgets, role, status):
    before = snapshot()
    client = client_for(users[role])
    assert client.post(NEW, form(name="x")).status_code == status
    assert client.post(edit_url(budgets["team"]), form(amount_usd="1")).status_code == status
    assert client.post(delete_url(budgets["team"])).status_code == status
    assert snapshot() == before


def test_it_does_not_reach_another_organizations_budget(world, budgets):
    before = snapshot()
    client = client_for(world.owner)
    assert client.get(edit_url(budgets["globex"])).status_code == 404
    assert client.post(edit_url(budgets["globex"]), form(amount_usd="1")).status_code == 404
    assert client.post(delete_url(budgets["globex"])).status_code == 404
    # globex's owner naming acme's budget under globex: not found.
    assert client_for(world.outsider).post(delete_url(budgets["team"], "globex")).status_code == 404
    assert snapshot() == before


# --- the list -------------------------------------------------------------------------------------


def test_it_lists_the_budgets_with_spend_limit_and_progress(world, budgets):
    ingest(world.ingest, costing("1.5", team_alias="chatbot", user_id="alice@acme.test"),
           costing("0.5", team_alias="search", user_id="bob@acme.test"))
    body = client_for(world.owner).get(LIST).content.decode()
    assert "Acme monthly" in body and "Globex" not in body
    assert "$2.00" in body  # the organization's spend
    assert "$1.50" in body  # chatbot's and alice's
    assert "$100.00" in body and "$10.00" in body
    assert 'role="progressbar"' in body
    assert 'aria-valuenow="75"' in body  # alice: $1.50 of $2
    assert "hard" in body


def test_it_explains_budgets_when_there_are_none(world):
    body = client_for(world.owner).get(LIST).content.decode()
    assert "No budgets yet" in body
    assert f'href="{NEW}"' in body


def test_it_shows_the_same_spend_as_the_budget_check(world, budgets):
    """The page sums many budgets at once; each figure must equal `budget_status` for that budget."""
    more = [
        budget_create(organization=world.acme, team=world.search, amount_usd=Decimal(3), period="monthly"),
        budget_create(organization=world.acme, team=world.search, user_id="bob@acme.test", amount_usd=Decimal(1),
                      period="weekly"),
        budget_create(organization=world.acme, team=world.search, user_id="nobody", amount_usd=Decimal(1),
                      period="monthly"),
    ]
    ingest(world.ingest, costing("1", team_alias="chatbot", user_id="alice@acme.test"),
           costing("0.5", team_alias="chatbot", user_id="bob@acme.test"),
           costing("2", team_alias="search", user_id="bob@acme.test"))
    dirty_rollups_refresh()  # some spend from rollups...
    ingest(world.ingest, costing("0.25", team_alias="search", user_id="bob@acme.test"))  # ...some raw
    acme_budgets = list(
        Budget.objects.filter(organization=world.acme).select_related("organization", "team").order_by("pk")
    )
    assert len(acme_budgets) == 6 and {b.pk for b in more} <= {b.pk for b in acme_budgets}
    for row in budget_rows(acme_budgets):
        expected = budget_status(row.budget, row.status.now, fresh=True)
        assert row.status.spend == expected.spend, row.budget
        assert row.status.period_start == expected.period_start
    spends = {row.budget.pk: row.status.spend for row in budget_rows(acme_budgets)}
    assert spends[budgets["org"].pk] == Decimal("3.75")
    assert spends[budgets["team"].pk] == Decimal("1.5")
    assert spends[budgets["user"].pk] == Decimal("1")
    assert spends[more[1].pk] == Decimal("2.25")
    assert spends[more[2].pk] == 0


def test_it_lists_many_budgets_in_a_bounded_number_of_queries(world, budgets):
    ingest(world.ingest, costing("1", team_alias="chatbot", user_id="alice@acme.test"))
    client = client_for(world.owner)

    def add_budgets(first: int, last: int) -> None:
        for i in range(first, last):
            team = team_create(organization=world.acme, alias=f"team-{i}")
            budget_create(organization=world.acme, team=team, amount_usd=Decimal(5 + i),
                          period=["daily", "weekly", "monthly"][i % 3])
            budget_create(organization=world.acme, team=team, user_id=f"user-{i}", amount_usd=Decimal(1),
                          period=["daily", "weekly", "monthly"][i % 3])

    add_budgets(0, 3)  # every period has organization, team and user budgets
    client.get(LIST)
    with counting() as few:
        assert client.get(LIST).status_code == 200
    add_budgets(3, 15)
    with counting() as many:
        body = client.get(LIST).content.decode()
    assert body.count('role="progressbar"') == 3 + 30
    # Each period is summed once per grouping, whatever the number of budgets.
    assert len(many) == len(few) <= 40


# --- create, edit, delete -------------------------------------------------------------------------


def test_it_creates_an_organization_budget(world, users):
    response = client_for(users["admin"]).post(NEW, form(
        name="All of acme", amount_usd="250.5", period="weekly", thresholds="90, 50,100",
        extra_emails="finance@acme.test, cto@acme.test", is_hard="on",
    ), follow=True)
    assert response.redirect_chain == [(LIST, 302)]
    budget = Budget.objects.get(name="All of acme")
    assert budget.organization == world.acme and budget.team is None and budget.user_id == ""
    assert budget.amount_usd == Decimal("250.5") and budget.period == "weekly"
    assert budget.thresholds == [50, 90, 100]
    assert budget.extra_emails == ["finance@acme.test", "cto@acme.test"]
    assert budget.is_hard and budget.is_active
    assert "created" in response.content.decode()


def test_it_creates_team_and_user_budgets(world):
    client = client_for(world.owner)
    client.post(NEW, form(name="team", team=world.search.pk))
    client.post(NEW, form(name="user", team=world.chatbot.pk, user_id="alice@acme.test", is_active=None))
    team_budget, user_budget = Budget.objects.get(name="team"), Budget.objects.get(name="user")
    assert team_budget.team == world.search and team_budget.user_id == ""
    assert user_budget.team == world.chatbot and user_budget.user_id == "alice@acme.test"
    assert not user_budget.is_active


def test_it_prefills_the_team_from_the_team_page_link(world):
    body = client_for(world.owner).get(f"{NEW}?team={world.chatbot.pk}").content.decode()
    assert f'<option value="{world.chatbot.pk}" selected>' in body


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"amount_usd": "0"}, "amount_usd", "above zero"),
        ({"amount_usd": "-3"}, "amount_usd", "above zero"),
        ({"amount_usd": "abc"}, "amount_usd", "Enter a number"),
        ({"amount_usd": ""}, "amount_usd", "required"),
        ({"amount_usd": "1.1234567"}, "amount_usd", "decimal places"),
        ({"amount_usd": "1e13"}, "amount_usd", ""),
        ({"thresholds": "50, abc"}, "thresholds", "not a whole number"),
        ({"thresholds": "0, 50"}, "thresholds", "between 1 and 1000"),
        ({"thresholds": "5000"}, "thresholds", "between 1 and 1000"),
        ({"extra_emails": "ok@acme.test, nope"}, "extra_emails", "Not an email address: nope"),
        ({"user_id": "alice"}, "user_id", "needs a team"),
        ({"period": "yearly"}, "period", "valid choice"),
        ({"team": "999999"}, "team", "valid choice"),
        ({"end_user": "c" * 256}, "end_user", "at most 255 characters"),
        ({"token": "999999"}, "token", "valid choice"),
        ({"token": "lc_abc"}, "token", "valid choice"),
        ({"on_error": "maybe"}, "on_error", "valid choice"),
        ({"on_error": ""}, "on_error", "required"),
    ],
)
def test_it_shows_validation_errors_next_to_their_fields(world, overrides, field, message):
    before = snapshot()
    response = client_for(world.owner).post(NEW, form(**overrides))
    assert response.status_code == 200
    body = response.content.decode()
    error = body.split(f'id="id_{field}_error">')[1].split("</p>")[0]
    assert message in error
    widget = re.search(rf'<(?:input|select)[^>]*id="id_{field}"[^>]*>', body).group(0)
    assert 'aria-invalid="true"' in widget
    assert re.search(rf'aria-describedby="[^"]*id_{field}_error', widget)  # the error is tied to its field
    assert 'role="alert"' in body
    assert snapshot() == before


def test_it_refuses_a_team_of_another_organization(world):
    before = snapshot()
    body = client_for(world.owner).post(NEW, form(team=world.globex_chatbot.pk)).content.decode()
    assert "valid choice" in body.split('id="id_team_error">')[1]
    assert snapshot() == before


def test_it_edits_a_budget(world, budgets):
    budget = budgets["team"]
    client = client_for(world.owner)
    body = client.get(edit_url(budget)).content.decode()
    assert 'value="10"' in body and "50, 80, 100" in body  # the form starts from the budget
    response = client.post(edit_url(budget), form(
        name="Chatbot", team=world.search.pk, amount_usd="12.25", period="monthly", thresholds="75",
        is_hard=None, is_active=None,
    ))
    assert response.status_code == 302
    budget.refresh_from_db()
    assert (budget.name, budget.team, budget.amount_usd, budget.period) == (
        "Chatbot", world.search, Decimal("12.25"), "monthly")
    assert budget.thresholds == [75] and not budget.is_hard and not budget.is_active


def test_it_keeps_a_budget_unchanged_when_the_edit_is_invalid(world, budgets):
    before = snapshot()
    response = client_for(world.owner).post(edit_url(budgets["user"]), form(team="", user_id="alice@acme.test"))
    assert "needs a team" in response.content.decode()
    assert snapshot() == before


def test_it_asks_before_deleting_and_deletes_by_post(world, budgets):
    budget = budgets["team"]
    BudgetAlert.objects.create(budget=budget, period_start=budget.created_at, threshold=50, spend_usd=5, limit_usd=10)
    client = client_for(world.owner)
    body = client.get(delete_url(budget)).content.decode()
    assert "Delete budget" in body and "1 alert" in body
    assert Budget.objects.filter(pk=budget.pk).exists()
    response = client.post(delete_url(budget))
    assert response.status_code == 302 and response["Location"] == LIST
    assert not Budget.objects.filter(pk=budget.pk).exists()
    assert not BudgetAlert.objects.filter(budget_id=budget.pk).exists()


def test_it_needs_the_csrf_token_to_delete(world, budgets):
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.owner)
    assert client.post(delete_url(budgets["team"])).status_code == 403
    assert Budget.objects.filter(pk=budgets["team"].pk).exists()


def test_it_limits_an_admin_who_sees_some_teams_to_budgets_of_those_teams(world, budgets):
    limited = member_add(organization=world.acme, email="lim@acme.test", role="admin", teams=[world.search]).user
    client = client_for(limited)
    search_budget = budget_create(organization=world.acme, team=world.search, amount_usd=Decimal(7), period="monthly",
                                  name="Search budget")
    body = client.get(LIST).content.decode()
    assert "Search budget" in body and "Acme monthly" not in body
    assert client.get(edit_url(budgets["team"])).status_code == 404  # chatbot's
    assert client.get(edit_url(budgets["org"])).status_code == 404  # the whole organization's
    before = snapshot()
    response = client.post(NEW, form(name="wide"))
    assert "This field is required" in response.content.decode().split('id="id_team_error">')[1]
    client.post(NEW, form(name="other team", team=world.chatbot.pk))
    assert snapshot() == before
    client.post(NEW, form(name="mine", team=world.search.pk))
    assert Budget.objects.get(name="mine").team == world.search
    assert client.post(delete_url(search_budget)).status_code == 302


# --- end user and token budgets -------------------------------------------------------------------


def row_of(body: str, marker: str) -> str:
    """The one table row (or budget card) of a page that contains `marker`."""
    rows = [row for row in re.split(r"<tr|<article", body) if marker in row]
    assert len(rows) == 1, (marker, len(rows))
    return rows[0]


def test_it_creates_end_user_and_token_budgets_and_lists_them_with_their_spend(world):
    client = client_for(world.owner)
    token = world.tokens["ingest"]
    assert client.post(NEW, form(end_user=" customer-7 ", amount_usd="10")).status_code == 302
    assert client.post(NEW, form(token=token.pk, amount_usd="20", is_hard="on", on_error="deny")).status_code == 302
    end_user_budget, token_budget = Budget.objects.filter(organization=world.acme).order_by("pk")
    assert (end_user_budget.end_user, end_user_budget.token, end_user_budget.team) == ("customer-7", None, None)
    assert end_user_budget.on_error == "allow"
    assert (token_budget.token, token_budget.end_user, token_budget.team) == (token, "", None)
    assert token_budget.is_hard and token_budget.on_error == "deny"

    ingest(world.ingest, costing("0.5", end_user="customer-7"), costing("0.25", end_user="customer-8"))
    ingest(world.both, costing("1.25", end_user="customer-7"), costing("4"))
    body = client.get(LIST).content.decode()
    end_user_row = row_of(body, 'class="badge end-user"')
    assert "end user</span>" in end_user_row and "customer-7" in end_user_row
    assert "organization</span>" not in end_user_row
    assert "$1.75" in end_user_row and "$10.00" in end_user_row  # customer-7's spend, with either token
    token_row = row_of(body, 'class="badge token"')
    assert f"ingest <code class=\"nowrap\">{token.display_prefix}…</code>" in token_row
    assert "organization</span>" not in token_row
    assert "$0.75" in token_row and "$20.00" in token_row  # everything sent with the ingest token
    assert world.ingest not in body and world.ingest.split("_", 2)[2] not in body  # never the secret


def test_it_names_end_user_and_token_budgets_of_a_team_on_the_team_page(world):
    budget_create(organization=world.acme, team=world.chatbot, end_user="customer-7", amount_usd=Decimal(4),
                  period="monthly")
    budget_create(organization=world.acme, team=world.chatbot, token=world.tokens["pinned"], amount_usd=Decimal(8),
                  period="monthly")
    ingest(world.pinned, costing("0.5", end_user="customer-7"), costing("1"))
    ingest(world.ingest, costing("2", team_alias="chatbot", end_user="customer-7"),
           costing("16", team_alias="search", end_user="customer-7"))
    body = client_for(world.member).get("/o/acme/teams/chatbot/").content.decode()
    end_user_card = row_of(body, 'class="badge end-user"')
    assert "customer-7</span> · team chatbot" in end_user_card
    assert "$2.50" in end_user_card and "$4.00" in end_user_card  # customer-7 within chatbot only
    token_card = row_of(body, 'class="badge token"')
    assert f"pinned <code class=\"nowrap\">{world.tokens['pinned'].display_prefix}…</code> · team chatbot" in token_card
    assert "$1.50" in token_card and "$8.00" in token_card


@pytest.mark.parametrize(("role", "status"), [("member", 403), ("viewer", 403), ("outsider", 404)])
def test_it_lets_only_managers_create_end_user_and_token_budgets(world, users, role, status):
    data = form(end_user="customer-7", token=world.tokens["both"].pk, on_error="deny")
    assert client_for(users[role]).post(NEW, data).status_code == status
    assert not Budget.objects.exists()
    assert client_for(world.owner).post(NEW, data).status_code == 302
    budget = Budget.objects.get()
    assert (budget.end_user, budget.token, budget.on_error) == ("customer-7", world.tokens["both"], "deny")


def test_it_offers_only_the_organizations_active_tokens_by_name_and_prefix(world):
    token_revoke(token=world.tokens["read"])
    body = client_for(world.owner).get(NEW).content.decode()
    token_select = re.search(r'<select[^>]*id="id_token".*?</select>', body, re.S).group(0)
    for name in ("ingest", "both", "pinned"):
        token = world.tokens[name]
        assert f'<option value="{token.pk}">{name} ({token.display_prefix}…)</option>' in token_select
    assert f'value="{world.tokens["read"].pk}"' not in token_select  # revoked
    assert f'value="{world.tokens["globex_token"].pk}"' not in token_select
    for raw in (world.ingest, world.both, world.pinned, world.read):
        assert raw.split("_", 2)[2] not in body


@pytest.mark.parametrize("name", ["globex_token", "read"])
def test_it_refuses_a_token_of_another_organization_or_a_revoked_one(world, name):
    token_revoke(token=world.tokens["read"])
    before = snapshot()
    response = client_for(world.owner).post(NEW, form(token=world.tokens[name].pk))
    assert response.status_code == 200
    assert "valid choice" in response.content.decode().split('id="id_token_error">')[1].split("</p>")[0]
    assert snapshot() == before


def test_it_edits_end_user_token_and_on_error(world):
    budget = budget_create(organization=world.acme, end_user="customer-7", token=world.tokens["both"],
                           amount_usd=Decimal(5), period="daily", is_hard=True, on_error="deny")
    client = client_for(world.owner)
    body = client.get(edit_url(budget)).content.decode()
    assert re.search(r'<input[^>]*name="end_user"[^>]*value="customer-7"', body)
    assert f'<option value="{world.tokens["both"].pk}" selected>' in body
    assert '<option value="deny" selected>' in body
    data = {"end_user": "customer-7", "token": world.tokens["both"].pk, "period": "daily", "is_hard": "on"}
    assert client.post(edit_url(budget), form(**data, amount_usd="6", on_error="deny")).status_code == 302
    budget.refresh_from_db()
    assert (budget.amount_usd, budget.on_error, budget.end_user, budget.token) == (
        Decimal(6), "deny", "customer-7", world.tokens["both"])
    data.update(end_user="customer-8", token=world.tokens["ingest"].pk)
    assert client.post(edit_url(budget), form(**data, on_error="allow")).status_code == 302
    budget.refresh_from_db()
    assert (budget.on_error, budget.end_user, budget.token) == ("allow", "customer-8", world.tokens["ingest"])
    assert client.post(edit_url(budget), form(end_user="", token="")).status_code == 302
    budget.refresh_from_db()
    assert (budget.end_user, budget.token, budget.scope) == ("", None, "organization")


def test_it_keeps_a_budgets_revoked_token_when_editing_it(world):
    budget = budget_create(organization=world.acme, token=world.tokens["both"], amount_usd=Decimal(5),
                           period="daily")
    token = world.tokens["both"]
    token_revoke(token=token)
    client = client_for(world.owner)
    body = client.get(edit_url(budget)).content.decode()
    assert f'<option value="{token.pk}" selected>both ({token.display_prefix}…), revoked' in body
    assert client.post(edit_url(budget), form(token=token.pk, amount_usd="7")).status_code == 302
    budget.refresh_from_db()
    assert budget.token == token and budget.amount_usd == Decimal(7)
    assert "revoked</span>" in row_of(client.get(LIST).content.decode(), 'class="badge token"')
    assert client.post(NEW, form(token=token.pk)).status_code == 200  # not for a new budget


def test_it_limits_an_admin_who_sees_some_teams_to_end_user_and_token_budgets_of_those_teams(world):
    limited = member_add(organization=world.acme, email="lim@acme.test", role="admin", teams=[world.chatbot]).user
    client = client_for(limited)
    body = client.get(NEW).content.decode()
    assert f'value="{world.tokens["pinned"].pk}"' in body  # pinned to chatbot
    assert f'value="{world.tokens["ingest"].pk}"' not in body  # every team's: not theirs to limit
    before = snapshot()
    response = client.post(NEW, form(end_user="customer-7")).content.decode()
    assert "This field is required" in response.split('id="id_team_error">')[1]  # no organization-wide budget
    response = client.post(NEW, form(team=world.chatbot.pk, token=world.tokens["ingest"].pk)).content.decode()
    assert "valid choice" in response.split('id="id_token_error">')[1]
    assert client.post(NEW, form(team=world.search.pk, end_user="customer-7")).status_code == 200
    assert snapshot() == before
    assert client.post(NEW, form(team=world.chatbot.pk, end_user="customer-7", token=world.tokens["pinned"].pk,
                                 name="mine")).status_code == 302
    mine = Budget.objects.get(name="mine")
    assert (mine.team, mine.end_user, mine.token) == (world.chatbot, "customer-7", world.tokens["pinned"])
