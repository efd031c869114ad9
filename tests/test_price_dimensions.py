"""Everything a provider bills, priced from every dimension of a stored price; which price was
used; names routed to the host the client named; the `usage` object's rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.test import Client
from django.utils import timezone

from billing.models import EPOCH, ModelPrice
from billing.pricing.book import forget_price_book
from billing.pricing.catalog import price_catalog_sync
from metrics.models import UsageEvent
from metrics.services import usage_events_reprice
from tests.conftest import api, event, make_price
from tests.web_support import page_settings


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def track(token: str, **fields):
    response = api(token).post("/api/v1/metrics/track", event(**fields), format="json")
    return response, json.loads(response.content, parse_float=Decimal)


def rich_price(model: str = "rich-model", cache_write: str | None = "3.75", **extra) -> ModelPrice:
    price = ModelPrice(
        provider="richprov", model=model, input_per_mtok=Decimal("3"), output_per_mtok=Decimal("15"),
        cache_read_per_mtok=Decimal("0.3"), cache_write_per_mtok=None if cache_write is None else Decimal(cache_write),
        effective_from=EPOCH, extra_prices=extra,
    )  # fmt: skip
    price.full_clean()  # genai-prices could price with it
    price.save()
    forget_price_book()
    return price


# --- dimensions ---------------------------------------------------------------------------------


def test_a_long_prompt_pays_the_tier_its_input_tokens_reach_on_every_token(world):
    rich_price(
        input_mtok={"base": "3", "tiers": [{"start": 200_000, "price": "6"}]},
        output_mtok={"base": "15", "tiers": [{"start": 200_000, "price": "22.5"}]},
    )
    short, _ = track(world.ingest, model="rich-model", prompt_tokens=200_000, output_tokens=1000)
    long, _ = track(world.ingest, model="rich-model", prompt_tokens=300_000, output_tokens=1000)
    assert short.status_code == long.status_code == 200
    costs = {e.prompt_tokens: e for e in UsageEvent.objects.all()}
    # 200,000 is not past the tier: 200k × 3 + 1k × 15 per million
    assert costs[200_000].cost == Decimal("0.6") + Decimal("0.015")
    # past it, every token pays the tier: 300k × 6 + 1k × 22.5
    assert costs[300_000].prompt_cost == Decimal("1.8")
    assert costs[300_000].output_cost == Decimal("0.0225")
    assert costs[300_000].cost == Decimal("1.8225")


def test_one_hour_cache_writes_and_per_request_prices_are_billed(world):
    rich_price(cache_write_1h_mtok="6", requests_kcount="5")
    response, body = track(
        world.ingest, model="rich-model", prompt_tokens=10_000, cached_tokens=2000, cache_write_tokens=3000,
        output_tokens=1000, usage={"cache_write_1h_tokens": 1000},
    )  # fmt: skip
    assert response.status_code == 200, body
    stored = UsageEvent.objects.get()
    # input: 2000 read × 0.3, 2000 5-min writes × 3.75, 1000 1-h writes × 6, the other 5000 × 3
    assert stored.prompt_cost == Decimal("0.0006") + Decimal("0.0075") + Decimal("0.006") + Decimal("0.015")
    assert stored.output_cost == Decimal("0.015")
    # and $5 per thousand requests, in the total only
    assert stored.cost == stored.prompt_cost + stored.output_cost + Decimal("0.005")
    assert stored.usage == {"cache_write_1h_tokens": 1000}
    assert body["cost"] == stored.cost


def test_audio_tokens_are_billed_at_their_own_prices(world):
    rich_price(cache_write=None, input_audio_mtok="40", output_audio_mtok="80", cache_audio_read_mtok="4")
    response, body = track(
        world.ingest, model="rich-model", prompt_tokens=10_000, cached_tokens=2000, output_tokens=1000,
        usage={"input_audio_tokens": 4000, "cache_audio_read_tokens": 500, "output_audio_tokens": 500},
    )  # fmt: skip
    assert response.status_code == 200, body
    stored = UsageEvent.objects.get()
    # input: 500 audio cache reads × 4, 1500 other cache reads × 0.3, 3500 other audio × 40,
    # the remaining 4500 text tokens × 3
    assert stored.prompt_cost == Decimal("0.002") + Decimal("0.00045") + Decimal("0.14") + Decimal("0.0135")
    # output: 500 audio × 80, 500 text × 15
    assert stored.output_cost == Decimal("0.04") + Decimal("0.0075")
    assert stored.cost == stored.prompt_cost + stored.output_cost


def test_a_client_may_say_a_call_made_several_requests(world):
    rich_price(requests_kcount="5")
    track(world.ingest, model="rich-model", prompt_tokens=0, output_tokens=0, usage={"requests": 3})
    assert UsageEvent.objects.get().cost == Decimal("0.015")


def test_a_daily_window_price_applies_inside_its_window_only(world):
    ModelPrice.objects.create(provider="richprov", model="peak-model", input_per_mtok=Decimal("1"),
                              output_per_mtok=Decimal("2"), effective_from=EPOCH)  # fmt: skip
    ModelPrice.objects.create(provider="richprov", model="peak-model", input_per_mtok=Decimal("0.5"),
                              output_per_mtok=Decimal("1"), effective_from=EPOCH, daily_from=time(16, 30),
                              daily_until=time(0, 30))  # overnight  # fmt: skip
    forget_price_book()
    day = (timezone.now() - timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
    for hour, minute in [(12, 0), (23, 0), (0, 15), (0, 30)]:
        when = day.replace(hour=hour, minute=minute)
        track(world.ingest, model="peak-model", prompt_tokens=1_000_000, output_tokens=0,
              timestamp=when.isoformat(), request_id=f"at-{hour}-{minute}")  # fmt: skip
    costs = dict(UsageEvent.objects.values_list("request_id", "cost"))
    assert costs == {"at-12-0": Decimal(1), "at-23-0": Decimal("0.5"), "at-0-15": Decimal("0.5"),
                     "at-0-30": Decimal(1)}  # fmt: skip


def test_extra_prices_are_validated_by_genai_prices_keys_and_shapes(db):
    def check(**extra):
        row = ModelPrice(provider="p", model="m", input_per_mtok=Decimal(3), output_per_mtok=Decimal(15),
                         effective_from=EPOCH, extra_prices=extra)  # fmt: skip
        row.full_clean()

    check(input_audio_mtok="40", input_mtok={"base": "3", "tiers": [{"start": 200000, "price": "6"}]})
    for bad, named in [
        ({"made_up_mtok": "1"}, "made_up_mtok"),
        ({"input_audio_mtok": "-1"}, "input_audio_mtok"),
        ({"input_audio_mtok": "abc"}, "input_audio_mtok"),
        ({"input_mtok": "4"}, "input_mtok"),  # the flat input price is the column
        ({"input_mtok": {"base": "4", "tiers": [{"start": 1, "price": "5"}]}}, "input_mtok.base"),
        ({"output_mtok": {"base": "15", "tiers": [{"start": 9, "price": "1"}, {"start": 5, "price": "2"}]}},
         "output_mtok.tiers[1].start"),
        ({"cache_write_1h_mtok": "6"}, "cache_write_1h"),  # needs a cache-write price
        ({"cache_audio_read_mtok": "1"}, "cache_audio_read"),  # needs audio input priced
    ]:  # fmt: skip
        with pytest.raises(ValidationError) as raised:
            check(**bad)
        assert named in str(raised.value.message_dict["extra_prices"])


def test_the_admin_refuses_an_invalid_extra_price_with_a_form_error(world, settings):
    page_settings(settings)
    admin = get_user_model().objects.create_superuser("root@example.test", "root@example.test", "pw")
    client = Client()
    client.force_login(admin)
    response = client.post("/admin/billing/modelprice/add/", {
        "provider": "p", "model": "m", "match_patterns": "[]", "input_per_mtok": "1", "output_per_mtok": "2",
        "extra_prices": '{"input_mtok": "9"}', "effective_from_0": "2025-01-01", "effective_from_1": "00:00:00",
    })  # fmt: skip
    assert response.status_code == 200  # the form again, with its error
    assert "extra_prices" in response.content.decode() and "only its tiers" in response.content.decode()
    assert not ModelPrice.objects.filter(provider="p").exists()


def test_sync_keeps_every_dimension_and_never_overwrites_an_admin_edit(db):
    price_catalog_sync()
    tiered = ModelPrice.objects.filter(source="catalog", extra_prices__has_key="input_mtok").first()
    assert tiered is not None and tiered.extra_prices["input_mtok"]["tiers"]
    assert ModelPrice.objects.filter(extra_prices__has_key="cache_write_1h_mtok").exists()
    assert ModelPrice.objects.filter(daily_from__isnull=False, provider="deepseek").exists()
    tiered.extra_prices = {}
    tiered.admin_edited = True
    tiered.save()
    price_catalog_sync()
    tiered.refresh_from_db()
    assert tiered.extra_prices == {}
    assert price_catalog_sync().created == 0  # idempotent


# --- which price, and names --------------------------------------------------------------------


@pytest.fixture
def catalog(db):
    price_catalog_sync()
    forget_price_book()


@pytest.mark.parametrize(
    ("model", "provider", "expected_provider", "expected_cost"),
    [
        # the host the client named has its own price for a model named with its maker's prefix
        ("deepseek/deepseek-v4-flash", "avian", "avian", "0.000392"),
        ("google/gemma-4-31B-it", "huggingface_novita", "huggingface_novita", "0.000488"),
        # a host prefix in the name: OpenRouter's price for Anthropic's model
        ("openrouter/anthropic/claude-sonnet-4.5", None, "openrouter", "0.0156"),
        # a provider that prices a model at $0 charges nothing
        ("gpt-4o", "github-copilot", "github-copilot", "0"),
        # the maker's own price when no provider is named
        ("deepseek/deepseek-v4-flash", None, "deepseek", None),
    ],
)
def test_names_resolve_at_the_provider_the_client_named(world, catalog, model, provider, expected_provider,
                                                        expected_cost):
    fields = {"model": model, "prompt_tokens": 1200, "output_tokens": 800}
    if provider:
        fields["provider"] = provider
    response, body = track(world.ingest, **fields)
    assert response.status_code == 200, body
    stored = UsageEvent.objects.get()
    assert stored.provider == expected_provider
    assert stored.provider_requested == (provider or "")
    assert stored.price is not None and stored.price.provider == expected_provider
    assert stored.cost_source == "catalog" and stored.list_cost == stored.cost
    if expected_cost is not None:
        assert stored.cost == Decimal(expected_cost)


def test_a_host_without_a_price_falls_back_to_the_models_own_provider(world, catalog):
    response, _ = track(world.ingest, model="deepseek/deepseek-v4-flash", provider="my-own-gateway",
                        prompt_tokens=1200, output_tokens=800)  # fmt: skip
    assert response.status_code == 200
    stored = UsageEvent.objects.get()
    assert (stored.provider, stored.provider_requested) == ("deepseek", "my-own-gateway")
    assert stored.is_priced


def test_every_event_says_where_its_cost_came_from(world):
    track(world.ingest, request_id="priced")
    track(world.ingest, request_id="client", model="mystery-model", response_cost=0.25)
    track(world.ingest, request_id="unpriced", model="mystery-model")
    rows = {e.request_id: (e.cost_source, e.list_cost, e.cost) for e in UsageEvent.objects.all()}
    # test-model: 1000 × 2 + 500 × 8 per million
    assert rows["priced"] == ("catalog", Decimal("0.006"), Decimal("0.006"))
    assert rows["client"] == ("client", None, Decimal("0.25"))
    assert rows["unpriced"] == ("unpriced", None, Decimal(0))


def test_repricing_an_event_whose_price_is_gone_keeps_the_clients_cost(world):
    track(world.ingest, request_id="r", model="custom-model", response_cost=0.5, prompt_tokens=1_000_000,
          output_tokens=0)
    assert UsageEvent.objects.get().cost_source == "client"
    price = make_price("custom-model", input="1", output="1")
    usage_events_reprice(provider="testprov", model="custom-model", start=EPOCH, end=None)
    assert (UsageEvent.objects.get().cost_source, UsageEvent.objects.get().cost) == ("catalog", Decimal(1))
    price.delete()
    forget_price_book()
    usage_events_reprice(provider="testprov", model="custom-model", start=EPOCH, end=None)
    stored = UsageEvent.objects.get()
    # one answer on every path: the client's cost, as at ingest (never 0)
    assert (stored.cost_source, stored.cost, stored.is_priced) == ("client", Decimal("0.5"), False)


# --- the usage object ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usage", "field"),
    [
        ({"not_a_usage_key": 1}, "usage.not_a_usage_key"),
        ({"input_audio_tokens": -1}, "usage.input_audio_tokens"),
        ({"input_audio_tokens": 1.5}, "usage.input_audio_tokens"),
        ({"input_audio_tokens": "12"}, "usage.input_audio_tokens"),
        ({"input_audio_tokens": 1001}, "usage.input_audio_tokens"),  # more than prompt_tokens (1000)
        ({"output_reasoning_tokens": 501}, "usage.output_reasoning_tokens"),  # more than output_tokens
        ({"cache_write_1h_tokens": 1}, "usage.cache_write_1h_tokens"),  # more than cache_write_tokens (0)
        ({"input_tokens": 5}, "usage.input_tokens"),  # the event's prompt_tokens
        ([1, 2], "usage"),
    ],
)
def test_a_bad_usage_object_is_refused_naming_the_key_and_nothing_is_written(world, usage, field):
    response, body = track(world.ingest, usage=usage)
    assert response.status_code == 400, body
    assert field in json.dumps(body)
    assert not UsageEvent.objects.exists()

    batch = api(world.ingest).post("/api/v1/events", {"events": [event(usage=usage), event()]}, format="json")
    assert batch.status_code == 200
    assert batch.json()["rejected"][0]["index"] == 0 and field in json.dumps(batch.json()["rejected"])
    assert UsageEvent.objects.count() == 1


def test_usage_that_cannot_be_decomposed_under_its_price_is_refused_not_a_500(world):
    # Both cache reads and audio input, under a price for audio cache reads, need the audio cache
    # reads themselves: genai-prices refuses to guess, and so do we.
    rich_price(cache_write=None, input_audio_mtok="40", cache_audio_read_mtok="4")
    response, body = track(world.ingest, model="rich-model", prompt_tokens=1000, cached_tokens=200,
                           usage={"input_audio_tokens": 300})  # fmt: skip
    assert response.status_code == 400, body
    assert "usage" in body.get("errors", body)
    assert not UsageEvent.objects.exists()


def test_the_moment_of_a_start_dated_change_is_a_utc_midnight(world, settings):
    ModelPrice.objects.create(provider="richprov", model="dated", input_per_mtok=Decimal(1),
                              output_per_mtok=Decimal(1), effective_from=EPOCH)  # fmt: skip
    change = (timezone.now() - timedelta(days=5)).replace(hour=0, minute=0, second=0, microsecond=0)
    ModelPrice.objects.create(provider="richprov", model="dated", input_per_mtok=Decimal(2),
                              output_per_mtok=Decimal(2), effective_from=change)  # fmt: skip
    forget_price_book()
    before = change - timedelta(seconds=1)
    track(world.ingest, model="dated", prompt_tokens=10**6, output_tokens=0, timestamp=before.isoformat(),
          request_id="before")  # fmt: skip
    track(world.ingest, model="dated", prompt_tokens=10**6, output_tokens=0, timestamp=change.isoformat(),
          request_id="after")  # fmt: skip
    assert dict(UsageEvent.objects.values_list("request_id", "cost")) == {"before": 1, "after": 2}
    assert change.tzinfo is not None and change.astimezone(UTC).hour == 0
    assert datetime.now(UTC) > change
