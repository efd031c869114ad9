"""Finding the price of a model name at a moment: the platform's, and an organization's own.

The price table (and every organization's price list) is read into each process as a
`PriceBook` and refreshed every PRICE_CACHE_SECONDS (or at once in the process that saved a
price), so ingest never queries prices per event. Name lookups are remembered per book.

Names resolve as genai-prices resolves them, so our cost is the catalog calculator's: the
provider the client named (or the host a name is prefixed with: `openrouter/anthropic/...`,
`bedrock/...`) is asked first, matching its models in catalog order by their own name and the
catalog's match clauses, then the providers it falls back to (Azure serves OpenAI's models);
only when the host has no price is the model's own provider asked (`avian` +
`deepseek/deepseek-v3.2` falls back to DeepSeek's price), then the provider whose model rule
claims the name, then any provider that has a model of that name.
"""

from __future__ import annotations

import bisect
import fnmatch
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from datetime import time as time_of_day
from decimal import Decimal
from functools import cache
from typing import Any, cast

from django.conf import settings
from genai_prices import types as genai

from billing.models.prices import ModelPrice, OrganizationDiscount, OrganizationPrice

from .money import QUANTUM
from .rates import COLUMN_KEYS, genai_model_price, match_rule, priced_usage_keys

COST_QUANTUM = QUANTUM  # the precision money columns store (billing.pricing.money)
Key = tuple[str, str]  # (provider, model) of a platform price
Rate = Decimal | genai.TieredPrices

# Prefixes and provider names gateways use, mapped to the catalog's provider ids (genai-prices'
# own provider rules are asked after these).
PROVIDER_ALIASES = {
    "azure_ai": "azure",
    "gemini": "google",
    "vertex_ai": "google",
    "vertex_ai_beta": "google",
    "vertex": "google",
    "bedrock": "aws",
    "bedrock_converse": "aws",
    "together_ai": "together",
    "fireworks_ai": "fireworks",
    "xai": "x-ai",
    "mistralai": "mistral",
}
# Version suffixes that name a snapshot of a model whose price is the model's own (for names
# no rule claims, e.g. an admin's price named without its date).
_SNAPSHOT_SUFFIX = re.compile(r"([-@](\d{4}-\d{2}-\d{2}|\d{8}|\d{3,4}|latest|v\d+(:\d+)?))+$")


@dataclass(frozen=True, slots=True, eq=False)
class Price:
    """One price row, ready to price events: genai-prices' rates and the four common ones."""

    id: int
    provider: str
    model: str
    effective_from: datetime
    rates: Any  # genai_prices.types.ModelPrice: every dimension, for the full calculation
    input: Rate
    output: Rate
    cache_read: Rate | None  # None: cache reads cost the input price
    cache_write: Rate | None  # None: cache writes cost the input price
    per_request: Rate | None  # USD per thousand requests
    daily: tuple[time_of_day, time_of_day] | None = None  # UTC window it applies in, if any
    extra: dict = field(default_factory=dict)  # the stored extra_prices (for display)
    priced: frozenset[str] = frozenset()  # the usage keys it has a price for
    # (input, output, cache read, cache write, per request) when none is tiered: what most events need
    flat: tuple[Decimal, Decimal, Decimal | None, Decimal | None, Decimal | None] | None = None

    @classmethod
    def of(
        cls,
        *,
        id: int,
        provider: str,
        model: str,
        effective_from: datetime,
        input_per_mtok: Decimal,
        output_per_mtok: Decimal,
        cache_read_per_mtok: Decimal | None = None,
        cache_write_per_mtok: Decimal | None = None,
        extra_prices: dict | None = None,
        daily: tuple[time_of_day, time_of_day] | None = None,
    ) -> Price:
        columns = {
            "input_mtok": input_per_mtok,
            "output_mtok": output_per_mtok,
            "cache_read_mtok": cache_read_per_mtok,
            "cache_write_mtok": cache_write_per_mtok,
        }
        rates = genai_model_price(columns, extra_prices or {})
        common = (
            rates.input_mtok or Decimal(0), rates.output_mtok or Decimal(0), rates.cache_read_mtok,
            rates.cache_write_mtok, rates.requests_kcount,
        )  # fmt: skip
        tiered = any(isinstance(rate, genai.TieredPrices) for rate in common)
        flat = None if tiered else cast(tuple[Decimal, Decimal, Decimal | None, Decimal | None, Decimal | None], common)
        return cls(
            id=id, provider=provider, model=model, effective_from=effective_from, rates=rates,
            input=rates.input_mtok or Decimal(0), output=rates.output_mtok or Decimal(0),
            cache_read=rates.cache_read_mtok,
            cache_write=rates.cache_write_mtok, per_request=rates.requests_kcount, daily=daily,
            extra=dict(extra_prices or {}),
            priced=priced_usage_keys({key for key, value in rates.__dict__.items() if value is not None}),
            flat=flat,
        )  # fmt: skip

    @property
    def input_per_mtok(self) -> Decimal:
        return _base(self.input)

    @property
    def output_per_mtok(self) -> Decimal:
        return _base(self.output)

    @property
    def is_tiered(self) -> bool:
        return any(isinstance(value, genai.TieredPrices) for value in self.rates.__dict__.values())

    def applies_at(self, when: datetime) -> bool:
        """Inside its daily window (a row without one applies all day)."""
        if self.daily is None:
            return True
        moment = when.astimezone(UTC).time()
        start, end = self.daily
        return start <= moment < end if start <= end else (moment >= start or moment < end)


