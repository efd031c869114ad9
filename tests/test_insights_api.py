"""GET /api/v1/insights/what-if and /api/v1/insights/savings, from every side.

Every expected figure is computed here by hand: per event from the price rows' per-million rates
(written out below, never read through the ledger), with the organization's discount applied, and
summed from the `UsageEvent` rows in Python. So each test compares the endpoint against an answer it
did not compute itself.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

import pytest

from billing.models import EPOCH, ModelPrice
from billing.pricing.book import forget_price_book
from billing.pricing.price_lists import discount_create
from metrics.models import UsageEvent
from tests.budget_support import ingest
from tests.conftest import api, event, make_price

WHAT_IF = "/api/v1/insights/what-if"
SAVINGS = "/api/v1/insights/savings"
MILLION = Decimal(1_000_000)
UNIT = Decimal("1e-10")
DISCOUNT = Decimal("0.9")  # acme pays 10 % less than the platform's price, for every model

# USD per million tokens, as the price rows below say (test-model's is the `world` fixture's).
TEST_MODEL = {"input": Decimal(2), "output": Decimal(8), "cache_read": Decimal("0.5")}
CHEAP_MODEL = {"input": Decimal("0.5"), "output": Decimal(1), "cache_read": Decimal("0.1")}
TIER_START = 100_000  # tier-model: a call whose input passes this pays the tier on every token
TIER_MODEL = {"input": (Decimal(1), Decimal(3)), "output": (Decimal(2), Decimal(4))}


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def money(value: Decimal) -> Decimal:
    return value.quantize(UNIT, ROUND_HALF_EVEN)


def flat_cost(rates: dict, prompt: int, output: int, cached: int = 0) -> Decimal:
    """A flat price's charge before the discount: cached input at the cache-read rate, the rest at input."""
    exact = ((prompt - cached) * rates["input"] + cached * rates["cache_read"] + output * rates["output"]) / MILLION
    return money(exact * DISCOUNT)


def tier_cost(prompt: int, output: int) -> Decimal:
    """tier-model has no cache-read rate: cached tokens pay input like the rest."""
    tier = 1 if prompt > TIER_START else 0
    exact = (prompt * TIER_MODEL["input"][tier] + output * TIER_MODEL["output"][tier]) / MILLION
    return money(exact * DISCOUNT)


def dec(value) -> Decimal:
    return Decimal(str(value))


BASE = (datetime.now(UTC) - timedelta(days=2)).replace(hour=12, minute=0, second=0, microsecond=0)


def at(hours: float) -> str:
    return (BASE + timedelta(hours=hours)).isoformat()


@dataclass
class Data:
    window: dict

    def acme(self, **where) -> list[UsageEvent]:
        return list(UsageEvent.objects.filter(organization__slug="acme", timestamp__gte=self.window["start"],
                                              timestamp__lt=self.window["end"], **where))  # fmt: skip


def tier_price() -> ModelPrice:
    tiers = {
        "input_mtok": {"base": "1", "tiers": [{"start": TIER_START, "price": "3"}]},
        "output_mtok": {"base": "2", "tiers": [{"start": TIER_START, "price": "4"}]},
    }
    price = ModelPrice(provider="testprov", model="tier-model", input_per_mtok=Decimal(1), output_per_mtok=Decimal(2),
                       effective_from=EPOCH, extra_prices=tiers, source=ModelPrice.Source.ADMIN)  # fmt: skip
    price.full_clean()
    price.save()
    forget_price_book()
    return price


