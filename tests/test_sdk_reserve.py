"""The SDK's reservations (reserve, release, the reservation block) and check_budget's end_user,
against a real server: gunicorn on the test database (tests/live_server.py), as in tests/test_sdk.py.

Budgets are monthly hard budgets made with billing.services.budget_create; events are made now, so
everything is in the current period. The server reads spend afresh for every check and reservation.
"""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import pytest
from metrics_client import AsyncMetricsClient, MetricsClientError, MetricsValidationError, SyncMetricsClient

from billing.models import Budget, Reservation
from billing.services import budget_create
from metrics.models import UsageEvent
from tests.live_server import FaultProxy, LiveServer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

RESERVE, RELEASE = "/api/v1/budget/reserve", "/api/v1/budget/release"
# test-model (conftest): 2 USD in, 8 USD out per million tokens; 1000 in + 500 out = 0.006 USD.
CALL = {"model": "test-model", "prompt_tokens": 1000, "output_tokens": 500}
CALL_COST = Decimal("0.006")
QUICK = {"backoff_base": 0.05, "backoff_max": 0.3}


@pytest.fixture
def server(world):
    with LiveServer(extra_env={"RESERVE_SPEND_CACHE_SECONDS": "0"}) as live:
        yield live


@pytest.fixture
def make_client():
    made = []

    def make(base_url: str, api_key: str, **options) -> SyncMetricsClient:
        client = SyncMetricsClient(base_url=base_url, api_key=api_key, **{"flush_interval": 60.0, **QUICK, **options})
        made.append(client)
        return client

    yield make
    for client in made:
        client.close(timeout=2)


def hard_budget(organization, amount: str, **scope) -> Budget:
    return budget_create(organization=organization, amount_usd=Decimal(amount), period="monthly", is_hard=True,
                         **scope)


def is_generated_id(value: str) -> bool:
    return len(value) == 32 and uuid.UUID(hex=value).hex == value


# --- reserve ----------------------------------------------------------------------------------------------


def test_it_reserves_what_fits_a_hard_budget_and_refuses_the_rest(world, server, make_client):
    hard_budget(world.acme, "1.00", team=world.chatbot)
    client = make_client(server.url, world.ingest)

    first = client.reserve("chatbot", amount=Decimal("0.60"), user_id="alice")
    assert first["allowed"] is True and first["degraded"] is False
    assert first["amount"] == Decimal("0.6") and first["expires_at"]
    held = Reservation.objects.get(pk=first["reservation_id"])
    assert (held.amount, held.state, held.user_id, held.request_id) == (Decimal("0.6"), "open", "alice",
                                                                         first["request_id"])
    assert is_generated_id(first["request_id"])

    refused = client.reserve("chatbot", amount="0.50", ttl_seconds=60)
    assert refused["allowed"] is False and refused.get("reservation_id") is None
    [team] = refused["budgets"]
    assert (team["reserved"], team["remaining"], team["hard"]) == (Decimal("0.6"), Decimal("0.4"), True)
    assert is_generated_id(refused["request_id"]) and refused["request_id"] != first["request_id"]
    assert client.reserve("chatbot", amount="0.40")["allowed"] is True  # reaching the limit exactly fits
    assert Reservation.objects.count() == 2

    # A Decimal is sent digit for digit: as a JSON number the server would read it as the float 555893.5338531733.
    exact = Decimal("555893.5338531732")
    answer = client.reserve("search", amount=exact)  # search has no budget: allowed
    assert Reservation.objects.get(pk=answer["reservation_id"]).amount == exact
    # Priced by the server from the model and token counts.
    priced = client.reserve("search", model="test-model", prompt_tokens=1000, max_output_tokens=500,
                            request_id="priced-1")
    assert priced["request_id"] == "priced-1"
    assert Reservation.objects.get(request_id="priced-1").amount == CALL_COST


def test_a_retried_reserve_holds_once_and_the_calls_event_settles_it(world, server, make_client):
    hard_budget(world.acme, "1.00", team=world.chatbot)
    with FaultProxy(server.url) as proxy:
        client = make_client(proxy.url, world.ingest)
        # The server takes the hold but the answer is lost; then a load balancer without its backend.
        proxy.fail(("drop",), ("status", 503, {}))
        answer = client.reserve("chatbot", amount="0.30")
        assert [outcome for _, _, outcome in proxy.seen] == ["dropped after 200", "503", "200"]

    assert answer["allowed"] is True
    assert client.stats.retries == 2
    [reservation] = Reservation.objects.all()  # three sends, one hold: the generated request_id
    assert str(reservation.pk) == answer["reservation_id"]
    assert reservation.request_id == answer["request_id"] and is_generated_id(answer["request_id"])

    # The call's event, sent with the reservation's request_id, settles the hold at its real cost.
    client = make_client(server.url, world.ingest)
    tracked = client.track_request(**CALL, team_alias="chatbot", request_id=answer["request_id"], wait=True)
    assert tracked["status"] == "success"
    reservation.refresh_from_db()
    assert (reservation.state, reservation.cost) == ("settled", CALL_COST)
    budget = client.check_budget("chatbot")["budgets"][0]
    assert (budget["spend"], budget["remaining"]) == (CALL_COST, Decimal(1) - CALL_COST)