def _base(rate: Rate) -> Decimal:
    return rate.base if isinstance(rate, genai.TieredPrices) else rate


@dataclass(frozen=True, slots=True)
class Discount:
    percent: Decimal
    provider: str  # "" : every provider
    model: str  # "" : every model
    start: datetime
    end: datetime | None
    id: int = 0

    def covers(self, key: Key, when: datetime) -> bool:
        return (
            self.provider in ("", key[0])
            and self.model in ("", key[1].lower())
            and self.start <= when
            and (self.end is None or when < self.end)
        )

    @property
    def specificity(self) -> int:
        return (2 if self.model else 0) + (1 if self.provider else 0)


@dataclass(frozen=True, slots=True)
class Override:
    price: Price  # the organization's rates (its id is the override's)
    end: datetime | None

    def covers(self, when: datetime) -> bool:
        return self.price.effective_from <= when and (self.end is None or when < self.end)


@dataclass(frozen=True)
class CatalogProviders:
    """What genai-prices knows of providers: how names and gateways refer to them."""

    ids: frozenset[str]
    provider_rules: tuple[tuple[str, Any], ...]  # (id, clause matching provider names)
    model_rules: tuple[tuple[str, Any], ...]  # (id, clause matching model names it makes)
    fallbacks: dict[str, tuple[str, ...]]  # provider → providers whose models it also serves


@cache
def catalog_providers() -> CatalogProviders:
    """From the genai-prices snapshot bundled with the package (no network)."""
    from genai_prices import data_snapshot

    providers = data_snapshot.get_snapshot().providers
    return CatalogProviders(
        ids=frozenset(p.id for p in providers),
        provider_rules=tuple((p.id, p.provider_match) for p in providers if p.provider_match is not None),
        model_rules=tuple((p.id, p.model_match) for p in providers if p.model_match is not None),
        fallbacks={p.id: tuple(p.fallback_model_providers) for p in providers if p.fallback_model_providers},
    )


class _ProviderModels:
    """One provider's models, matched as genai-prices matches them (first in catalog order)."""

    def __init__(self) -> None:
        self.exact: dict[str, Key] = {}
        self.rules: list[tuple[int, Any, Key]] = []
        self.patterns: list[tuple[str, str, Key]] = []  # (kind, pattern, key)

    def match(self, name: str) -> Key | None:
        if name in self.exact:
            return self.exact[name]
        for _, rule, key in self.rules:
            if rule.is_match(name):
                return key
        for kind, pattern, key in self.patterns:
            if _pattern_matches(kind, pattern, name):
                return key
        return None


