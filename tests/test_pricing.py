"""What an LLM call costs: the arithmetic, effective dates, unpriced models and model-name matching."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from billing.models import EPOCH, ModelPrice
from billing.pricing.book import COST_QUANTUM, Price, PriceBook, forget_price_book, price_book
from billing.pricing.calculate import Usage, cost_of
from billing.pricing.catalog import price_catalog_sync
from metrics.models import UsageEvent
from tests.conftest import api, event, make_price, utc


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # world creates four users; PBKDF2 would make that a second per test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]



def track(token: str, **overrides):
    """POST one event; return (status, decoded body with exact decimals, stored row or None)."""
    body = event(**overrides)
    response = api(token).post("/api/v1/metrics/track", body, format="json")
    data = json.loads(response.content, parse_float=Decimal)
    row = None
    if response.status_code == 200:
        row = UsageEvent.objects.get(request_id=data["request_id"])
    return response.status_code, data, row


def price(input: str, output: str, cache_read: str | None = None, *, key=("p", "m"), start=EPOCH, pk=1,
          cache_write: str | None = None) -> Price:
    return Price.of(
        id=pk, provider=key[0], model=key[1], input_per_mtok=Decimal(input), output_per_mtok=Decimal(output),
        cache_read_per_mtok=None if cache_read is None else Decimal(cache_read),
        cache_write_per_mtok=None if cache_write is None else Decimal(cache_write), effective_from=start,
    )


class Rounded:
    """A cost as events store it: each part at the money columns' precision."""

    def __init__(self, cost):
        self.prompt_cost = cost.input.quantize(COST_QUANTUM)
        self.output_cost = cost.output.quantize(COST_QUANTUM)
        self.total = cost.total.quantize(COST_QUANTUM)


def event_cost(price: Price, **counts) -> Rounded:
    return Rounded(cost_of(price, Usage(**counts)))


# --- event_cost: the arithmetic -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prices", "prompt", "cached", "output", "expected_prompt", "expected_output"),
    [
        # (1234 - 234) × 2.5 + 234 × 1.25 = 2500 + 292.5 → 0.0027925;  567 × 10 → 0.00567
        (("2.5", "10", "1.25"), 1234, 234, 567, "0.0027925", "0.00567"),
        # no cached tokens: 1000 × 2 → 0.002; 500 × 8 → 0.004
        (("2", "8", "0.5"), 1000, 0, 500, "0.002", "0.004"),
        # everything cached: 1000 × 0.5 → 0.0005
        (("2", "8", "0.5"), 1000, 1000, 0, "0.0005", "0"),
        # a very cheap model, one token each: 0.0375 / 1e6 and 0.15 / 1e6
        (("0.0375", "0.15", "0.01"), 1, 0, 1, "0.0000000375", "0.00000015"),
        # an expensive one at the API's token limit: 1e8 × 75 / 1e6 = 7500
        (("15", "75", "1.5"), 0, 0, 100_000_000, "0", "7500"),
        # cache-read price of zero: cached tokens are free
        (("3", "15", "0"), 2000, 1500, 100, "0.0015", "0.0015"),
    ],
)
def test_it_prices_uncached_cached_and_output_tokens_separately(prices, prompt, cached, output, expected_prompt,
                                                                 expected_output):
    cost = event_cost(price(*prices), prompt_tokens=prompt, cached_tokens=cached, output_tokens=output)
    assert cost.prompt_cost == Decimal(expected_prompt)
    assert cost.output_cost == Decimal(expected_output)
    assert cost.total == Decimal(expected_prompt) + Decimal(expected_output)
    assert all(isinstance(v, Decimal) for v in (cost.prompt_cost, cost.output_cost, cost.total))


# --- through the API -------------------------------------------------------------------------------


def test_it_prices_an_event_with_cached_tokens_through_the_api(world):
    # test-model: $2 input, $0.5 cache read, $8 output per million.
    status, data, row = track(world.ingest, prompt_tokens=1000, cached_tokens=400, output_tokens=500)
    assert status == 200, data
    # 600 × 2 + 400 × 0.5 = 1400 → 0.0014;  500 × 8 → 0.004
    assert row.prompt_cost == Decimal("0.0014")
    assert row.output_cost == Decimal("0.004")
    assert row.cost == Decimal("0.0054")
    assert data["cost"] == Decimal("0.0054")
    assert data["priced"] is True and row.is_priced is True
    assert row.price.model == "test-model"