@pytest.fixture
def data(world) -> Data:
    make_price("cheap-model", input="0.5", output="1", cache_read="0.1")
    tier_price()
    discount_create(organization=world.acme, percent="10", effective_from=EPOCH)
    forget_price_book()
    ingest(
        world.both,
        event(request_id="a1", timestamp=at(0), prompt_tokens=1000, output_tokens=500, cached_tokens=200),
        event(request_id="a2", timestamp=at(1), prompt_tokens=150_000, output_tokens=1000, cached_tokens=50_000),
        event(request_id="a3", timestamp=at(2), team_alias="search", prompt_tokens=50_000, output_tokens=2000,
              cached_tokens=10_000, query_type="rag"),
        event(request_id="a4", timestamp=at(3), prompt_tokens=3000, output_tokens=100, status="error"),
        event(request_id="a5", timestamp=at(4), prompt_tokens=0, output_tokens=0, cache_hit=True),
        event(request_id="a6", timestamp=at(5), prompt_tokens=800, output_tokens=200, cache_hit=True),
        event(request_id="a7", timestamp=at(6), prompt_tokens=TIER_START, output_tokens=100, cached_tokens=90_000,
              is_batched=True, batch_id="b1"),  # at the tier's start, not past it
        event(request_id="a8", timestamp=at(7), team_alias="search", prompt_tokens=4000, output_tokens=4000,
              is_batched=True, batch_id="b2", status="error"),
        event(request_id="c1", timestamp=at(1), model="cheap-model", prompt_tokens=10_000, output_tokens=100,
              cached_tokens=5000, cache_hit=False),
        event(request_id="c2", timestamp=at(2), model="cheap-model", team_alias="search", prompt_tokens=0,
              output_tokens=0, cache_hit=True),
        event(request_id="c3", timestamp=at(3), model="cheap-model", prompt_tokens=90_000, output_tokens=100,
              is_batched=True),  # batched and dearer per token than c1: a negative saving, floored at 0
        event(request_id="u1", timestamp=at(2), model="unpriced-model", response_cost=0.5, prompt_tokens=10,
              output_tokens=10, cache_hit=True),  # cache hit of a model with no paid call: counts 0
        event(request_id="old", timestamp=at(-100), prompt_tokens=500_000, output_tokens=500_000,
              cached_tokens=100_000, status="error"),  # outside the window
    )
    ingest(world.globex_token,
           event(request_id="g1", timestamp=at(1), prompt_tokens=10**6, output_tokens=10**6, cached_tokens=10**5,
                 status="error", is_batched=True),
           event(request_id="g2", timestamp=at(2), cache_hit=True))
    return Data(window={"start": at(-24), "end": at(24)})


def get(path: str, token: str, **params):
    return api(token).get(path, params)


def body_of(response) -> dict:
    assert response.status_code == 200, response.content
    return json.loads(response.content, parse_float=Decimal)


# --- the oracles -----------------------------------------------------------------------------------


def expected_what_if(rows: list[UsageEvent]) -> dict:
    """test-model's calls at tier-model, priced here by hand, per call."""
    actual = sum((row.cost for row in rows), Decimal(0))
    alternative = sum((tier_cost(row.prompt_tokens, row.output_tokens) for row in rows), Decimal(0))
    savings = actual - alternative
    percent = (savings / actual * 100).quantize(Decimal("0.01"), ROUND_HALF_EVEN) if actual else None
    return {"requests": len(rows), "actual_cost": actual, "alternative_cost": alternative, "savings": savings,
            "savings_percent": percent}  # fmt: skip