class PriceBook:
    """All prices, indexed by the names they answer to, and every organization's price list."""

    def __init__(
        self,
        prices: Iterable[Price],
        patterns: dict[Key, list[str]] | None = None,
        rules: dict[Key, tuple[int, Any]] | None = None,
        overrides: Iterable[tuple[int, Override]] = (),
        discounts: Iterable[tuple[int, Discount]] = (),
    ):
        self._series: dict[Key, list[Price]] = {}
        self._daily: dict[Key, list[Price]] = {}
        for price in sorted(prices, key=lambda p: p.effective_from):
            target = self._daily if price.daily else self._series
            target.setdefault((price.provider, price.model), []).append(price)
            self._series.setdefault((price.provider, price.model), [])
        self._starts = {key: [p.effective_from for p in series] for key, series in self._series.items()}
        self._providers: dict[str, _ProviderModels] = {}
        self._by_name: dict[str, list[Key]] = {}
        for key in self._series:
            models = self._providers.setdefault(key[0], _ProviderModels())
            models.exact.setdefault(key[1].lower(), key)
            self._by_name.setdefault(key[1].lower(), []).append(key)
        for key, (rank, rule) in (rules or {}).items():
            if key in self._series:
                self._providers[key[0]].rules.append((rank, rule, key))
        for models in self._providers.values():
            models.rules.sort(key=lambda entry: entry[0])
        for key, names in (patterns or {}).items():
            if key not in self._series:
                continue
            models = self._providers[key[0]]
            for pattern in names:
                pattern = pattern.strip().lower()
                if pattern.startswith("re:"):
                    models.patterns.append(("re", pattern[3:], key))
                elif any(ch in pattern for ch in "*?["):
                    models.patterns.append(("glob", pattern, key))
                elif pattern:
                    models.exact.setdefault(pattern, key)
                    self._by_name.setdefault(pattern, []).append(key)
        self._overrides: dict[tuple[int, str, str], list[Override]] = {}
        for organization_id, override in overrides:
            entry = (organization_id, override.price.provider, override.price.model.lower())
            self._overrides.setdefault(entry, []).append(override)
        for series in self._overrides.values():
            series.sort(key=lambda o: o.price.effective_from, reverse=True)
        self._listed = {entry[0] for entry in self._overrides}
        self._discounts: dict[int, list[Discount]] = {}
        for organization_id, discount in discounts:
            self._discounts.setdefault(organization_id, []).append(discount)
        for listed in self._discounts.values():  # the most specific, then the latest, wins
            listed.sort(key=lambda d: (d.specificity, d.start), reverse=True)
        self._memo: dict[tuple[str, str | None], Key | None] = {}
        self._catalog = catalog_providers()

    def __len__(self) -> int:
        return len(self._series)

    # --- names ----------------------------------------------------------------------------------

    def find(self, raw_model: str, provider: str | None = None) -> Key | None:
        """The (provider, model) a name refers to, or None when no price matches it."""
        memo_key = (raw_model, provider)
        if memo_key not in self._memo:
            if len(self._memo) > 50_000:  # bound memory against clients inventing names
                self._memo.clear()
            self._memo[memo_key] = self._find(raw_model, provider)
        return self._memo[memo_key]

    def provider_id(self, name: str | None) -> str | None:
        """The provider a client's provider name (or a gateway's prefix) means, if any."""
        name = (name or "").strip().lower()
        if not name:
            return None
        if name in self._providers or name in self._catalog.ids:
            return name
        if name in PROVIDER_ALIASES:
            return PROVIDER_ALIASES[name]
        for provider_id, rule in self._catalog.provider_rules:
            if rule.is_match(name):
                return provider_id
        return None

    def _find(self, raw_model: str, provider: str | None) -> Key | None:
        name = raw_model.strip().lower()
        if name.startswith("models/"):
            name = name[len("models/") :]
        host = self.provider_id(provider)
        attempts: list[tuple[str, str]] = [(host, name)] if host else []
        # Prefixes name a host or the model's maker: `openrouter/anthropic/claude-…` is asked at
        # OpenRouter as `anthropic/claude-…`, then at Anthropic as `claude-…`.
        rest = name
        while "/" in rest:
            head, rest = rest.split("/", 1)
            prefixed = self.provider_id(head)
            if prefixed is None or not rest:
                break
            attempts.append((prefixed, rest))
        for provider_id, ref in attempts:
            if key := self._match_at(provider_id, ref):
                return key
        bare = attempts[-1][1] if attempts else name
        for provider_id, rule in self._catalog.model_rules:  # the maker, as genai-prices finds it
            if rule.is_match(bare) and (key := self._match_at(provider_id, bare)):
                return key
        stripped = _SNAPSHOT_SUFFIX.sub("", bare)
        for candidate in dict.fromkeys((bare, stripped)):
            keys = self._by_name.get(candidate)
            if keys:
                return _prefer(keys, [p for p, _ in attempts])
            for models in self._providers.values():  # any provider's rules or patterns
                if key := models.match(candidate):
                    return key
        return None

    def _match_at(self, provider_id: str, ref: str) -> Key | None:
        models = self._providers.get(provider_id)
        if models is not None and (key := models.match(ref)):
            return key
        for fallback in self._catalog.fallbacks.get(provider_id, ()):  # one step, as genai-prices
            models = self._providers.get(fallback)
            if models is not None and (key := models.match(ref)):
                return key
        return None

    # --- moments --------------------------------------------------------------------------------

    def price_at(self, key: Key, when: datetime) -> Price | None:
        """The price of `key` in force at `when`: a daily-window row inside its window, else the
        latest row that started at or before it."""
        for price in reversed(self._daily.get(key, ())):
            if price.effective_from <= when and price.applies_at(when):
                return price
        index = bisect.bisect_right(self._starts[key], when) - 1
        return self._series[key][index] if index >= 0 else None

    # --- organizations' price lists -------------------------------------------------------------

    def has_price_lists(self, organization_id: int) -> bool:
        return organization_id in self._listed or organization_id in self._discounts

    def override_at(self, organization_id: int, provider: str, model: str, when: datetime) -> Price | None:
        for override in self._overrides.get((organization_id, provider, model.lower()), ()):
            if override.covers(when):
                return override.price
        return None

    def discount_at(self, organization_id: int, key: Key, when: datetime) -> Discount | None:
        for discount in self._discounts.get(organization_id, ()):
            if discount.covers(key, when):
                return discount
        return None


