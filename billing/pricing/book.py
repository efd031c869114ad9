"""Finding the price of a model name at a moment, and the cost of an event.

The price table is read into each process as a `PriceBook` and refreshed every
PRICE_CACHE_SECONDS (or at once in the process that saved a price), so ingest never queries
prices per event. Name lookups are remembered per book.
"""

from __future__ import annotations

import bisect
import fnmatch
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from functools import lru_cache

from django.conf import settings

from billing.models.prices import ModelPrice

from .money import QUANTUM

MILLION = Decimal(1_000_000)
COST_QUANTUM = QUANTUM  # the precision money columns store (billing.pricing.money)

# Prefixes gateways put before a model name, mapped to the catalog's provider ids.
PROVIDER_ALIASES = {
    "openai": "openai",
    "azure": "azure",
    "azure_ai": "azure",
    "anthropic": "anthropic",
    "google": "google",
    "gemini": "google",
    "vertex_ai": "google",
    "vertex_ai_beta": "google",
    "bedrock": "aws",
    "aws": "aws",
    "mistral": "mistral",
    "groq": "groq",
    "deepseek": "deepseek",
    "cohere": "cohere",
    "together_ai": "together",
    "together": "together",
    "fireworks_ai": "fireworks",
    "fireworks": "fireworks",
    "xai": "x-ai",
    "x-ai": "x-ai",
    "perplexity": "perplexity",
    "openrouter": "openrouter",
    "cerebras": "cerebras",
}
# Version suffixes that name a snapshot of a model whose price is the model's own.
_SNAPSHOT_SUFFIX = re.compile(r"([-@](\d{4}-\d{2}-\d{2}|\d{8}|\d{3,4}|latest|v\d+(:\d+)?))+$")


@dataclass(frozen=True, slots=True)
class Price:
    id: int
    provider: str
    model: str
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cache_read_per_mtok: Decimal
    cache_write_per_mtok: Decimal
    effective_from: datetime


@dataclass(frozen=True, slots=True)
class EventCost:
    prompt_cost: Decimal
    output_cost: Decimal
    total: Decimal


def event_cost(
    price: Price, *, prompt_tokens: int, cached_tokens: int, output_tokens: int, cache_write_tokens: int = 0
) -> EventCost:
    """Prompt tokens read from the cache × cache-read, written to it × cache-write, the rest × input;
    output × output; in USD. `prompt_tokens` is the whole input (cache reads and writes included)."""
    cached = min(cached_tokens, prompt_tokens)
    written = min(cache_write_tokens, prompt_tokens - cached)
    prompt = (
        (prompt_tokens - cached - written) * price.input_per_mtok
        + cached * price.cache_read_per_mtok
        + written * price.cache_write_per_mtok
    ) / MILLION
    output = output_tokens * price.output_per_mtok / MILLION
    prompt = prompt.quantize(COST_QUANTUM, ROUND_HALF_EVEN)
    output = output.quantize(COST_QUANTUM, ROUND_HALF_EVEN)
    return EventCost(prompt_cost=prompt, output_cost=output, total=prompt + output)


def split_model_name(raw: str) -> tuple[str | None, str]:
    """`models/gemini-2.5-flash` → (None, 'gemini-2.5-flash'); `openai/gpt-4o` → ('openai', 'gpt-4o')."""
    name = raw.strip().lower()
    if name.startswith("models/"):
        name = name[len("models/") :]
    provider = None
    while "/" in name:
        head, rest = name.split("/", 1)
        if head not in PROVIDER_ALIASES or not rest:
            break
        provider, name = PROVIDER_ALIASES[head], rest
    return provider, name


def normalise_model_name(raw: str) -> str:
    return split_model_name(raw)[1]