def test_a_malformed_argument_raises_naming_the_field_in_every_mode(world, server, make_client):
    client = make_client(server.url, world.ingest)  # not strict: reservations raise all the same
    local = [
        ({}, ["amount"]),
        ({"amount": "0.01", "model": "test-model"}, ["amount"]),
        ({"model": "test-model", "prompt_tokens": 10}, ["max_output_tokens"]),
        ({"amount": "a dollar"}, ["amount"]),
        ({"amount": float("nan")}, ["amount"]),
        ({"model": "test-model", "prompt_tokens": "10", "max_output_tokens": 10}, ["prompt_tokens"]),
        ({"amount": "0.01", "end_user": 7}, ["end_user"]),
        ({"amount": "0.01", "ttl_seconds": 1.5}, ["ttl_seconds"]),
    ]
    for arguments, fields in local:
        with pytest.raises(MetricsValidationError) as caught:
            client.reserve("chatbot", **arguments)
        assert list(caught.value.errors) == fields, arguments
        assert caught.value.status_code is None  # refused here, before sending
    with pytest.raises(MetricsValidationError) as caught:
        client.release(None)
    assert list(caught.value.errors) == ["reservation_id"]
    assert server.requests("POST", RESERVE) == [] and server.requests("POST", RELEASE) == []

    # What only the server knows (ranges, prices) comes back as its 400, naming the field.
    for arguments, field in [({"amount": "0.01", "ttl_seconds": 3601}, "ttl_seconds"),
                             ({"amount": "-1"}, "amount"),
                             ({"model": "no-such-model", "prompt_tokens": 1, "max_output_tokens": 1}, "model")]:
        with pytest.raises(MetricsValidationError) as caught:
            client.reserve("chatbot", **arguments)
        assert caught.value.status_code == 400 and field in caught.value.errors, arguments
    with pytest.raises(MetricsValidationError) as caught:
        client.release("not-a-uuid")
    assert caught.value.status_code == 400 and "reservation_id" in caught.value.errors
    assert Reservation.objects.count() == 0


# --- release ---------------------------------------------------------------------------------------------


def test_release_frees_the_hold_and_an_unknown_reservation_is_a_404(world, server, make_client):
    hard_budget(world.acme, "1.00", team=world.chatbot)
    client = make_client(server.url, world.ingest, strict=True)
    held = client.reserve("chatbot", amount="0.80")
    assert client.reserve("chatbot", amount="0.50")["allowed"] is False

    assert client.release(held["reservation_id"]) == {"reservation_id": held["reservation_id"], "released": True,
                                                      "state": "released"}
    assert Reservation.objects.get(pk=held["reservation_id"]).state == "released"
    assert client.reserve("chatbot", amount="0.50")["allowed"] is True
    # Released already: nothing more to free. A UUID object does as well as its text.
    again = client.release(uuid.UUID(held["reservation_id"]))
    assert (again["released"], again["state"]) == (False, "released")

    with pytest.raises(MetricsClientError) as caught:
        client.release(str(uuid.uuid4()))
    assert caught.value.status_code == 404 and not isinstance(caught.value, MetricsValidationError)
    outsider = make_client(server.url, world.globex_token)
    with pytest.raises(MetricsClientError) as caught:  # another organization's: the same 404
        outsider.release(held["reservation_id"])
    assert caught.value.status_code == 404


# --- the reservation block -------------------------------------------------------------------------------