def test_it_charges_cached_tokens_the_input_price_when_no_cache_read_price_is_known(world):
    make_price("nocache-model", input="3", output="6")  # cache_read_per_mtok NULL
    status, data, row = track(world.ingest, model="nocache-model", prompt_tokens=1000, cached_tokens=400,
                              output_tokens=100)
    assert status == 200, data
    # all 1000 prompt tokens at $3 → 0.003; 100 × 6 → 0.0006
    assert row.prompt_cost == Decimal("0.003")
    assert row.output_cost == Decimal("0.0006")
    assert row.cost == Decimal("0.0036")
    assert row.is_priced


def iso(moment) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def test_it_uses_the_price_in_force_when_the_call_was_made(world):
    # A price change ten days ago (events must fall inside the service's raw-event window).
    change = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=10)
    make_price("dated-model", input="10", output="20", start=EPOCH)
    make_price("dated-model", input="1", output="2", start=change)

    _, before, old = track(world.ingest, model="dated-model", timestamp=iso(change - timedelta(seconds=1)),
                           prompt_tokens=1000, output_tokens=1000)
    _, at, exact = track(world.ingest, model="dated-model", timestamp=iso(change),
                         prompt_tokens=1000, output_tokens=1000)
    later = (change + timedelta(days=3, hours=8)).astimezone(timezone.get_fixed_timezone(120))
    _, after, new = track(world.ingest, model="dated-model", timestamp=later.isoformat(),
                          prompt_tokens=1000, output_tokens=1000)

    assert old.cost == Decimal("0.03")  # 1000 × 10 + 1000 × 20
    assert old.price.effective_from == EPOCH
    assert exact.cost == Decimal("0.003")  # the new price starts at its effective_from
    assert new.cost == Decimal("0.003")
    assert new.price.effective_from == change
    assert (before["cost"], at["cost"], after["cost"]) == (Decimal("0.03"), Decimal("0.003"), Decimal("0.003"))


def test_it_does_not_apply_a_future_price_to_an_earlier_call(world):
    # The only known price starts after the call: there was no price then, so the event is unpriced.
    launch = timezone.now() - timedelta(days=5)
    make_price("launched-later", input="5", output="5", start=launch)
    _, data, row = track(world.ingest, model="launched-later", timestamp=iso(launch - timedelta(days=2)))
    assert row.is_priced is False and data["priced"] is False
    assert row.cost == Decimal("0")


def test_it_keeps_an_unpriced_event_flagged_at_the_clients_cost(world):
    status, data, row = track(world.ingest, model="totally-made-up-model", response_cost=0.0123)
    assert status == 200, data
    assert row.is_priced is False and data["priced"] is False
    assert row.price is None
    assert row.cost == Decimal("0.0123") and data["cost"] == Decimal("0.0123")
    assert row.client_cost == Decimal("0.0123")
    assert row.model == "totally-made-up-model"
    assert row.model_requested == "totally-made-up-model"


def test_it_stores_an_unpriced_event_without_a_client_cost_at_zero(world):
    _, data, row = track(world.ingest, model="totally-made-up-model", prompt_tokens=10_000, output_tokens=10_000)
    assert row.is_priced is False and data["priced"] is False
    assert row.cost == Decimal("0") and data["cost"] == Decimal("0")
    assert row.prompt_cost == Decimal("0") and row.output_cost == Decimal("0")
    assert row.client_cost is None


def test_it_counts_unpriced_events_on_the_dashboard(world):
    track(world.ingest, model="totally-made-up-model", response_cost=0.5)
    track(world.ingest)  # priced: 0.006
    response = api(world.read).get("/api/v1/dashboard/metrics")
    assert response.status_code == 200, response.content
    body = json.loads(response.content, parse_float=Decimal)
    assert body["unpriced_requests"] == 1
    assert body["total_requests"] == 2
    assert body["total_cost"] == Decimal("0.506")


def test_it_uses_the_server_price_not_the_client_cost_when_a_price_is_known(world):
    _, _, row = track(world.ingest, response_cost=99)
    assert row.is_priced
    assert row.cost == Decimal("0.006")  # 1000 × 2 + 500 × 8
    assert row.client_cost == Decimal("99")  # kept for comparison, not charged


