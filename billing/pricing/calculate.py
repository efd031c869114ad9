"""The cost of an event: one function, `price_event`, used by every way events arrive and by
repricing, so an event costs the same however and whenever it is priced.

Costs are genai-prices' own calculation (`ModelPrice.calc_price`) of our stored rates. The usage
most events carry — input, output, cache-read and cache-write tokens — is priced here without
building genai-prices' usage objects (ingest prices thousands of events a second); tests walk the
whole bundled catalog and compare both ways with `genai_prices.calc_price`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal

from genai_prices import Usage as GenaiUsage
from genai_prices import types as genai

from .book import COST_QUANTUM, Key, Price, PriceBook, Rate
from .rates import related_usage_keys

MILLION = Decimal(1_000_000)
THOUSAND = Decimal(1_000)
HUNDRED = Decimal(100)


class CostSource:
    """Where an event's cost came from."""

    CATALOG = "catalog"  # the platform's price
    OVERRIDE = "override"  # the organization's own price for the model
    DISCOUNT = "discount"  # the platform's price less the organization's discount (or plus a markup)
    CLIENT = "client"  # no price matched: the cost the client reported
    UNPRICED = "unpriced"  # no price matched and the client reported none

    choices = [
        (CATALOG, "Platform price"),
        (OVERRIDE, "Organization override"),
        (DISCOUNT, "Organization discount"),
        (CLIENT, "Client's cost"),
        (UNPRICED, "Unpriced"),
    ]
    PRICED = frozenset({CATALOG, OVERRIDE, DISCOUNT})


# Not frozen: a frozen dataclass's __init__ costs several times more, and ingest builds these per event.
@dataclass(slots=True)
class Usage:
    """What one call used. `prompt_tokens` is the whole input (cache reads and writes, audio and
    image tokens included), as genai-prices' `input_tokens`; `extra` holds any other genai-prices
    usage key (`cache_write_1h_tokens`, `input_audio_tokens`, `web_searches`, …)."""

    prompt_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    extra: Mapping[str, int] = field(default_factory=dict)

    def genai(self) -> GenaiUsage:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an unknown key is a bug here: validation lets none through
            return GenaiUsage(
                input_tokens=self.prompt_tokens, output_tokens=self.output_tokens,
                cache_read_tokens=self.cached_tokens, cache_write_tokens=self.cache_write_tokens,
                **{key: value for key, value in self.extra.items() if key != "requests"},
            )  # fmt: skip


class UsageError(ValueError):
    """The usage's parts do not add up under this price (genai-prices' decomposition refused them)."""


@dataclass(slots=True)
class Cost:
    """Exact (unrounded) USD: input-side, output-side, and the total (which adds per-request and
    per-search charges, which are neither)."""

    input: Decimal
    output: Decimal
    total: Decimal

    def scaled(self, factor: Decimal) -> Cost:
        return Cost(self.input * factor, self.output * factor, self.total * factor)


def _rate(rate: Rate | None, input_tokens: int) -> Decimal:
    """A flat rate, or the tier the request's input tokens reach (the whole request pays it)."""
    if rate is None:
        return Decimal(0)
    if isinstance(rate, genai.TieredPrices):
        for tier in reversed(rate.tiers):
            if input_tokens > tier.start:
                return tier.price
        return rate.base
    return rate


def _needs_decomposition(price: Price, extra: Mapping[str, int]) -> bool:
    """Whether other usage counts change this price's charge: only when the price has a rate for
    one of them or for a part or a whole of one (reasoning tokens under a price without a reasoning
    rate are output tokens like the others, and genai-prices bills them so)."""
    return any(
        value and key != "requests" and not price.priced.isdisjoint(related_usage_keys(key))
        for key, value in extra.items()
    )


def cost_of(price: Price, usage: Usage) -> Cost:
    """What `price` charges for `usage`, exactly as genai-prices' calculator answers."""
    extra = usage.extra
    # genai-prices bills one request per call; a client may say a call made several.
    requests = extra.get("requests", 1) if extra else 1
    if extra and _needs_decomposition(price, extra):
        try:
            answer = price.rates.calc_price(usage.genai())
        except ValueError as error:
            raise UsageError(str(error)) from None
        total = answer["total_price"]
        if price.per_request is not None and requests != 1:
            total += (requests - 1) * _rate(price.per_request, usage.prompt_tokens) / THOUSAND
        return Cost(answer["input_price"], answer["output_price"], total)
    tokens = usage.prompt_tokens
    if price.flat is not None:
        input_rate, output_rate, read_rate, write_rate, request_rate = price.flat
    else:  # the tier this request's input tokens reach
        input_rate, output_rate = _rate(price.input, tokens), _rate(price.output, tokens)
        read_rate = None if price.cache_read is None else _rate(price.cache_read, tokens)
        write_rate = None if price.cache_write is None else _rate(price.cache_write, tokens)
        request_rate = None if price.per_request is None else _rate(price.per_request, tokens)
    # Parts without a price of their own are billed as input, as genai-prices decomposes usage.
    cached = usage.cached_tokens if read_rate is not None else 0
    written = usage.cache_write_tokens if write_rate is not None else 0
    input_cost = (tokens - cached - written) * input_rate
    if read_rate is not None and cached:
        input_cost += cached * read_rate
    if write_rate is not None and written:
        input_cost += written * write_rate
    input_cost /= MILLION
    output_cost = usage.output_tokens * output_rate / MILLION
    total = input_cost + output_cost
    if request_rate is not None:
        total += requests * request_rate / THOUSAND
    return Cost(input_cost, output_cost, total)