def expected_savings(rows: list[UsageEvent]) -> dict:
    rates = {"test-model": TEST_MODEL, "cheap-model": CHEAP_MODEL}
    prompt = Decimal(0)
    for row in rows:
        if row.cached_tokens and row.model in rates:
            r = rates[row.model]
            prompt += (flat_cost(r, row.prompt_tokens, row.output_tokens)
                       - flat_cost(r, row.prompt_tokens, row.output_tokens, row.cached_tokens))  # fmt: skip
    per_model: dict[str, list[UsageEvent]] = defaultdict(list)
    for row in rows:
        per_model[row.model].append(row)
    response = batch = Decimal(0)
    for model_rows in per_model.values():
        paid = [row for row in model_rows if not row.cache_hit]
        hits = [row for row in model_rows if row.cache_hit]
        if paid and hits:
            average = sum((row.cost for row in paid), Decimal(0)) / len(paid)
            response += money(average * len(hits)) - sum((row.cost for row in hits), Decimal(0))
        batched = [row for row in paid if row.is_batched]
        unbatched = [row for row in paid if not row.is_batched]
        b_tokens, u_tokens = sum(row.total_tokens for row in batched), sum(row.total_tokens for row in unbatched)
        if b_tokens and u_tokens:
            u_per_1k = sum((row.cost for row in unbatched), Decimal(0)) / u_tokens * 1000
            b_per_1k = sum((row.cost for row in batched), Decimal(0)) / b_tokens * 1000
            batch += max(Decimal(0), money((u_per_1k - b_per_1k) * b_tokens / 1000))
    errors = sum((row.cost for row in rows if row.status == "error"), Decimal(0))
    return {"prompt_cache_saved": prompt, "response_cache_saved": response, "batch_saved": batch,
            "error_spend": errors}  # fmt: skip


def assert_what_if(body: dict, rows: list[UsageEvent]) -> None:
    want = expected_what_if(rows)
    assert body["model"] == "test-model" and body["alternative"] == "tier-model"
    assert body["requests"] == want["requests"]
    for name in ("actual_cost", "alternative_cost", "savings"):
        assert dec(body[name]) == want[name], name
    assert body["savings_percent"] == want["savings_percent"]
    assert body["unpriced_requests"] == 0


def assert_savings(body: dict, rows: list[UsageEvent]) -> None:
    want = expected_savings(rows)
    assert {name: dec(body[name]) for name in want} == want
    assert set(body["method"]) == set(want)


# --- what-if ---------------------------------------------------------------------------------------


def test_the_stored_costs_are_the_hand_prices_with_the_discount(world, data):
    # The oracle's rates are the ledger's: if this fails, so must everything built on it.
    for row in data.acme(model="test-model"):
        assert row.cost == flat_cost(TEST_MODEL, row.prompt_tokens, row.output_tokens, row.cached_tokens), row


def test_what_if_prices_each_call_at_the_alternative_exactly(world, data):
    rows = data.acme(model="test-model")
    assert any(row.prompt_tokens > TIER_START for row in rows), "the data needs a call past the tier"
    assert any(row.cached_tokens for row in rows), "the data needs a cached-token call"
    body = body_of(get(WHAT_IF, world.read, model="test-model", alternative="tier-model", **data.window))
    assert_what_if(body, rows)
    assert body["requests"] == 8
    # Pricing the summed tokens instead would put every token in the tier: the answer is not that.
    summed = tier_cost(sum(r.prompt_tokens for r in rows), sum(r.output_tokens for r in rows))
    assert dec(body["alternative_cost"]) != summed


def test_what_if_from_a_cheaper_model_to_a_dearer_one_is_a_negative_saving(world, data):
    rows = data.acme(model="cheap-model")
    body = body_of(get(WHAT_IF, world.read, model="cheap-model", alternative="test-model", **data.window))
    actual = sum((row.cost for row in rows), Decimal(0))
    alternative = sum((flat_cost(TEST_MODEL, r.prompt_tokens, r.output_tokens, r.cached_tokens) for r in rows),
                      Decimal(0))  # fmt: skip
    assert (body["requests"], dec(body["actual_cost"]), dec(body["alternative_cost"])) == (3, actual, alternative)
    assert dec(body["savings"]) == actual - alternative < 0
    assert body["savings_percent"] == ((actual - alternative) / actual * 100).quantize(Decimal("0.01"))


def test_what_if_of_a_model_without_calls_is_zero_with_a_null_percent(world, data):
    body = body_of(get(WHAT_IF, world.read, model="no-such-model", alternative="tier-model", **data.window))
    assert body["requests"] == 0
    assert dec(body["actual_cost"]) == dec(body["alternative_cost"]) == dec(body["savings"]) == 0
    assert body["savings_percent"] is None


