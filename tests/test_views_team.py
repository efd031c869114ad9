"""The teams list and a team's page: spend this month, the budgets that apply, top users and models, alerts."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.models import BudgetAlert
from billing.services import budget_create
from metrics.rollups import dirty_rollups_refresh
from teams.services import member_add, team_create
from tests.budget_support import costing, ingest
from tests.web_support import client_for, counting, page_settings, users_by_role

TEAMS = "/o/acme/teams/"
CHATBOT = "/o/acme/teams/chatbot/"


@pytest.fixture(autouse=True)
def _page_settings(settings):
    page_settings(settings)


@pytest.fixture
def users(world):
    return users_by_role(world)


@pytest.fixture
def spend(world):
    ingest(
        world.ingest,
        costing("1.5", team_alias="chatbot", user_id="alice@acme.test"),
        costing("0.5", team_alias="chatbot", user_id="bob@acme.test", model="test-model-mini"),
        costing("2", team_alias="search", user_id="carol@acme.test"),
    )
    ingest(world.globex_token, costing("7", team_alias="chatbot", user_id="mallory@globex.test"))


@pytest.fixture
def budgets(world):
    return {
        "org": budget_create(organization=world.acme, amount_usd=Decimal(40), period="monthly", name="Acme-wide"),
        "chatbot": budget_create(organization=world.acme, team=world.chatbot, amount_usd=Decimal(4), period="monthly",
                                 name="Chatbot budget"),
        "alice": budget_create(organization=world.acme, team=world.chatbot, user_id="alice@acme.test",
                               amount_usd=Decimal(1), period="weekly", name="Alice cap"),
        "search": budget_create(organization=world.acme, team=world.search, amount_usd=Decimal(9), period="monthly",
                                name="Search budget"),
        "globex": budget_create(organization=world.globex, amount_usd=Decimal(9), period="monthly", name="Globex-wide"),
    }


# --- the teams list -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "status"),
    [("owner", 200), ("admin", 200), ("member", 200), ("viewer", 200), ("outsider", 404), ("anonymous", 302)],
)
def test_it_shows_the_teams_list_to_every_reader(world, users, role, status):
    response = client_for(users[role]).get(TEAMS)
    assert response.status_code == status
    if role == "anonymous":
        assert response["Location"] == f"/accounts/login/?next={TEAMS}"


def test_it_lists_visible_teams_with_this_months_spend(world, spend):
    body = client_for(world.member).get(TEAMS).content.decode()
    assert f'href="{CHATBOT}"' in body and 'href="/o/acme/teams/search/"' in body
    assert "$2.00" in body  # each of chatbot and search
    assert "$4.00" in body  # the total
    assert "$7.00" not in body  # globex's
    viewer_body = client_for(world.viewer).get(TEAMS).content.decode()
    assert f'href="{CHATBOT}"' in viewer_body and "/o/acme/teams/search/" not in viewer_body


def test_it_links_the_teams_list_from_the_navigation(world):
    body = client_for(world.viewer).get(CHATBOT).content.decode()
    assert f'<a href="{TEAMS}" aria-current="page">Teams</a>' in body


def test_it_counts_spend_from_rollups_and_recent_events_alike(world, spend):
    dirty_rollups_refresh()
    ingest(world.ingest, costing("0.25", team_alias="chatbot"))
    body = client_for(world.owner).get(TEAMS).content.decode()
    assert "$2.25" in body and "$4.25" in body


def test_it_lists_many_teams_in_a_bounded_number_of_queries(world, spend):
    client = client_for(world.owner)
    client.get(TEAMS)
    with counting() as few:
        assert client.get(TEAMS).status_code == 200
    for i in range(20):
        team = team_create(organization=world.acme, alias=f"team-{i}")
        budget_create(organization=world.acme, team=team, amount_usd=Decimal(5), period="monthly")
    ingest(world.ingest, *[costing("0.5", team_alias=f"team-{i}") for i in range(20)])
    with counting() as many:
        body = client.get(TEAMS).content.decode()
    assert "team-19" in body
    assert len(many) == len(few) <= 12


# --- a team's page --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "status"),
    [("owner", 200), ("admin", 200), ("member", 200), ("viewer", 200), ("outsider", 404), ("anonymous", 302)],
)
def test_it_shows_a_team_to_every_reader_of_it(world, users, role, status):
    response = client_for(users[role]).get(CHATBOT)
    assert response.status_code == status
    if role == "anonymous":
        assert response["Location"] == f"/accounts/login/?next={CHATBOT}"


def test_it_hides_teams_outside_the_readers_scope(world):
    assert client_for(world.viewer).get("/o/acme/teams/search/").status_code == 404  # limited to chatbot
    assert client_for(world.owner).get("/o/acme/teams/nosuchteam/").status_code == 404
    assert client_for(world.outsider).get("/o/globex/teams/search/").status_code == 404  # acme's alias


def test_it_shows_the_budgets_that_apply_with_spend_and_projection(world, spend, budgets):
    body = client_for(world.owner).get(CHATBOT).content.decode()
    for name in ("Acme-wide", "Chatbot budget", "Alice cap"):
        assert name in body
    assert "Search budget" not in body and "Globex-wide" not in body
    assert "$4.00</strong> of $40.00" in body  # the organization's spend
    assert "$2.00</strong> of $4.00" in body  # chatbot's
    assert "$1.50</strong> of $1.00" in body  # alice is over
    assert 'class="progress over"' in body
    assert body.count('role="progressbar"') == 3
    assert "Projected by" in body


def test_it_shows_organization_budgets_only_to_readers_who_see_every_team(world, spend, budgets):
    body = client_for(world.viewer).get(CHATBOT).content.decode()
    assert "Chatbot budget" in body and "Alice cap" in body
    assert "Acme-wide" not in body and "$4.00</strong> of $40.00" not in body
    assert "Organization-wide budgets are shown to members who can see every team." in body


def test_it_shows_top_users_and_models_of_the_team_this_month(world, spend):
    body = client_for(world.member).get(CHATBOT).content.decode()
    users_table = body.split('id="users-heading"')[1].split("</table>")[0]
    assert users_table.index("alice@acme.test") < users_table.index("bob@acme.test")
    assert "carol@acme.test" not in users_table and "mallory" not in users_table
    models_table = body.split('id="models-heading"')[1].split("</table>")[0]
    assert "$1.50" in users_table and "$0.50" in users_table
    # test-model-mini is priced (and named) as test-model by its match pattern
    assert "test-model" in models_table and "$2.00" in models_table and "$7.00" not in models_table


def test_it_says_what_to_do_when_a_team_has_no_data(world):
    body = client_for(world.owner).get(CHATBOT).content.decode()
    assert "No requests this month" in body
    assert "No budget applies to this team yet" in body and 'href="/o/acme/budgets/new/?team=' in body
    assert "No alert has been sent" in body
    reader_body = client_for(world.member).get(CHATBOT).content.decode()
    assert "Owners and admins can set one" in reader_body and "/budgets/new/" not in reader_body


def test_it_shows_the_alerts_of_those_budgets_newest_first(world, budgets):
    now = timezone.now()
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)

    def alert(budget, threshold, age_hours, **fields):
        return BudgetAlert.objects.create(
            budget=budget, period_start=start, threshold=threshold, spend_usd=Decimal(threshold) / 10,
            limit_usd=budget.amount_usd, created_at=now - timedelta(hours=age_hours), **fields,
        )

    alert(budgets["chatbot"], 50, 5, sent_at=now, recipients=["owner@acme.test", "finance@acme.test"])
    alert(budgets["chatbot"], 80, 1, attempts=2, last_error="SMTPConnectError: refused")
    alert(budgets["org"], 100, 3, sent_at=now, recipients=["owner@acme.test"])
    alert(budgets["search"], 90, 2, sent_at=now)
    alert(budgets["globex"], 70, 2, sent_at=now)
    body = client_for(world.owner).get(CHATBOT).content.decode()
    table = body.split('id="alerts-heading"')[1].split("</table>")[0]
    thresholds = [int(cell) for cell in re.findall(r'<td class="num">(\d+)%</td>', table)]
    assert thresholds == [80, 100, 50]  # newest first; not search's (90) nor globex's (70)
    assert "retrying" in table and "to 2 people" in table
    viewer_table = client_for(world.viewer).get(CHATBOT).content.decode().split('id="alerts-heading"')[1]
    assert "100%" not in viewer_table.split("</table>")[0]  # the organization's budget is not theirs to see


def test_it_shows_a_team_in_a_bounded_number_of_queries(world, spend, budgets):
    client = client_for(world.owner)
    client.get(CHATBOT)
    with counting() as few:
        assert client.get(CHATBOT).status_code == 200
    now = timezone.now()
    for i in range(10):
        budget = budget_create(organization=world.acme, team=world.chatbot, user_id=f"user-{i}",
                               amount_usd=Decimal(1 + i), period=["daily", "weekly", "monthly"][i % 3])
        for threshold in (50, 80, 100):
            BudgetAlert.objects.create(budget=budget, period_start=now, threshold=threshold, spend_usd=1,
                                       limit_usd=budget.amount_usd)
    budget_create(organization=world.acme, team=world.chatbot, amount_usd=Decimal(3), period="daily")
    budget_create(organization=world.acme, amount_usd=Decimal(3), period="weekly")
    client.get(CHATBOT)
    with counting() as many:
        body = client.get(CHATBOT).content.decode()
    assert body.count('role="progressbar"') == 15
    # Grows with the periods in use (at most three), not with the budgets. How many queries one
    # period costs depends on the time of day (whole days, whole hours and a raw tail, or fewer).
    assert len(many) <= 75 and len(many) - len(few) <= 27
    budget_create(organization=world.acme, team=world.chatbot, user_id="one-more", amount_usd=Decimal(1),
                  period="daily")
    with counting() as more:
        client.get(CHATBOT)
    assert len(more) == len(many)


def test_it_shows_a_limited_admin_only_their_teams(world):
    limited = member_add(organization=world.acme, email="lim@acme.test", role="admin", teams=[world.search]).user
    client = client_for(limited)
    assert client.get("/o/acme/teams/search/").status_code == 200
    assert client.get(CHATBOT).status_code == 404