def test_it_adds_costs_exactly_without_float_drift(world):
    # 0.1 + 0.2 + 0.3 is 0.6000000000000001 in binary floating point; costs must add to exactly 0.6.
    make_price("drift-model", input="0.1", output="0.2")
    costs = []
    for prompt, output in [(1_000_000, 0), (0, 1_000_000), (1_000_000, 1_000_000)]:
        _, _, row = track(world.ingest, model="drift-model", prompt_tokens=prompt, output_tokens=output)
        costs.append(row.cost)
    assert costs == [Decimal("0.1"), Decimal("0.2"), Decimal("0.3")]
    assert sum(costs) == Decimal("0.6")
    assert UsageEvent.objects.filter(model="drift-model").aggregate(s=Sum("cost"))["s"] == Decimal("0.6")
    dashboard = json.loads(api(world.read).get("/api/v1/dashboard/metrics").content, parse_float=Decimal)
    assert dashboard["total_cost"] == Decimal("0.6")
    assert dashboard["model_usage"]["drift-model"]["cost"] == Decimal("0.6")


def test_it_stores_ten_decimal_places_of_cost_exactly(world):
    make_price("fine-model", input="1.2345678901", output="0.0000000003")
    _, _, row = track(world.ingest, model="fine-model", prompt_tokens=999_999, output_tokens=7)
    # 999999 × 1.2345678901 / 1e6 = 1.2345666555321099 → 1.2345666555 (10 places, half-even)
    assert row.prompt_cost == Decimal("1.2345666555")
    # 7 × 0.0000000003 / 1e6 = 2.1e-15 → rounds to 0 at 10 places
    assert row.output_cost == Decimal("0")
    assert row.cost == Decimal("1.2345666555")


# --- PriceBook: which price a name refers to ----------------------------------------------------------


def book(*entries) -> PriceBook:
    """entries: (provider, model, patterns)."""
    prices = [price("1", "1", key=(p, m), pk=i) for i, (p, m, _) in enumerate(entries)]
    return PriceBook(prices, {(p, m): list(patterns) for p, m, patterns in entries})


def test_it_matches_an_exact_alias_from_match_patterns():
    prices = book(("acmeai", "widget-large", ["widget-l", "WIDGET-XL"]))
    assert prices.find("widget-large") == ("acmeai", "widget-large")
    assert prices.find("widget-l") == ("acmeai", "widget-large")
    assert prices.find("Widget-XL") == ("acmeai", "widget-large")  # names are case-insensitive
    assert prices.find("widget-m") is None


def test_it_matches_a_glob_pattern():
    prices = book(("acmeai", "x-model", ["x-*"]))
    assert prices.find("x-anything") == ("acmeai", "x-model")
    assert prices.find("X-Upper") == ("acmeai", "x-model")
    assert prices.find("y-anything") is None
    assert prices.find("prefix-x-anything") is None  # a glob is anchored at both ends


def test_it_matches_a_regex_pattern():
    prices = book(("acmeai", "numbered", [r"re:^num-\d+$"]))
    assert prices.find("num-42") == ("acmeai", "numbered")
    assert prices.find("num-abc") is None
    assert prices.find("num-42-extra") is None


def test_it_ignores_a_broken_regex_pattern_instead_of_failing():
    prices = book(("acmeai", "broken", ["re:(unclosed"]), ("acmeai", "fine", []))
    assert prices.find("unclosed") is None
    assert prices.find("fine") == ("acmeai", "fine")


def test_it_prefers_an_exact_name_over_a_pattern():
    prices = book(("acmeai", "x-special", []), ("otherai", "x-generic", ["x-*"]))
    assert prices.find("x-special") == ("acmeai", "x-special")
    assert prices.find("x-other") == ("otherai", "x-generic")


def test_it_prefers_the_named_provider_then_the_models_maker():
    prices = book(("azure", "gpt-4o", []), ("openai", "gpt-4o", []))
    assert prices.find("gpt-4o") == ("openai", "gpt-4o")  # the maker, although "azure" sorts first
    assert prices.find("azure/gpt-4o") == ("azure", "gpt-4o")
    assert prices.find("gpt-4o", "azure") == ("azure", "gpt-4o")
    assert prices.find("gpt-4o", "azure_ai") == ("azure", "gpt-4o")  # gateway alias of the provider
    assert prices.find("openai/gpt-4o", None) == ("openai", "gpt-4o")


def test_it_strips_gateway_prefixes_and_snapshot_suffixes():
    prices = book(("google", "gemini-2.5-flash", []), ("openai", "gpt-4o", []))
    assert prices.find("models/gemini-2.5-flash") == ("google", "gemini-2.5-flash")
    assert prices.find("vertex_ai/gemini-2.5-flash") == ("google", "gemini-2.5-flash")
    assert prices.find("gpt-4o-2024-08-06") == ("openai", "gpt-4o")
    assert prices.find("  GPT-4o  ") == ("openai", "gpt-4o")