def _money(value: Decimal) -> Decimal:
    return value.quantize(COST_QUANTUM, ROUND_HALF_EVEN)


@dataclass(slots=True)
class PricedEvent:
    """An event's cost and where it came from. Money is at the precision it is stored with."""

    cost_source: str
    prompt_cost: Decimal
    output_cost: Decimal
    cost: Decimal
    list_cost: Decimal | None  # the platform's price before the organization's own; None: none
    price_id: int | None  # the platform price row (None: none matched)
    provider: str  # the price's provider (or, unpriced, the one the client named)
    model: str  # the price's model name (or, unpriced, the client's name without prefixes)

    @property
    def is_priced(self) -> bool:
        return self.cost_source in CostSource.PRICED


def price_event(
    book: PriceBook,
    *,
    organization_id: int,
    model: str,
    provider: str | None,
    when: datetime,
    usage: Usage,
    client_cost: Decimal | None = None,
    client_prompt_cost: Decimal | None = None,
    client_output_cost: Decimal | None = None,
) -> PricedEvent:
    """Price one event of `organization_id` made at `when`: its own override, else the platform's
    price less its discount, else the client's cost. Raises UsageError for usage whose parts
    contradict each other under the price that applies."""
    key = book.find(model, provider)
    platform = book.price_at(key, when) if key else None
    listed = cost_of(platform, usage) if platform is not None else None
    override = _override(book, organization_id, key, model, provider, when)
    if override is not None:
        cost = cost_of(override, usage)
        return _priced(CostSource.OVERRIDE, cost, listed, platform, override.provider, override.model)
    if platform is None or listed is None:
        return _unpriced(book, model, provider, client_cost, client_prompt_cost, client_output_cost)
    discount = book.discount_at(organization_id, (platform.provider, platform.model), when)
    if discount is not None:
        cost = listed.scaled((HUNDRED - discount.percent) / HUNDRED)
        return _priced(CostSource.DISCOUNT, cost, listed, platform, platform.provider, platform.model)
    return _priced(CostSource.CATALOG, listed, listed, platform, platform.provider, platform.model)


def _override(
    book: PriceBook, organization_id: int, key: Key | None, model: str, provider: str | None, when: datetime
) -> Price | None:
    if not book.has_price_lists(organization_id):
        return None
    if key is not None:
        return book.override_at(organization_id, key[0], key[1], when)
    # A model the platform has no price for: the override names it as clients do.
    host, name = unpriced_names(book, model, provider)
    return book.override_at(organization_id, host, name, when)


def _priced(source: str, cost: Cost, listed: Cost | None, platform: Price | None, provider: str, model: str):
    total = cost.total.quantize(COST_QUANTUM, ROUND_HALF_EVEN)
    if listed is None:
        list_cost = None
    else:
        list_cost = total if listed is cost else listed.total.quantize(COST_QUANTUM, ROUND_HALF_EVEN)
    return PricedEvent(
        source,
        cost.input.quantize(COST_QUANTUM, ROUND_HALF_EVEN),
        cost.output.quantize(COST_QUANTUM, ROUND_HALF_EVEN),
        total,
        list_cost,
        None if platform is None else platform.id,
        provider,
        model,
    )


def _unpriced(book, model, provider, client_cost, client_prompt_cost, client_output_cost) -> PricedEvent:
    host, name = unpriced_names(book, model, provider)
    if client_cost is None:
        return PricedEvent(CostSource.UNPRICED, Decimal(0), Decimal(0), Decimal(0), None, None, host, name)
    # The client's own figure is the only cost we can honestly show, at the precision money is
    # stored with, so the first answer and a retry's agree.
    return PricedEvent(
        CostSource.CLIENT,
        _money(client_prompt_cost or Decimal(0)),
        _money(client_output_cost or Decimal(0)),
        _money(client_cost),
        None,
        None,
        host,
        name,
    )


def unpriced_names(book: PriceBook, model: str, provider: str | None) -> tuple[str, str]:
    """(provider, model) for a name no price matched: the provider named or prefixed, and the name
    without the `models/` and provider prefixes gateways add."""
    name = model.strip().lower()
    if name.startswith("models/"):
        name = name[len("models/") :]
    host = book.provider_id(provider) or (provider or "").strip().lower()
    while "/" in name:
        head, rest = name.split("/", 1)
        prefixed = book.provider_id(head)
        if prefixed is None or not rest:
            break
        host, name = host or prefixed, rest
    return host, name