def test_the_reservation_block_releases_on_failure_unless_the_event_was_tracked(world, server, make_client):
    hard_budget(world.acme, "1.00", team=world.chatbot)
    client = make_client(server.url, world.ingest)

    with pytest.raises(TimeoutError), client.reservation("chatbot", amount="0.70") as failed:
        assert failed["allowed"] is True
        raise TimeoutError("the LLM did not answer")
    assert Reservation.objects.get(pk=failed["reservation_id"]).state == "released"

    with pytest.raises(ValueError), client.reservation("chatbot", amount="0.70") as made:
        client.track_request(**CALL, team_alias="chatbot", request_id=made["request_id"])
        raise ValueError("the answer could not be parsed")  # after the call: its event settles the hold
    assert Reservation.objects.get(pk=made["reservation_id"]).state == "open"
    assert client.flush(timeout=30)
    assert Reservation.objects.get(pk=made["reservation_id"]).state == "settled"

    with client.reservation("chatbot", amount="0.10") as done:
        pass  # no exception: the hold is left for its event (or its expiry)
    assert Reservation.objects.get(pk=done["reservation_id"]).state == "open"
    with pytest.raises(KeyError), client.reservation("chatbot", amount="5") as refused:
        assert refused["allowed"] is False
        raise KeyError("refused: nothing to release")
    assert server.requests("POST", RELEASE) == [200]  # the first block's release only


# --- check_budget's end user -----------------------------------------------------------------------------


def test_end_user_is_sent_by_check_budget_and_reserve(world, server, make_client):
    hard_budget(world.acme, "0.006", end_user="customer-7")
    client = make_client(server.url, world.ingest)
    client.track_request(**CALL, team_alias="chatbot", end_user="customer-7", wait=True)  # spends it all

    spent = client.check_budget("chatbot", end_user="customer-7")
    assert spent["allowed"] is False
    assert [(b["scope"], b["spend"]) for b in spent["budgets"]] == [("end_user", CALL_COST)]
    assert client.check_budget("chatbot", end_user="customer-8")["allowed"] is True
    assert client.check_budget("chatbot", user_id="alice")["allowed"] is True  # no end user: not bound

    assert client.reserve("chatbot", amount="0.001", end_user="customer-7")["allowed"] is False
    answer = client.reserve("chatbot", amount="0.001", end_user="customer-8", user_id="alice")
    assert answer["allowed"] is True
    held = Reservation.objects.get(pk=answer["reservation_id"])
    assert (held.end_user, held.user_id) == ("customer-8", "alice")


# --- the async twin --------------------------------------------------------------------------------------


def test_the_async_client_reserves_releases_and_checks_like_the_sync_one(world, server):
    hard_budget(world.acme, "1.00", team=world.chatbot)
    hard_budget(world.acme, "0.50", end_user="customer-7")

    async def main():
        async with AsyncMetricsClient(base_url=server.url, api_key=world.ingest, flush_interval=60.0) as client:
            first = await client.reserve("chatbot", amount=Decimal("0.40"), end_user="customer-7")
            too_much = await client.reserve("chatbot", amount="0.20", end_user="customer-7")
            other_end_user = await client.reserve("chatbot", amount="0.20", end_user="customer-8")
            checks = [await client.check_budget("chatbot", end_user=end_user) for end_user in ("customer-7", "other")]
            released = await client.release(other_end_user["reservation_id"])
            with pytest.raises(MetricsClientError) as unknown:
                await client.release(str(uuid.uuid4()))
            with pytest.raises(MetricsValidationError) as malformed:
                await client.reserve("chatbot", model="test-model", max_output_tokens=10)
            with pytest.raises(asyncio.CancelledError):
                async with client.reservation("chatbot", amount="0.10") as cancelled:
                    raise asyncio.CancelledError  # the gateway's client went away
            tracked = await client.track_request(**CALL, team_alias="chatbot", request_id=first["request_id"],
                                                 wait=True)
        return first, too_much, other_end_user, checks, released, unknown.value, malformed.value, cancelled, tracked

    first, too_much, other_end_user, checks, released, unknown, malformed, cancelled, tracked = asyncio.run(main())

    assert first["allowed"] is True and is_generated_id(first["request_id"])
    assert too_much["allowed"] is False  # the end user's 0.50 has 0.10 left
    assert other_end_user["allowed"] is True
    assert [sorted(b["scope"] for b in check["budgets"]) for check in checks] == [["end_user", "team"], ["team"]]
    assert released == {"reservation_id": other_end_user["reservation_id"], "released": True, "state": "released"}
    assert unknown.status_code == 404
    assert list(malformed.errors) == ["prompt_tokens"]
    assert Reservation.objects.get(pk=cancelled["reservation_id"]).state == "released"
    assert tracked["status"] == "success"
    settled = Reservation.objects.get(pk=first["reservation_id"])
    assert (settled.state, settled.cost, settled.end_user) == ("settled", CALL_COST, "customer-7")
    assert UsageEvent.objects.get(request_id=first["request_id"]).cost == CALL_COST