def _pattern_matches(kind: str, pattern: str, name: str) -> bool:
    if kind == "glob":
        return fnmatch.fnmatchcase(name, pattern)
    try:
        return re.search(pattern, name) is not None
    except re.error:
        return False


def _prefer(keys: list[Key], named: list[str]) -> Key:
    """Several providers sell a model of this name: one the client named, else its maker."""
    for key in keys:
        if key[0] in named:
            return key
    maker = _maker_of(keys[0][1])
    for key in keys:
        if key[0] == maker:
            return key
    return sorted(keys)[0]


@cache
def _maker_of(name: str) -> str | None:
    """The provider the bundled genai-prices catalog attributes a model name to (offline)."""
    for provider_id, rule in catalog_providers().model_rules:
        if rule.is_match(name):
            return provider_id
    return None


# --- the process-wide book --------------------------------------------------------------------

_lock = threading.Lock()
_book: PriceBook | None = None
_loaded_at = 0.0
RATE_FIELDS = ("input_per_mtok", "output_per_mtok", "cache_read_per_mtok", "cache_write_per_mtok", "extra_prices")


def _price(row: dict, **names: Any) -> Price:
    return Price.of(
        id=row["id"], effective_from=row["effective_from"], extra_prices=row["extra_prices"],
        **{name: row[name] for name in RATE_FIELDS if name != "extra_prices"}, **names,
    )  # fmt: skip


def load_price_book() -> PriceBook:
    prices: list[Price] = []
    patterns: dict[Key, list[str]] = {}
    rules: dict[Key, tuple[int, Any]] = {}
    rows = ModelPrice.objects.values(
        "id", "provider", "model", "effective_from", "match_patterns", "match_rule", "catalog_rank",
        "daily_from", "daily_until", *RATE_FIELDS,
    )  # fmt: skip
    for row in rows:
        key = (row["provider"], row["model"])
        daily = (row["daily_from"], row["daily_until"]) if row["daily_from"] is not None else None
        prices.append(_price(row, provider=key[0], model=key[1], daily=daily))
        patterns.setdefault(key, []).extend(row["match_patterns"] or [])
        if row["match_rule"] is not None:
            rank = row["catalog_rank"] if row["catalog_rank"] is not None else 10**9
            rules[key] = (rank, match_rule(row["match_rule"]))
    override_rows = OrganizationPrice.objects.values(
        "organization_id", "provider", "model", "effective_until", "id", "effective_from", *RATE_FIELDS
    )
    overrides = [
        (row["organization_id"], Override(_price(row, provider=row["provider"], model=row["model"]),
                                          row["effective_until"]))
        for row in override_rows
    ]  # fmt: skip
    discounts = [
        (row["organization_id"], Discount(row["percent"], row["provider"], row["model"].lower(), row["effective_from"],
                                          row["effective_until"], row["id"]))
        for row in OrganizationDiscount.objects.values(
            "organization_id", "percent", "provider", "model", "effective_from", "effective_until", "id"
        )
    ]  # fmt: skip
    return PriceBook(prices, patterns, rules, overrides, discounts)


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


__all__ = ["COLUMN_KEYS", "COST_QUANTUM", "Discount", "Override", "Price", "PriceBook", "forget_price_book",
           "load_price_book", "price_book"]  # fmt: skip