def test_it_picks_the_price_in_force_at_a_moment():
    key = ("p", "m")
    old = price("10", "10", key=key, start=EPOCH, pk=1)
    new = price("1", "1", key=key, start=utc(2025, 6, 1), pk=2)
    prices = PriceBook([new, old], {key: []})
    assert prices.price_at(key, utc(2025, 5, 31, 23, 59, 59)) == old
    assert prices.price_at(key, utc(2025, 6, 1)) == new
    assert prices.price_at(key, utc(2030, 1, 1)) == new
    later_only = PriceBook([new], {key: []})
    assert later_only.price_at(key, utc(2025, 1, 1)) is None


def test_it_reloads_prices_in_this_process_once_forgotten(world):
    stale = price_book()
    assert stale.find("fresh-model") is None
    make_price("fresh-model", input="1", output="1")  # calls forget_price_book
    assert price_book().find("fresh-model") == ("testprov", "fresh-model")
    forget_price_book()


# --- the real catalog ----------------------------------------------------------------------------------
# Synced once for this module inside a transaction that is rolled back at the end of the module.


@pytest.fixture(scope="module")
def catalog(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        outer = transaction.atomic()
        outer.__enter__()
        try:
            result = price_catalog_sync()
            forget_price_book()
            yield result
        finally:
            transaction.set_rollback(True)
            outer.__exit__(None, None, None)
            forget_price_book()


CATALOG_NAMES = [
    ("models/gemini-2.5-flash", "google", "gemini-2.5-flash"),
    ("gemini/gemini-2.5-flash", "google", "gemini-2.5-flash"),
    ("openai/gpt-4o", "openai", "gpt-4o"),
    ("gpt-4o-2024-08-06", "openai", "gpt-4o"),
    ("GPT-4o", "openai", "gpt-4o"),
    ("gpt-4o", "openai", "gpt-4o"),
    ("claude-3-5-sonnet-20241022", "anthropic", "claude-3-5-sonnet"),
    ("anthropic/claude-sonnet-4-5", "anthropic", "claude-sonnet-4-5"),
]


@pytest.mark.parametrize(("raw", "provider", "model"), CATALOG_NAMES)
def test_it_finds_catalog_prices_for_the_spellings_clients_send(catalog, db, raw, provider, model):
    assert catalog.created > 1000
    found = price_book().find(raw)
    assert found is not None, f"{raw!r} found no price"
    assert found == (provider, model)


def test_it_finds_no_catalog_price_for_an_invented_model(catalog, db):
    assert price_book().find("totally-made-up-model") is None


def test_it_honours_the_provider_a_client_names_for_a_snapshot_name(catalog, db):
    # Anthropic sells claude-3-opus under the id "claude-3-opus-latest" (pattern claude-3-opus*); Google
    # Vertex lists "claude-3-opus". A client that says the call went to Anthropic must be attributed to
    # Anthropic, not to Google.
    assert price_book().find("anthropic/claude-3-opus-20240229")[0] == "anthropic"
    assert price_book().find("claude-3-opus-20240229", "anthropic")[0] == "anthropic"


def test_it_prices_catalog_models_through_the_api(catalog, world):
    # gpt-4o in the bundled catalog: $2.50 input, $1.25 cache read, $10 output per million.
    _, data, row = track(world.ingest, model="openai/gpt-4o", prompt_tokens=1000, cached_tokens=200,
                         output_tokens=500)
    assert data["priced"] is True
    assert (row.provider, row.model, row.model_requested) == ("openai", "gpt-4o", "openai/gpt-4o")
    # 800 × 2.5 + 200 × 1.25 = 2250 → 0.00225;  500 × 10 → 0.005
    assert row.prompt_cost == Decimal("0.00225")
    assert row.output_cost == Decimal("0.005")
    assert row.cost == Decimal("0.00725")

    _, data, row = track(world.ingest, model="models/gemini-2.5-flash", provider="google")
    assert data["priced"] is True and (row.provider, row.model) == ("google", "gemini-2.5-flash")

    _, data, row = track(world.ingest, model="totally-made-up-model", response_cost=0.25)
    assert data["priced"] is False and row.cost == Decimal("0.25")


def test_it_loads_a_price_row_per_catalog_entry(catalog, db):
    gpt4o = ModelPrice.objects.get(provider="openai", model="gpt-4o", effective_from=EPOCH)
    assert gpt4o.source == ModelPrice.Source.CATALOG
    assert gpt4o.input_per_mtok == Decimal("2.5")
    assert gpt4o.output_per_mtok == Decimal("10")
    assert gpt4o.cache_read_per_mtok == Decimal("1.25")
    assert gpt4o.effective_from == EPOCH