class PriceBook:
    """All prices, indexed by the names they answer to."""

    def __init__(self, prices: list[Price], patterns: dict[tuple[str, str], list[str]]):
        self._series: dict[tuple[str, str], list[Price]] = {}
        for price in sorted(prices, key=lambda p: p.effective_from):
            self._series.setdefault((price.provider, price.model), []).append(price)
        self._starts = {key: [p.effective_from for p in series] for key, series in self._series.items()}
        self._exact: dict[str, list[tuple[str, str]]] = {}
        self._globs: list[tuple[str, str, tuple[str, str]]] = []  # (kind, pattern, key)
        for key in self._series:
            self._exact.setdefault(key[1].lower(), []).append(key)
            for pattern in patterns.get(key, []):
                pattern = pattern.strip().lower()
                if pattern.startswith("re:"):
                    self._globs.append(("re", pattern[3:], key))
                elif any(ch in pattern for ch in "*?["):
                    self._globs.append(("glob", pattern, key))
                elif pattern and key not in self._exact.get(pattern, []):
                    self._exact.setdefault(pattern, []).append(key)
        self._memo: dict[tuple[str, str | None], tuple[str, str] | None] = {}

    def __len__(self) -> int:
        return len(self._series)

    def find(self, raw_model: str, provider: str | None = None) -> tuple[str, str] | None:
        """The (provider, model) a name refers to, or None when no price matches it."""
        memo_key = (raw_model, provider)
        if memo_key not in self._memo:
            if len(self._memo) > 50_000:  # bound memory against clients inventing names
                self._memo.clear()
            self._memo[memo_key] = self._find(raw_model, provider)
        return self._memo[memo_key]

    def price_at(self, key: tuple[str, str], when: datetime) -> Price | None:
        """The price of `key` in force at `when`: the latest row that started at or before it."""
        index = bisect.bisect_right(self._starts[key], when) - 1
        return self._series[key][index] if index >= 0 else None

    def _find(self, raw_model: str, provider: str | None) -> tuple[str, str] | None:
        hinted, name = split_model_name(raw_model)
        provider = (provider or "").strip().lower() or hinted
        provider = PROVIDER_ALIASES.get(provider, provider) if provider else None
        stripped = _SNAPSHOT_SUFFIX.sub("", name)
        # From the most to the least specific way of matching the name.
        tiers = [self._exact.get(name, []), self._exact.get(stripped, []) if stripped != name else []]
        tiers.append([key for kind, pattern, key in self._globs if _pattern_matches(kind, pattern, name)])
        if provider:  # a provider the client named wins over a closer match at another provider
            for keys in tiers:
                for key in keys:
                    if key[0] == provider:
                        return key
        for keys in tiers:
            if keys:
                return _prefer(keys, name)
        return None


def _pattern_matches(kind: str, pattern: str, name: str) -> bool:
    if kind == "glob":
        return fnmatch.fnmatchcase(name, pattern)
    try:
        return re.search(pattern, name) is not None
    except re.error:
        return False


def _prefer(keys: list[tuple[str, str]], name: str) -> tuple[str, str]:
    """Several providers sell the same model: prefer its maker, as the bundled catalog names it."""
    maker = _maker_of(name)
    for key in keys:
        if key[0] == maker:
            return key
    return sorted(keys)[0]


@lru_cache(maxsize=4096)
def _maker_of(name: str) -> str | None:
    """The provider the bundled genai-prices catalog attributes a model name to (offline)."""
    from genai_prices import data_snapshot

    try:
        return data_snapshot.get_snapshot().find_provider(name, None, None).id
    except LookupError:
        return None


# --- the process-wide book --------------------------------------------------------------------

_lock = threading.Lock()
_book: PriceBook | None = None
_loaded_at = 0.0


def load_price_book() -> PriceBook:
    rows = ModelPrice.objects.values_list(
        "id", "provider", "model", "input_per_mtok", "output_per_mtok", "cache_read_per_mtok",
        "cache_write_per_mtok", "effective_from", "match_patterns",
    )
    prices, patterns = [], {}
    for pk, provider, model, input_p, output_p, cache_read, cache_write, start, match in rows:
        # A price without cache prices bills cached and cache-writing prompt tokens as input.
        cache_read = input_p if cache_read is None else cache_read
        cache_write = input_p if cache_write is None else cache_write
        prices.append(Price(pk, provider, model, input_p, output_p, cache_read, cache_write, start))
        patterns[(provider, model)] = list(match or [])
    return PriceBook(prices, patterns)


def price_book() -> PriceBook:
    global _book, _loaded_at
    if _book is None or time.monotonic() - _loaded_at > settings.PRICE_CACHE_SECONDS:
        with _lock:
            if _book is None or time.monotonic() - _loaded_at > settings.PRICE_CACHE_SECONDS:
                _book = load_price_book()
                _loaded_at = time.monotonic()
    return _book


def forget_price_book() -> None:
    """Drop this process's book so the next lookup reads the table again (after a price edit)."""
    global _book
    _book = None
