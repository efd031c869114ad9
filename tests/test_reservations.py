"""POST /api/v1/budget/reserve and /release: holds on hard budgets that concurrent gateways cannot overshoot.

Budgets are monthly in UTC and events are made now, so everything is in the current period. The
concurrent tests use real threads, each with its own database connection, so the ledger row locks
(PostgreSQL) or the serialised writers (SQLite) do the work.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import OperationalError, connection

from billing import reservations
from billing.models import Budget, Reservation, ReservationHold
from billing.reservations import reservation_reserve
from billing.services import budget_create
from metrics.models import UsageEvent
from tests.budget_support import costing, fast_passwords, ingest, private_cache
from tests.conftest import api

RESERVE, RELEASE = "/api/v1/budget/reserve", "/api/v1/budget/release"

# Settlement runs when ingest's transaction commits: these tests commit for real.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_spend(settings):
    fast_passwords(settings)
    private_cache(settings)
    settings.BUDGET_SPEND_CACHE_SECONDS = 0
    settings.RESERVE_SPEND_CACHE_SECONDS = 0  # the tests that reuse a spend read say so


def money(value) -> Decimal:
    return Decimal(str(value))


def new_budget(organization, amount: str, *, hard=True, name="", **scope) -> Budget:
    return budget_create(
        organization=organization, amount_usd=Decimal(amount), period="monthly", is_hard=hard, name=name, **scope
    )


def reserve(token: str, **body) -> dict:
    body.setdefault("team_alias", "chatbot")
    response = api(token).post(RESERVE, body, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def by_name(answer: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in answer["budgets"]}


def in_threads(work, n: int):
    """Run work(i) in n threads released together; their results (the first exception re-raised)."""
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list[BaseException] = []

    def run(i):
        try:
            barrier.wait(timeout=30)
            results[i] = work(i)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results


# --- who may ask, and what they may send --------------------------------------------------------------


def test_it_refuses_missing_and_read_only_tokens(world):
    assert api().post(RESERVE, {"amount": "0.01"}, format="json").status_code == 401
    assert api(world.read).post(RESERVE, {"amount": "0.01"}, format="json").status_code == 403
    assert api(world.read).post(RELEASE, {"reservation_id": str(uuid.uuid4())}, format="json").status_code == 403


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "amount"),
        ({"amount": "-1"}, "amount"),
        ({"amount": "abc"}, "amount"),
        ({"amount": "0.01", "model": "test-model"}, "amount"),
        ({"model": "test-model", "prompt_tokens": 10}, "max_output_tokens"),
        ({"model": "no-such-model", "prompt_tokens": 10, "max_output_tokens": 10}, "model"),
        ({"amount": "0.01", "ttl_seconds": 0}, "ttl_seconds"),
        ({"amount": "0.01", "ttl_seconds": 3601}, "ttl_seconds"),
        ({"amount": "0.01", "request_id": "x" * 129}, "request_id"),
        ({"amount": "0.01", "prompt_tokens": -1}, "prompt_tokens"),
    ],
)
def test_it_names_the_field_of_a_malformed_request(world, body, field):
    response = api(world.ingest).post(RESERVE, body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["errors"], response.json()


def test_release_names_a_malformed_id(world):
    response = api(world.ingest).post(RELEASE, {"reservation_id": "nope"}, format="json")
    assert response.status_code == 400
    assert "reservation_id" in response.json()["errors"]


# --- the answer ---------------------------------------------------------------------------------------


def test_without_budgets_it_allows_and_holds_nothing_against_a_budget(world):
    answer = reserve(world.ingest, amount="5")
    assert answer["allowed"] is True and answer["degraded"] is False
    assert answer["budgets"] == []
    assert uuid.UUID(answer["reservation_id"]) and answer["expires_at"]


def test_it_grants_what_fits_and_reports_every_budget(world):
    new_budget(world.acme, "1.00", team=world.chatbot, name="team")
    new_budget(world.acme, "0.10", name="soft org", hard=False)
    first = reserve(world.ingest, amount="0.60")
    assert first["allowed"] is True
    team = by_name(first)["team"]
    assert money(team["spend"]) == 0 and money(team["reserved"]) == money("0.60")
    assert money(team["limit"]) == 1 and money(team["remaining"]) == money("0.40") and team["hard"] is True
    assert team["period_end"].startswith(str(datetime.now(UTC).year)) or team["period_end"]
    second = reserve(world.ingest, amount="0.50")
    assert second["allowed"] is False and "reservation_id" not in second
    # The soft budget is over its limit but never blocks; it is reported with what is held.
    soft = by_name(second)["soft org"]
    assert soft["hard"] is False and money(soft["reserved"]) == money("0.60") and money(soft["remaining"]) == 0
    assert reserve(world.ingest, amount="0.40")["allowed"] is True  # exactly the room left


def test_it_prices_a_model_estimate_with_the_organizations_prices(world):
    new_budget(world.acme, "1.00", team=world.chatbot, name="team")
    # test-model: $2 per million prompt tokens, $8 per million output tokens.
    answer = reserve(world.ingest, model="test-model", prompt_tokens=100_000, max_output_tokens=100_000)
    assert answer["allowed"] is True
    assert money(answer["amount"]) == money("1.0")
    assert reserve(world.ingest, amount="0.000001")["allowed"] is False


def test_a_retried_reserve_returns_the_same_hold(world):
    new_budget(world.acme, "1.00", team=world.chatbot, name="team")
    first = reserve(world.ingest, amount="0.70", request_id="call-1")
    again = reserve(world.ingest, amount="0.70", request_id="call-1")
    assert again["allowed"] is True and again["reservation_id"] == first["reservation_id"]
    assert money(by_name(again)["team"]["reserved"]) == money("0.70")
    assert Reservation.objects.count() == 1


# --- settlement, release, expiry ----------------------------------------------------------------------


def test_the_event_settles_the_hold_at_its_real_cost(world):
    new_budget(world.acme, "1.00", team=world.chatbot, name="team")
    held = reserve(world.ingest, amount="0.80", request_id="call-1")
    assert reserve(world.ingest, amount="0.30")["allowed"] is False
    ingest(world.ingest, costing("0.10", request_id="call-1"))  # cheaper than estimated
    reservation = Reservation.objects.get(pk=held["reservation_id"])
    assert reservation.state == Reservation.State.SETTLED and reservation.cost == money("0.10")
    answer = reserve(world.ingest, amount="0.90")
    assert answer["allowed"] is True
    team = by_name(answer)["team"]
    assert money(team["spend"]) == money("0.10") and money(team["reserved"]) == money("0.90")
    # Settling again (a retried event) changes nothing; the hold is never counted twice.
    retry = api(world.ingest).post("/api/v1/events", {"events": [costing("0.10", request_id="call-1")]}, format="json")
    assert retry.json()["duplicates"] == 1
    assert reserve(world.ingest, amount="0.000001")["allowed"] is False


def test_a_reused_spend_read_still_counts_holds_settled_since(world, settings):
    settings.RESERVE_SPEND_CACHE_SECONDS = 60
    new_budget(world.acme, "1.00", team=world.chatbot, name="team")
    reserve(world.ingest, amount="0.80", request_id="call-1")  # reads the spend: $0
    ingest(world.ingest, costing("0.10", request_id="call-1"))
    answer = reserve(world.ingest, amount="0.90")  # the $0 read again, plus the hold settled since
    assert answer["allowed"] is True
    assert money(by_name(answer)["team"]["spend"]) == 0
    assert reserve(world.ingest, amount="0.000001")["allowed"] is False


def test_an_event_is_stored_even_when_the_budget_is_exhausted(world):
    new_budget(world.acme, "0.10", team=world.chatbot, name="team")
    assert reserve(world.ingest, amount="0.10", request_id="a")["allowed"] is True
    ingest(world.ingest, costing("0.50", request_id="a"), costing("0.50", request_id="b"))
    answer = reserve(world.ingest, amount="0.01")
    assert answer["allowed"] is False and money(by_name(answer)["team"]["spend"]) == 1


def test_release_frees_the_hold_at_once(world):
    new_budget(world.acme, "1.00", team=world.chatbot, name="team")
    held = reserve(world.ingest, amount="1.00")
    assert reserve(world.ingest, amount="0.01")["allowed"] is False
    response = api(world.ingest).post(RELEASE, {"reservation_id": held["reservation_id"]}, format="json")
    assert response.status_code == 200 and response.json()["released"] is True
    assert reserve(world.ingest, amount="1.00")["allowed"] is True
    again = api(world.ingest).post(RELEASE, {"reservation_id": held["reservation_id"]}, format="json")
    assert again.status_code == 200 and again.json() == {**response.json(), "released": False}


def test_another_organizations_reservation_is_not_found_and_untouched(world):
    new_budget(world.acme, "1.00", team=world.chatbot, name="team")
    held = reserve(world.ingest, amount="1.00")
    response = api(world.globex_token).post(RELEASE, {"reservation_id": held["reservation_id"]}, format="json")
    assert response.status_code == 404 and response.json()["status"] == "error"
    assert Reservation.objects.get(pk=held["reservation_id"]).state == Reservation.State.OPEN
    assert reserve(world.ingest, amount="0.01")["allowed"] is False
    # Globex's event with the same request id settles nothing of Acme's.
    ingest(world.globex_token, costing("0.01", request_id="shared-id"))
    assert reserve(world.globex_token, amount="0.01")["allowed"] is True


def test_an_unsettled_hold_expires_by_itself(world):
    new_budget(world.acme, "1.00", team=world.chatbot, name="team")
    token = world.tokens["ingest"]
    now = datetime.now(UTC)
    first = reservation_reserve(token=token, team=world.chatbot, amount=money("1.00"), ttl_seconds=60, now=now)
    assert first["allowed"] is True
    later = now + timedelta(seconds=30)
    assert reservation_reserve(token=token, team=world.chatbot, amount=money("0.01"), now=later)["allowed"] is False
    expired = now + timedelta(seconds=61)
    answer = reservation_reserve(token=token, team=world.chatbot, amount=money("1.00"), now=expired)
    assert answer["allowed"] is True


def test_an_event_after_expiry_counts_once(world):
    new_budget(world.acme, "1.00", team=world.chatbot, name="team")
    token = world.tokens["ingest"]
    now = datetime.now(UTC) - timedelta(seconds=120)
    reservation_reserve(token=token, team=world.chatbot, amount=money("0.50"), request_id="late", ttl_seconds=60,
                        now=now)  # fmt: skip
    ingest(world.ingest, costing("0.40", request_id="late"))
    answer = reserve(world.ingest, amount="0.60")
    assert answer["allowed"] is True and money(by_name(answer)["team"]["spend"]) == money("0.40")


# --- scopes -------------------------------------------------------------------------------------------


def test_organization_team_and_user_limits_all_bind(world):
    new_budget(world.acme, "1.00", name="org")
    new_budget(world.acme, "0.50", team=world.chatbot, name="team")
    new_budget(world.acme, "0.20", team=world.chatbot, user_id="alice", name="alice")
    assert reserve(world.ingest, amount="0.25", user_id="alice")["allowed"] is False  # alice's limit
    answer = reserve(world.ingest, amount="0.20", user_id="alice")
    assert answer["allowed"] is True and set(by_name(answer)) == {"org", "team", "alice"}
    assert reserve(world.ingest, amount="0.30", user_id="bob")["allowed"] is True  # fills the team
    assert reserve(world.ingest, amount="0.01", user_id="carol")["allowed"] is False  # the team's limit
    assert reserve(world.ingest, amount="0.50", team_alias="search")["allowed"] is True  # fills the org
    denied = reserve(world.ingest, amount="0.01", team_alias="search")
    assert denied["allowed"] is False and set(by_name(denied)) == {"org"}
    assert ReservationHold.objects.filter(is_open=True).count() == 3 + 2 + 1


def test_an_end_user_budget_binds_that_end_user_only(world):
    new_budget(world.acme, "0.10", end_user="customer-7", name="customer")
    ingest(world.ingest, costing("0.06", end_user="customer-7"), costing("0.50", end_user="customer-8"))
    answer = reserve(world.ingest, amount="0.05", end_user="customer-7")
    assert answer["allowed"] is False and money(by_name(answer)["customer"]["spend"]) == money("0.06")
    assert reserve(world.ingest, amount="0.04", end_user="customer-7")["allowed"] is True
    assert reserve(world.ingest, amount="5", end_user="customer-8")["budgets"] == []
    assert reserve(world.ingest, amount="5")["budgets"] == []


def test_a_token_budget_binds_what_that_token_reserves(world):
    new_budget(world.acme, "0.10", token=world.tokens["ingest"], name="gateway token")
    held = reserve(world.ingest, amount="0.08", request_id="t-1")
    assert by_name(held)["gateway token"]["scope"] == "token"
    assert reserve(world.ingest, amount="0.05")["allowed"] is False
    assert reserve(world.both, amount="0.05")["budgets"] == []  # another token of the organization
    ingest(world.ingest, costing("0.02", request_id="t-1"))  # the real cost is what counts
    answer = reserve(world.ingest, amount="0.08")
    assert answer["allowed"] is True and money(by_name(answer)["gateway token"]["spend"]) == money("0.02")


def test_a_token_budget_counts_every_event_sent_with_that_token(world):
    """Traffic sent with the token without reserving counts too: events record their token."""
    new_budget(world.acme, "0.10", token=world.tokens["ingest"], name="gateway token")
    ingest(world.ingest, costing("0.07"))  # no reservation
    ingest(world.both, costing("0.50"))  # another token of the organization
    answer = reserve(world.ingest, amount="0.04")
    assert answer["allowed"] is False and money(by_name(answer)["gateway token"]["spend"]) == money("0.07")
    assert reserve(world.ingest, amount="0.03")["allowed"] is True
    assert set(UsageEvent.objects.values_list("api_token_id", flat=True)) == {
        world.tokens["ingest"].pk, world.tokens["both"].pk,
    }  # fmt: skip


def test_a_pinned_token_sees_the_organization_budget_without_its_figures(world):
    new_budget(world.acme, "1.00", name="org")
    new_budget(world.acme, "1.00", team=world.chatbot, name="team")
    answer = reserve(world.pinned, amount="0.10")
    assert answer["allowed"] is True
    assert by_name(answer)["org"]["spend"] is None and by_name(answer)["org"]["reserved"] is None
    assert money(by_name(answer)["team"]["reserved"]) == money("0.10")
    response = api(world.pinned).post(RESERVE, {"amount": "0.1", "team_alias": "search"}, format="json")
    assert response.status_code == 404


# --- when the store is away ---------------------------------------------------------------------------


def _store_down(monkeypatch):
    def fail(*args, **kwargs):
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(reservations, "take_holds", fail)


@pytest.mark.parametrize(("on_error", "allowed"), [("allow", True), ("deny", False)])
def test_a_store_that_is_away_answers_as_the_budget_says(world, monkeypatch, on_error, allowed):
    new_budget(world.acme, "1.00", team=world.chatbot, name="team", on_error=on_error)
    assert reserve(world.ingest, amount="0.10")["allowed"] is True
    _store_down(monkeypatch)
    answer = reserve(world.ingest, amount="0.10")
    assert answer["degraded"] is True and answer["allowed"] is allowed
    assert by_name(answer)["team"]["on_error"] == on_error and by_name(answer)["team"]["spend"] is None


def test_budgets_that_cannot_be_read_answer_with_the_default(world, monkeypatch):
    def fail(**kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(reservations, "applicable_budgets", fail)
    answer = reserve(world.ingest, amount="0.10")
    assert answer == {"allowed": True, "degraded": True, "reservation_id": None, "expires_at": None, "budgets": []}


# --- concurrency --------------------------------------------------------------------------------------

def test_with_spend_reused_a_reservation_is_three_queries_and_its_locked_part_one(world, settings):
    """Token, team, then the locked part: one round trip on PostgreSQL, so the ledger locks are
    never held across the network; SQLite runs the same statements one by one in its one writer."""
    from django.test.utils import CaptureQueriesContext

    settings.RESERVE_SPEND_CACHE_SECONDS = settings.BUDGET_SPEND_CACHE_SECONDS = 60
    new_budget(world.acme, "1.00", name="org")
    new_budget(world.acme, "1.00", team=world.chatbot, name="team")
    new_budget(world.acme, "1.00", team=world.chatbot, hard=False, name="soft")
    reserve(world.ingest, amount="0.01")  # reads and keeps the budgets and their spend
    with CaptureQueriesContext(connection) as queries:
        answer = reserve(world.ingest, amount="0.01")
    assert answer["allowed"] is True and money(by_name(answer)["team"]["reserved"]) == money("0.02")
    locked = [q["sql"] for q in queries.captured_queries if "applying" in q["sql"]]
    if connection.vendor == "postgresql":
        assert len(queries.captured_queries) == 3 and len(locked) == 1 and "FOR UPDATE" in locked[0]
    else:
        assert len(locked) == 4  # ledgers, reservation, holds, answer: the same SQL, statement by statement
    assert ReservationHold.objects.filter(is_open=True).count() == 2 * 3


@pytest.mark.parametrize("spent", ["0", "0.30"])
def test_concurrent_reservations_grant_exactly_what_fits(world, spent):
    new_budget(world.acme, "1.00", team=world.chatbot, name="team")
    if spent != "0":
        ingest(world.ingest, costing(spent))
    # 120 reservations from 40 threads (the test server's connections are shared and bounded);
    # SQLite runs one writer at a time: fewer there, each asking for a larger share.
    threads, each, amount = (40, 3, "0.01") if connection.vendor == "postgresql" else (15, 2, "0.05")
    fits = int((money("1.00") - money(spent)) / money(amount))

    def work(i):
        client = api(world.ingest)
        granted = 0
        for _ in range(each):
            response = client.post(RESERVE, {"team_alias": "chatbot", "amount": amount}, format="json")
            assert response.status_code == 200, response.content
            assert response.json()["degraded"] is False
            granted += response.json()["allowed"]
        return granted

    assert threads * each > fits
    assert sum(in_threads(work, threads)) == fits
    held = sum(h.amount for h in ReservationHold.objects.filter(is_open=True))
    assert held + money(spent) <= money("1.00")


@pytest.mark.parametrize("reuse_seconds", [0, 30])
def test_concurrent_gateways_never_overshoot_with_settlement(world, settings, reuse_seconds):
    """Each gateway reserves, and if allowed ingests its event at a real cost below the estimate."""
    settings.RESERVE_SPEND_CACHE_SECONDS = reuse_seconds
    new_budget(world.acme, "1.00", name="org")
    new_budget(world.acme, "0.60", team=world.chatbot, name="team")
    clients = 30 if connection.vendor == "postgresql" else 16

    def work(i):
        request_id = f"gw-{i}"
        alias = "chatbot" if i % 2 else "search"
        client = api(world.ingest)
        answer = client.post(
            RESERVE, {"team_alias": alias, "amount": "0.04", "request_id": request_id}, format="json"
        ).json()
        assert answer["degraded"] is False, answer
        if answer["allowed"]:
            body = costing("0.03", request_id=request_id, team_alias=alias)
            assert client.post("/api/v1/events", {"events": [body]}, format="json").status_code == 200
        return answer["allowed"]

    granted = sum(in_threads(work, clients))
    spent = sum(e.cost for e in UsageEvent.objects.all())
    team_spent = sum(e.cost for e in UsageEvent.objects.filter(team=world.chatbot))
    assert spent <= money("1.00") and team_spent <= money("0.60")
    assert granted == UsageEvent.objects.count()
    assert not ReservationHold.objects.filter(is_open=True).exists()  # every hold settled


def test_billing_registers_settlement_with_ingest_without_metrics_importing_it():
    from metrics import ingest_hooks

    assert reservations.reservations_settle in ingest_hooks._events_recorded


def test_a_failing_listener_never_costs_an_event(world, monkeypatch):
    from metrics import ingest_hooks

    def broken(organization_id, events):
        raise RuntimeError("listener bug")

    monkeypatch.setattr(ingest_hooks, "_events_recorded", [broken, *ingest_hooks._events_recorded])
    new_budget(world.acme, "1.00", team=world.chatbot, name="team")
    held = reserve(world.ingest, amount="0.50", request_id="kept")
    ingest(world.ingest, costing("0.20", request_id="kept"))
    assert UsageEvent.objects.filter(request_id="kept").exists()
    assert Reservation.objects.get(pk=held["reservation_id"]).state == Reservation.State.SETTLED


def test_budget_pages_and_alerts_show_an_end_user_budgets_own_spend(world):
    from billing.overview import budget_rows
    from billing.selectors import budget_status

    budget = new_budget(world.acme, "1.00", end_user="customer-7", name="customer")
    ingest(world.ingest, costing("0.06", end_user="customer-7"), costing("0.50", end_user="customer-8"))
    assert budget_status(budget, fresh=True).spend == money("0.06")
    budget = Budget.objects.select_related("organization", "team").get(pk=budget.pk)
    assert budget_rows([budget])[0].status.spend == money("0.06")


def test_spend_read_counts_events_stamped_after_the_reservation_began(world):
    """An event stamped after a reservation's `now` but settled before its spend read is counted:
    the read covers the whole period, not only up to `now`."""
    new_budget(world.acme, "1.00", team=world.chatbot, name="team")
    reserve(world.ingest, amount="0.50", request_id="r")
    ingest(world.ingest, costing("0.50", request_id="r"))
    began = datetime.now(UTC) - timedelta(seconds=30)
    answer = reservation_reserve(token=world.tokens["ingest"], team=world.chatbot, amount=money("0.60"), now=began)
    assert answer["allowed"] is False