def test_what_if_filters_by_team_query_type_and_range(world, data):
    body = body_of(get(WHAT_IF, world.read, model="test-model", alternative="tier-model", team_alias="search",
                       **data.window))  # fmt: skip
    assert_what_if(body, [r for r in data.acme(model="test-model") if r.team.alias == "search"])
    assert body["requests"] == 2
    body = body_of(get(WHAT_IF, world.read, model="test-model", alternative="tier-model", query_type="rag",
                       **data.window))  # fmt: skip
    assert_what_if(body, data.acme(model="test-model", query_type="rag"))
    assert body["requests"] == 1
    narrow = {"start": at(0.5), "end": at(2.5)}
    body = body_of(get(WHAT_IF, world.read, model="test-model", alternative="tier-model", **narrow))
    assert_what_if(body, [r for r in data.acme(model="test-model") if narrow["start"] <= r.timestamp.isoformat()
                          < narrow["end"]])  # fmt: skip
    assert body["requests"] == 2
    wide = body_of(get(WHAT_IF, world.read, model="test-model", alternative="tier-model",
                       start=at(-200), end=at(24)))  # fmt: skip
    assert wide["requests"] == 9  # the old call too


def test_what_if_leaves_out_calls_the_alternative_had_no_price_for_at_their_moment(world, data):
    make_price("late-model", input="1", output="1", start=BASE + timedelta(hours=3.5))
    body = body_of(get(WHAT_IF, world.read, model="test-model", alternative="late-model", **data.window))
    later = [row for row in data.acme(model="test-model") if row.timestamp >= BASE + timedelta(hours=3.5)]
    assert (body["requests"], body["unpriced_requests"]) == (len(later), 8 - len(later))
    assert dec(body["actual_cost"]) == sum((row.cost for row in later), Decimal(0))
    assert dec(body["alternative_cost"]) == sum(
        (money((row.prompt_tokens + row.output_tokens) / MILLION * DISCOUNT) for row in later), Decimal(0))


# --- savings ---------------------------------------------------------------------------------------


def test_savings_match_the_hand_computations(world, data):
    body = body_of(get(SAVINGS, world.read, **data.window))
    rows = data.acme()
    assert_savings(body, rows)
    want = expected_savings(rows)
    assert all(want[name] > 0 for name in want), want  # every figure is exercised
    # c3 (batched, dearer per 1k tokens than c1) contributes nothing rather than a negative amount
    cheap = data.acme(model="cheap-model")
    c1, c3 = (next(r for r in cheap if r.request_id == rid) for rid in ("c1", "c3"))
    assert c3.cost / c3.total_tokens > c1.cost / c1.total_tokens


def test_prompt_cache_saved_is_the_cached_tokens_at_input_less_cache_read_price(world, data):
    body = body_of(get(SAVINGS, world.read, team_alias="search", **data.window))
    # a3 only: 10,000 cached tokens at (2 - 0.5) per million, less 10 %
    assert dec(body["prompt_cache_saved"]) == money(10_000 * Decimal("1.5") / MILLION * DISCOUNT)


def test_response_cache_saved_values_hits_at_the_models_average_paid_call(world, data):
    paid = [r for r in data.acme(model="test-model") if not r.cache_hit]
    hits = [r for r in data.acme(model="test-model") if r.cache_hit]
    assert len(hits) == 2 and any(hit.cost > 0 for hit in hits)  # a hit's own recorded cost is subtracted
    body = body_of(get(SAVINGS, world.read, **data.window))
    cheap_paid = [r for r in data.acme(model="cheap-model") if not r.cache_hit]
    want = (money(sum((r.cost for r in paid), Decimal(0)) / len(paid) * 2) - sum((r.cost for r in hits), Decimal(0))
            + money(sum((r.cost for r in cheap_paid), Decimal(0)) / len(cheap_paid)))  # fmt: skip
    assert dec(body["response_cache_saved"]) == want


