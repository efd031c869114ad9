"""GET /api/v1/budget/check (what a gateway asks before each LLM call) and the budget part of ingest answers.

Budgets here are monthly in UTC and events are made now, so every event is in the current period.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from billing.models import Budget
from billing.selectors import budget_check, budget_period
from billing.services import budget_create
from metrics.models import UsageEvent
from teams.services import token_create, token_revoke
from tests.budget_support import costing, fast_passwords, ingest, private_cache
from tests.conftest import api

URL = "/api/v1/budget/check"


@pytest.fixture(autouse=True)
def _fresh_spend(settings):
    fast_passwords(settings)
    private_cache(settings)
    settings.BUDGET_SPEND_CACHE_SECONDS = 0


def money(value) -> Decimal:
    return Decimal(str(value))


def check(token: str | None, **params):
    return api(token).get(URL, params)


def ok(token: str | None, **params) -> dict:
    response = check(token, **params)
    assert response.status_code == 200, response.content
    return response.json()


def new_budget(organization, amount: str, *, team=None, user_id="", hard=False, name="") -> Budget:
    return budget_create(
        organization=organization,
        team=team,
        user_id=user_id,
        amount_usd=Decimal(amount),
        period="monthly",
        is_hard=hard,
        name=name,
    )


def by_name(body: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in body["budgets"]}


# --- who may ask --------------------------------------------------------------------------------------


def test_it_refuses_a_request_without_a_valid_token(world):
    assert check(None, team_alias="chatbot").status_code == 401
    assert check("lc_00000000_not-a-real-token-at-all", team_alias="chatbot").status_code == 401
    response = api().get(URL, {"team_alias": "chatbot"}, HTTP_AUTHORIZATION=f"Token {world.ingest}")
    assert response.status_code == 401


def test_it_refuses_a_revoked_token(world):
    token_revoke(token=world.tokens["both"])
    response = check(world.both, team_alias="chatbot")
    assert response.status_code == 401
    assert response.json()["status"] == "error"


def test_it_refuses_a_token_with_no_scope(world):
    _, raw = token_create(organization=world.acme, can_ingest=False, can_read=False)
    assert check(raw, team_alias="chatbot").status_code == 403


def test_it_answers_the_ingest_token_and_the_read_token_alike(world):
    new_budget(world.acme, "10", team=world.chatbot, hard=True, name="chatbot")
    ingest(world.ingest, costing("3"))
    answers = [ok(token, team_alias="chatbot") for token in (world.ingest, world.read, world.both)]
    for answer in answers:  # the projection moves with the clock between the three calls
        for budget in answer["budgets"]:
            budget.pop("projected_spend")
    assert answers[0] == answers[1] == answers[2]
    assert answers[0]["allowed"] is True
    assert money(answers[0]["budgets"][0]["spend"]) == Decimal(3)


# --- allowed -----------------------------------------------------------------------------------------


def test_it_allows_below_a_hard_limit_and_refuses_once_it_is_reached_exactly(world):
    new_budget(world.acme, "10", team=world.chatbot, hard=True, name="chatbot")
    assert ok(world.ingest, team_alias="chatbot")["allowed"] is True  # nothing spent yet

    ingest(world.ingest, costing("9.999998"))
    body = ok(world.ingest, team_alias="chatbot")
    assert body["allowed"] is True
    assert money(body["budgets"][0]["remaining"]) == Decimal("0.000002")

    ingest(world.ingest, costing("0.000002"))
    body = ok(world.ingest, team_alias="chatbot")
    assert body["allowed"] is False
    [budget] = body["budgets"]
    assert (budget["allowed"], budget["hard"]) == (False, True)
    assert money(budget["spend"]) == money(budget["limit"]) == Decimal(10)
    assert money(budget["remaining"]) == 0

    ingest(world.ingest, costing("5"))
    body = ok(world.ingest, team_alias="chatbot")
    assert body["allowed"] is False
    assert money(body["budgets"][0]["remaining"]) == 0  # never negative
    assert body["budgets"][0]["percent_used"] == 150.0


def test_it_keeps_allowing_when_only_a_soft_budget_is_reached(world):
    new_budget(world.acme, "10", team=world.chatbot, hard=False, name="soft")
    ingest(world.ingest, costing("15"))
    body = ok(world.read, team_alias="chatbot")
    assert body["allowed"] is True
    [budget] = body["budgets"]
    assert budget["hard"] is False and budget["allowed"] is True
    assert money(budget["spend"]) == Decimal(15)


def test_it_refuses_when_any_applicable_hard_budget_is_reached(world):
    new_budget(world.acme, "100", team=world.chatbot, hard=True, name="team")
    new_budget(world.acme, "10", team=world.chatbot, user_id="alice@acme.test", hard=True, name="alice")
    ingest(world.ingest, costing("10"))
    assert ok(world.ingest, team_alias="chatbot", user_id="alice@acme.test")["allowed"] is False
    assert ok(world.ingest, team_alias="chatbot", user_id="bob@acme.test")["allowed"] is True
    assert ok(world.ingest, team_alias="chatbot")["allowed"] is True


def test_it_applies_the_organization_budget_to_a_team_that_has_no_events_yet(world):
    new_budget(world.acme, "10", hard=True, name="org")
    ingest(world.ingest, costing("10", team_alias="search"))
    for alias in ("chatbot", "brand-new-team"):
        body = ok(world.ingest, team_alias=alias)
        assert body["allowed"] is False
        assert [b["name"] for b in body["budgets"]] == ["org"]
    assert ok(world.ingest)["allowed"] is False


def test_it_ignores_inactive_budgets(world):
    budget = new_budget(world.acme, "10", team=world.chatbot, hard=True, name="off")
    Budget.objects.filter(pk=budget.pk).update(is_active=False)
    ingest(world.ingest, costing("20"))
    body = ok(world.ingest, team_alias="chatbot")
    assert body["allowed"] is True and body["budgets"] == []


# --- what is reported ----------------------------------------------------------------------------------


@pytest.fixture
def budgets(world):
    """Budgets at every level in both organizations, and spend that touches each of them."""
    created = {
        "acme": new_budget(world.acme, "100", name="acme"),
        "chatbot": new_budget(world.acme, "50", team=world.chatbot, name="chatbot"),
        "alice": new_budget(world.acme, "20", team=world.chatbot, user_id="alice@acme.test", name="alice"),
        "bob": new_budget(world.acme, "20", team=world.chatbot, user_id="bob@acme.test", hard=True, name="bob"),
        "search": new_budget(world.acme, "5", team=world.search, hard=True, name="search"),
        "globex": new_budget(world.globex, "1", hard=True, name="globex"),
        "globex-chatbot": new_budget(world.globex, "1", team=world.globex_chatbot, hard=True, name="globex-chatbot"),
    }
    ingest(
        world.ingest,
        costing("4"),  # alice in chatbot
        costing("25", user_id="bob@acme.test"),  # bob in chatbot: over his hard budget
        costing("8", team_alias="search"),  # search: over its hard budget
    )
    ingest(world.globex_token, costing("2"))  # globex's chatbot: over both globex budgets
    return created


def test_it_reports_spend_limit_remaining_and_period_end_of_each_applicable_budget(world, budgets):
    body = ok(world.read, team_alias="chatbot", user_id="alice@acme.test")

    assert body["allowed"] is True
    assert (body["team_alias"], body["user_id"]) == ("chatbot", "alice@acme.test")
    reported = by_name(body)
    assert list(reported) == ["acme", "chatbot", "alice"]
    assert [reported[name]["scope"] for name in reported] == ["organization", "team", "user"]
    _, period_end = budget_period(budgets["acme"], datetime.now(UTC))
    for name, spend, limit in (("acme", "37", "100"), ("chatbot", "29", "50"), ("alice", "4", "20")):
        entry = reported[name]
        assert money(entry["spend"]) == Decimal(spend), name
        assert money(entry["limit"]) == Decimal(limit), name
        assert money(entry["remaining"]) == Decimal(limit) - Decimal(spend), name
        assert datetime.fromisoformat(entry["period_end"]) == period_end, name
        assert entry["period"] == "monthly"
    assert reported["alice"]["user_id"] == "alice@acme.test"
    assert reported["chatbot"]["team_alias"] == "chatbot"


def test_it_reports_nothing_of_other_teams_users_or_organizations(world, budgets):
    for token in (world.ingest, world.read, world.pinned):
        body = ok(token, team_alias="chatbot", user_id="alice@acme.test")
        assert set(by_name(body)) == {"acme", "chatbot", "alice"}
    assert set(by_name(ok(world.read, team_alias="chatbot"))) == {"acme", "chatbot"}
    assert set(by_name(ok(world.read))) == {"acme"}
    assert set(by_name(ok(world.read, user_id="alice@acme.test"))) == {"acme"}  # user budgets live in a team
    body = ok(world.read, team_alias="chatbot", user_id="bob@acme.test")
    assert set(by_name(body)) == {"acme", "chatbot", "bob"} and body["allowed"] is False
    body = ok(world.read, team_alias="search")
    assert set(by_name(body)) == {"acme", "search"} and body["allowed"] is False


def test_it_answers_a_pinned_token_for_its_own_team_only(world, budgets):
    body = ok(world.pinned)  # no alias: the token's team
    assert body["team_alias"] == "chatbot"
    assert set(by_name(body)) == {"acme", "chatbot"}
    body = ok(world.pinned, team_alias="chatbot", user_id="bob@acme.test")
    assert set(by_name(body)) == {"acme", "chatbot", "bob"} and body["allowed"] is False

    for alias in ("search", "brand-new-team"):
        response = check(world.pinned, team_alias=alias)
        assert response.status_code == 404, response.content
        assert "search" not in response.content.decode()


def test_a_pinned_token_is_bound_by_organization_budgets_without_seeing_other_teams_spend(world, budgets):
    hard_org = new_budget(world.acme, "30", hard=True, name="acme-hard")  # $37 spent across teams
    body = ok(world.pinned)
    org = by_name(body)["acme-hard"]
    assert org["allowed"] is False and body["allowed"] is False  # it binds the pinned team too
    assert money(org["limit"]) == Decimal(30) and org["period_end"] and org["hard"] is True
    assert org["spend"] is None and org["remaining"] is None and org["projected_spend"] is None
    assert org["percent_used"] is None
    assert money(by_name(body)["chatbot"]["spend"]) == Decimal(29)  # its own team's spend is shown
    # A token that sees every team reads the organization's spend.
    assert money(by_name(ok(world.read, team_alias="chatbot"))["acme-hard"]["spend"]) == Decimal(37)
    hard_org.delete()


def test_it_never_shows_acme_budgets_to_globex(world, budgets):
    body = ok(world.globex_token, team_alias="chatbot", user_id="alice@acme.test")
    assert set(by_name(body)) == {"globex", "globex-chatbot"}
    assert body["allowed"] is False  # globex spent $2 of $1
    assert money(by_name(body)["globex-chatbot"]["spend"]) == Decimal(2)  # not acme's chatbot spend
    assert set(by_name(ok(world.globex_token, team_alias="search"))) == {"globex"}

    # ...and acme's chatbot is not blocked by globex's exhausted "chatbot" budget.
    body = ok(world.ingest, team_alias="chatbot", user_id="alice@acme.test")
    assert body["allowed"] is True
    assert money(by_name(body)["chatbot"]["spend"]) == Decimal(29)


@pytest.mark.parametrize(
    "params",
    [{"team_alias": "x" * 101}, {"user_id": "u" * 256}, {"team_alias": "chatbot", "user_id": "u" * 256}],
    ids=["alias-too-long", "user-too-long", "user-too-long-with-team"],
)
def test_it_rejects_bad_parameters(world, params):
    response = check(world.ingest, **params)
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["status"] == "error"
    assert set(body["errors"]) == {name for name, value in params.items() if value != "chatbot"}


@pytest.mark.parametrize(
    ("params", "team_limit"),
    [({"team_alias": ""}, "10"), ({"team_alias": "chatbot", "user_id": ""}, "100")],
    ids=["empty-alias", "empty-user"],
)
def test_it_rejects_an_empty_alias_or_user_instead_of_skipping_that_budget(world, params, team_limit):
    # Ingest refuses an empty team_alias; the check must not quietly answer for the whole
    # organization (or the team without the user) and say "allowed" past an exhausted hard budget.
    new_budget(world.acme, team_limit, team=world.chatbot, hard=True, name="chatbot")
    new_budget(world.acme, "10", team=world.chatbot, user_id="alice@acme.test", hard=True, name="alice")
    ingest(world.ingest, costing("10"))
    response = check(world.ingest, **params)
    assert response.status_code == 400, response.content
    assert set(response.json()["errors"]) == {name for name, value in params.items() if value == ""}


def test_it_serves_cached_spend_for_a_few_seconds_per_budget(world, settings):
    settings.BUDGET_SPEND_CACHE_SECONDS = 60
    acme = new_budget(world.acme, "10", team=world.chatbot, hard=True, name="acme-chatbot")
    new_budget(world.globex, "10", team=world.globex_chatbot, hard=True, name="globex-chatbot")
    ingest(world.ingest, costing("4"))
    assert money(ok(world.ingest, team_alias="chatbot")["budgets"][0]["spend"]) == Decimal(4)
    # Globex's figure for its own "chatbot" is its own, not acme's cached one.
    assert money(ok(world.globex_token, team_alias="chatbot")["budgets"][0]["spend"]) == Decimal(0)
    ingest(world.ingest, costing("6"))
    assert money(ok(world.ingest, team_alias="chatbot")["budgets"][0]["spend"]) == Decimal(4)  # cached
    private_cache(settings)  # as if the cached figure had expired
    body = ok(world.ingest, team_alias="chatbot")
    assert money(body["budgets"][0]["spend"]) == Decimal(10) and body["allowed"] is False
    assert acme.pk == body["budgets"][0]["budget_id"]


# --- ingest answers ----------------------------------------------------------------------------------


def test_it_answers_track_with_the_budget_of_the_events_team_and_user(world, budgets):
    response = api(world.ingest).post("/api/v1/metrics/track", costing("1", user_id="alice@acme.test"), format="json")
    assert response.status_code == 200, response.content
    budget = response.json()["budget"]
    assert budget["allowed"] is True
    assert (budget["team_alias"], budget["user_id"]) == ("chatbot", "alice@acme.test")
    assert set(by_name(budget)) == {"acme", "chatbot", "alice"}
    assert money(by_name(budget)["alice"]["spend"]) == Decimal(5)  # includes this event

    response = api(world.ingest).post("/api/v1/metrics/track", costing("1", team_alias="search"), format="json")
    assert response.json()["budget"]["allowed"] is False
    assert set(by_name(response.json()["budget"])) == {"acme", "search"}

    # A pinned token's events land in its team, whatever alias they name.
    response = api(world.pinned).post("/api/v1/metrics/track", costing("1", team_alias="search"), format="json")
    assert response.json()["budget"]["team_alias"] == "chatbot"

    response = api(world.globex_token).post("/api/v1/metrics/track", costing("1"), format="json")
    assert set(by_name(response.json()["budget"])) == {"globex", "globex-chatbot"}


def test_it_stores_and_counts_every_event_even_when_a_hard_budget_is_exhausted(world):
    new_budget(world.acme, "10", team=world.chatbot, hard=True, name="chatbot")
    answers = []
    for usd in ("6", "4", "3", "2"):
        response = api(world.ingest).post("/api/v1/metrics/track", costing(usd), format="json")
        assert response.status_code == 200, response.content
        assert response.json()["status"] == "success"
        answers.append(response.json()["budget"])

    assert [answer["allowed"] for answer in answers] == [True, False, False, False]
    assert [money(answer["budgets"][0]["spend"]) for answer in answers] == [6, 10, 13, 15]
    assert UsageEvent.objects.filter(team=world.chatbot).count() == 4
    body = ok(world.read, team_alias="chatbot")
    assert money(body["budgets"][0]["spend"]) == Decimal(15) and body["allowed"] is False


def test_it_answers_a_batch_with_the_budget_of_each_team_and_keeps_every_event(world, budgets):
    response = api(world.ingest).post(
        "/api/v1/events",
        {"events": [costing("1"), costing("1", team_alias="search"), costing("1", team_alias="search")]},
        format="json",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["accepted"] == 3
    assert set(body["budgets"]) == {"chatbot", "search"}
    assert body["budgets"]["chatbot"]["allowed"] is True
    assert set(by_name(body["budgets"]["chatbot"])) == {"acme", "chatbot"}
    assert body["budgets"]["search"]["allowed"] is False
    assert money(by_name(body["budgets"]["search"])["search"]["spend"]) == Decimal(10)
    assert UsageEvent.objects.filter(team=world.search).count() == 3


def test_with_caching_on_a_call_no_budget_applies_to_costs_no_query(world, settings, django_assert_num_queries):
    settings.BUDGET_SPEND_CACHE_SECONDS = 60
    new_budget(world.acme, "5", team=world.search, user_id="bob")
    budget_check(organization=world.acme, team=world.chatbot, user_id="alice")  # caches the org's budget scopes

    with django_assert_num_queries(0):
        answer = budget_check(organization=world.acme, team=world.chatbot, user_id="carol\nwith odd chars " * 20)

    assert answer["allowed"] is True and answer["budgets"] == []
    # A call a budget applies to is still answered from that budget (and then cached).
    ingest(world.ingest, costing("6.00", team_alias="search", user_id="bob"))
    answer = budget_check(organization=world.acme, team=world.search, user_id="bob")
    assert answer["allowed"] is True  # a soft budget: over, but allowed
    assert [b["spend"] for b in answer["budgets"]] == [Decimal("6.00")]


def test_it_answers_for_the_end_user_and_the_calling_token_too(world):
    from billing.services import budget_create as create

    customer = create(organization=world.acme, end_user="customer-7", amount_usd=Decimal("1"), period="monthly",
                      is_hard=True, name="customer")  # fmt: skip
    create(organization=world.acme, token=world.tokens["ingest"], amount_usd=Decimal("5"), period="monthly",
           is_hard=True, name="gateway")  # fmt: skip
    ingest(world.ingest, costing("1", end_user="customer-7"), costing("2", end_user="customer-8"))
    body = ok(world.ingest, team_alias="chatbot", end_user="customer-7")
    assert set(by_name(body)) == {"customer", "gateway"} and body["allowed"] is False
    assert money(by_name(body)["customer"]["spend"]) == Decimal(1) and body["end_user"] == "customer-7"
    assert money(by_name(body)["gateway"]["spend"]) == Decimal(3)  # every event the token sent
    assert set(by_name(ok(world.ingest, team_alias="chatbot", end_user="customer-8"))) == {"gateway"}
    assert set(by_name(ok(world.read, end_user="customer-7"))) == {"customer"}  # the token budget: not its own
    # A team-limited caller sees that an organization-wide end user budget binds, not its spend.
    pinned = by_name(ok(world.pinned, end_user="customer-7"))["customer"]
    assert pinned["allowed"] is False and pinned["spend"] is None
    assert ok(world.globex_token, end_user="customer-7")["budgets"] == []
    customer.delete()


@pytest.mark.parametrize("team", [None, "chatbot", "search"])
@pytest.mark.parametrize("user_id", [None, "alice"])
@pytest.mark.parametrize("end_user", [None, "customer-7"])
@pytest.mark.parametrize("token", [None, "ingest", "read"])
def test_the_budgets_that_bind_a_caller_are_the_same_in_sql_and_in_python(world, team, user_id, end_user, token):
    """The check's no-budget shortcut decides in Python what `applicable_budgets` filters in SQL."""
    from billing.selectors import BudgetCaller, applicable_budgets

    teams = {"chatbot": world.chatbot, "search": world.search}
    for budget_team in (None, world.chatbot, world.search):
        for budget_user in ("", "alice", "bob"):
            for budget_end_user in ("", "customer-7", "customer-8"):
                for budget_token in (None, world.tokens["ingest"], world.tokens["read"]):
                    if budget_user and budget_team is None:
                        continue
                    Budget.objects.create(organization=world.acme, team=budget_team, user_id=budget_user,
                                          end_user=budget_end_user, token=budget_token, amount_usd=1)  # fmt: skip
    token_id = world.tokens[token].pk if token else None
    caller = BudgetCaller(teams[team].pk if team else None, user_id, end_user, token_id)
    in_sql = applicable_budgets(organization=world.acme, team=teams.get(team or ""), user_id=user_id,
                                end_user=end_user, token_id=token_id)  # fmt: skip
    in_python = [b for b in Budget.objects.filter(organization=world.acme).order_by("id")
                 if caller.binds(b.team_id, b.user_id, b.end_user, b.token_id)]  # fmt: skip
    assert [b.pk for b in in_sql] == [b.pk for b in in_python] and in_sql
