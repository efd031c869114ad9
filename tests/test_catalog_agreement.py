"""Every model of the bundled genai-prices catalog costs, through our API, exactly what the
catalog's own calculator (`genai_prices.calc_price`) answers for the same usage, model, provider
and moment: plain calls, cache reads and writes (5 min and 1 h), 300k-token prompts (tiers),
audio tokens, at peak and off-peak hours and before the catalog's start-dated changes."""

from __future__ import annotations

import warnings
from datetime import timedelta
from decimal import ROUND_HALF_EVEN, Decimal

import pytest
from django.utils import timezone
from genai_prices import Usage as GenaiUsage
from genai_prices import calc_price, data_snapshot

from billing.pricing.book import COST_QUANTUM, forget_price_book
from billing.pricing.catalog import price_catalog_sync
from metrics.models import UsageEvent
from tests.conftest import api

# Event fields (and the `usage` object) per shape.
SHAPES = {
    "plain": {"prompt_tokens": 1200, "output_tokens": 800},
    "cache read + write": {"prompt_tokens": 3000, "output_tokens": 800, "cached_tokens": 1000,
                           "cache_write_tokens": 500},
    "cache write 1h": {"prompt_tokens": 3000, "output_tokens": 800, "cached_tokens": 1000, "cache_write_tokens": 500,
                       "usage": {"cache_write_1h_tokens": 200}},
    "300k prompt": {"prompt_tokens": 300_000, "output_tokens": 2000, "cached_tokens": 50_000},
    "audio": {"prompt_tokens": 2000, "output_tokens": 1000,
              "usage": {"input_audio_tokens": 1500, "output_audio_tokens": 600}},
    "searches and reasoning": {"prompt_tokens": 500, "output_tokens": 900,
                               "usage": {"web_searches": 2, "output_reasoning_tokens": 400}},
    "reasoning": {"prompt_tokens": 500, "output_tokens": 900, "usage": {"output_reasoning_tokens": 400}},
    "image input": {"prompt_tokens": 1500, "output_tokens": 100, "cached_tokens": 300,
                    "usage": {"input_image_tokens": 1000}},
}  # fmt: skip


def genai_usage(fields: dict) -> GenaiUsage:
    return GenaiUsage(
        input_tokens=fields["prompt_tokens"], output_tokens=fields["output_tokens"],
        cache_read_tokens=fields.get("cached_tokens", 0), cache_write_tokens=fields.get("cache_write_tokens", 0),
        **fields.get("usage", {}),
    )  # fmt: skip


def moments():
    """A recent day at 02:00 UTC (DeepSeek's off-peak windows), 12:00 and 20:00, and a day
    before most of the catalog's start-dated price changes."""
    day = (timezone.now() - timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
    return [day.replace(hour=2), day.replace(hour=12), day.replace(hour=20), day - timedelta(days=400)]


@pytest.mark.django_db
def test_every_catalog_model_costs_what_genai_prices_calculates(world, settings):
    settings.RAW_EVENT_RETENTION_DAYS = 3650  # the older moment must be accepted
    price_catalog_sync()
    forget_price_book()
    expected: dict[str, tuple[str, Decimal]] = {}
    bodies = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # genai-prices warns of nothing we send; be safe
        for provider in data_snapshot.get_snapshot().providers:
            for model in provider.models:
                for shape, fields in SHAPES.items():
                    for when in moments():
                        try:
                            answer = calc_price(genai_usage(fields), model.id, provider_id=provider.id,
                                                genai_request_timestamp=when)  # fmt: skip
                        except LookupError:  # a model its own id does not reach: nothing to compare
                            continue
                        except ValueError:  # the calculator refuses this usage for this model
                            continue
                        request_id = f"agree-{len(bodies)}"
                        want = answer.total_price.quantize(COST_QUANTUM, ROUND_HALF_EVEN)
                        expected[request_id] = (f"{provider.id} / {model.id} / {shape} / {when:%Y-%m-%d %H:%M}", want)
                        bodies.append({"request_id": request_id, "model": model.id, "provider": provider.id,
                                       "timestamp": when.isoformat(), "team_alias": "chatbot", **fields})  # fmt: skip
    assert len(expected) > 30_000  # the whole catalog, every shape, every moment

    client = api(world.ingest)
    for start in range(0, len(bodies), 1000):
        response = client.post("/api/v1/events", {"events": bodies[start : start + 1000]}, format="json")
        assert response.status_code == 200, response.content[:500]
        assert response.json()["rejected"] == []

    stored = dict(UsageEvent.objects.values_list("request_id", "cost"))
    differing = [
        f"{label}: ours {stored.get(request_id)} · genai-prices {want}"
        for request_id, (label, want) in expected.items()
        if stored.get(request_id) != want
    ]
    assert differing == [], f"{len(differing)} of {len(expected)} differ, e.g. " + "; ".join(differing[:10])