def test_error_spend_is_what_failed_calls_cost(world, data):
    body = body_of(get(SAVINGS, world.read, **data.window))
    a4, a8 = (UsageEvent.objects.get(organization=world.acme, request_id=rid) for rid in ("a4", "a8"))
    assert dec(body["error_spend"]) == a4.cost + a8.cost
    assert a4.cost == flat_cost(TEST_MODEL, 3000, 100)


def test_savings_filter_by_team_and_range(world, data):
    body = body_of(get(SAVINGS, world.read, team_alias="chatbot", **data.window))
    assert_savings(body, [r for r in data.acme() if r.team.alias == "chatbot"])
    narrow = {"start": at(2.5), "end": at(24)}
    body = body_of(get(SAVINGS, world.read, **narrow))
    assert_savings(body, [r for r in data.acme() if r.timestamp.isoformat() >= narrow["start"]])
    empty = body_of(get(SAVINGS, world.read, time_range_hours=1))
    assert all(dec(empty[name]) == 0 for name in expected_savings([]))


# --- who sees what ---------------------------------------------------------------------------------


def test_a_pinned_token_sees_only_its_team(world, data):
    chatbot = [r for r in data.acme() if r.team.alias == "chatbot"]
    assert_savings(body_of(get(SAVINGS, world.pinned, **data.window)), chatbot)
    assert_what_if(body_of(get(WHAT_IF, world.pinned, model="test-model", alternative="tier-model", **data.window)),
                   [r for r in chatbot if r.model == "test-model"])  # fmt: skip
    assert get(SAVINGS, world.pinned, team_alias="search", **data.window).status_code == 404


def test_the_outsider_sees_nothing_of_acme(world, data):
    body = body_of(get(WHAT_IF, world.globex_token, model="test-model", alternative="tier-model", **data.window))
    globex = list(UsageEvent.objects.filter(organization=world.globex))
    assert body["requests"] == 2  # globex's g1 and g2 only
    assert dec(body["actual_cost"]) == sum((row.cost for row in globex), Decimal(0))
    g1 = next(row for row in globex if row.request_id == "g1")
    savings = body_of(get(SAVINGS, world.globex_token, **data.window))
    assert dec(savings["error_spend"]) == g1.cost
    assert get(SAVINGS, world.globex_token, team_alias="search", **data.window).status_code == 404


def test_an_ingest_only_or_missing_token_may_not_read(world, data):
    assert get(SAVINGS, world.ingest).status_code == 403
    assert api().get(SAVINGS).status_code in (401, 403)
    assert get(WHAT_IF, world.ingest, model="test-model", alternative="tier-model").status_code == 403


# --- bad parameters --------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "params", "named"), [
    (WHAT_IF, {"alternative": "tier-model"}, "model"),
    (WHAT_IF, {"model": "test-model"}, "alternative"),
    (WHAT_IF, {"model": "test-model", "alternative": "no-such-model-anywhere"}, "alternative"),
    (WHAT_IF, {"model": "", "alternative": "tier-model"}, "model"),
    (WHAT_IF, {"model": "x" * 201, "alternative": "tier-model"}, "model"),
    (WHAT_IF, {"model": "test-model", "alternative": "tier-model", "end": "yesterday"}, "end"),
    (SAVINGS, {"time_range_hours": "0"}, "time_range_hours"),
    (SAVINGS, {"time_range_hours": str(24 * 367)}, "time_range_hours"),
    (SAVINGS, {"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "start"),
    (SAVINGS, {"start": "1999-12-31T00:00:00Z"}, "start"),
    (SAVINGS, {"team_alias": ""}, "team_alias"),
])  # fmt: skip
def test_a_bad_parameter_is_a_400_naming_it(world, path, params, named):
    response = get(path, world.read, **params)
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["status"] == "error"
    assert list(body["errors"]) == [named], body


def test_a_repeated_parameter_is_a_400_naming_it(world):
    response = api(world.read).get(WHAT_IF + "?model=test-model&model=x&alternative=tier-model")
    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["model"]
