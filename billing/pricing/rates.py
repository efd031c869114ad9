"""A price's rates in genai-prices' own terms, so its calculator prices our events.

A stored price keeps the four common rates as plain decimal columns (USD per million input,
output, cache-read and cache-write tokens) and every other dimension the catalog has in
`extra_prices`, keyed by genai-prices' price keys:

    {"cache_write_1h_mtok": "6", "input_audio_mtok": "3", "requests_kcount": "5",
     "input_mtok": {"base": "3", "tiers": [{"start": 200000, "price": "6"}]}}

A value is a price or tiered prices (`base`, and `tiers` each applying to the whole request
once its input tokens pass `start`). An entry for one of the four common keys must be tiered
and its base equal to the column, so the columns always show the base price. Model names are
matched by genai-prices' match clauses, kept as JSON (`{"or": [{"equals": "gpt-4o"}, ...]}`).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any

from genai_prices import types as genai
from genai_prices.data_units import unit_data

from .money import MAX_PRICE_PER_MTOK

# The four rates stored as columns, by their genai-prices price key.
COLUMN_KEYS = {
    "input_mtok": "input_per_mtok",
    "output_mtok": "output_per_mtok",
    "cache_read_mtok": "cache_read_per_mtok",
    "cache_write_mtok": "cache_write_per_mtok",
}
PRICE_PRECISION = Decimal("1e-10")  # what price columns store


@cache
def price_keys() -> frozenset[str]:
    """Every price key genai-prices knows (input_mtok, cache_write_1h_mtok, requests_kcount, …)."""
    return frozenset(unit.get("price_key", usage_key) for usage_key, unit in unit_data.items())


@cache
def usage_keys() -> frozenset[str]:
    """Every usage count genai-prices knows (input_tokens, input_audio_tokens, web_searches, …)."""
    return frozenset(unit_data)


def _rate(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise ValueError(f"{where}: give a price as a decimal string, e.g. \"2.5\"")
    try:
        rate = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{where}: {value!r} is not a number") from None
    if not rate.is_finite() or not 0 <= rate <= MAX_PRICE_PER_MTOK:
        raise ValueError(f"{where}: a price is between 0 and {MAX_PRICE_PER_MTOK}")
    if rate != rate.quantize(PRICE_PRECISION):
        raise ValueError(f"{where}: at most 10 decimal places")
    return rate


def _tiered(value: Mapping, where: str) -> genai.TieredPrices:
    if set(value) != {"base", "tiers"} or not isinstance(value["tiers"], list) or not value["tiers"]:
        raise ValueError(f'{where}: tiered prices are {{"base": ..., "tiers": [{{"start": ..., "price": ...}}]}}')
    tiers, previous = [], -1
    for index, tier in enumerate(value["tiers"]):
        at = f"{where}.tiers[{index}]"
        if not isinstance(tier, Mapping) or set(tier) != {"start", "price"}:
            raise ValueError(f"{at}: a tier is {{\"start\": tokens, \"price\": ...}}")
        start = tier["start"]
        if isinstance(start, bool) or not isinstance(start, int) or start <= previous or start > 10**9:
            raise ValueError(f"{at}.start: whole token counts, rising from tier to tier")
        previous = start
        tiers.append(genai.Tier(start=start, price=_rate(tier["price"], f"{at}.price")))
    return genai.TieredPrices(base=_rate(value["base"], f"{where}.base"), tiers=tiers)


def parse_extra_prices(extra: Any, columns: Mapping[str, Decimal | None]) -> dict[str, Decimal | genai.TieredPrices]:
    """`extra_prices` as genai-prices values; ValueError naming the key when it is not valid.

    `columns` are the row's four plain rates by price key (None: not priced).
    """
    if not isinstance(extra, Mapping):
        raise ValueError("extra_prices: give an object of price keys, e.g. {\"cache_write_1h_mtok\": \"6\"}")
    parsed: dict[str, Decimal | genai.TieredPrices] = {}
    for key, value in extra.items():
        where = f"extra_prices.{key}"
        if key not in price_keys():
            raise ValueError(f"{where}: genai-prices has no price key {key!r}")
        if isinstance(value, Mapping):
            parsed[key] = _tiered(value, where)
        else:
            parsed[key] = _rate(value, where)
        if key in COLUMN_KEYS:
            rate = parsed[key]
            column = columns.get(key)
            if not isinstance(rate, genai.TieredPrices):
                raise ValueError(f"{where}: the flat {key} is its column; here only its tiers")
            if column is None or Decimal(column) != rate.base:
                raise ValueError(f"{where}.base: must equal the {COLUMN_KEYS[key]} column ({column})")
    return parsed


def extra_prices_json(prices: Mapping[str, Decimal | genai.TieredPrices]) -> dict[str, Any]:
    """The stored form of genai-prices values (decimals as strings, exactly)."""

    def text(rate: Decimal) -> str:
        return format(rate.normalize(), "f") if rate else "0"

    stored: dict[str, Any] = {}
    for key, value in prices.items():
        if isinstance(value, genai.TieredPrices):
            stored[key] = {
                "base": text(value.base),
                "tiers": [{"start": tier.start, "price": text(tier.price)} for tier in value.tiers],
            }
        else:
            stored[key] = text(value)
    return stored


def genai_model_price(columns: Mapping[str, Decimal | None], extra: Mapping[str, Any]) -> genai.ModelPrice:
    """The genai-prices `ModelPrice` of a stored row: its columns, with their tiers, and the rest."""
    rates: dict[str, Decimal | genai.TieredPrices] = {
        key: Decimal(value) for key, value in columns.items() if value is not None
    }
    rates.update(parse_extra_prices(extra, columns))
    return genai.ModelPrice(**rates)


def validate_rates(columns: Mapping[str, Decimal | None], extra: Any) -> None:
    """ValueError unless genai-prices can price with these rates: besides each value's shape, a
    narrower price needs its wider ones (a 1 h cache-write price needs a cache-write price) and
    overlapping ones their join (cache reads and audio input need audio cache reads)."""
    from genai_prices import Usage

    try:
        genai_model_price(columns, extra).calc_price(Usage())
    except ValueError as error:
        message = str(error)
        raise ValueError(message if message.startswith("extra_prices") else f"extra_prices: {message}") from None


# --- match clauses ------------------------------------------------------------------------------

_TEXT_CLAUSES: dict[str, Any] = {
    "equals": genai.ClauseEquals,
    "starts_with": genai.ClauseStartsWith,
    "ends_with": genai.ClauseEndsWith,
    "contains": genai.ClauseContains,
    "regex": genai.ClauseRegex,
}


def match_rule_json(clause: Any) -> dict[str, Any]:
    """A genai-prices match clause as JSON: `{"equals": "x"}`, `{"or": [...]}`, `{"and": [...]}`."""
    if isinstance(clause, genai.ClauseOr):
        return {"or": [match_rule_json(inner) for inner in clause.or_]}
    if isinstance(clause, genai.ClauseAnd):
        return {"and": [match_rule_json(inner) for inner in clause.and_]}
    for kind in _TEXT_CLAUSES:
        if hasattr(clause, kind):
            return {kind: getattr(clause, kind)}
    raise ValueError(f"unknown match clause {clause!r}")


def match_rule(rule: Any) -> Any:
    """The genai-prices clause a stored rule describes (its `is_match(name)` matches names)."""
    if not isinstance(rule, Mapping) or len(rule) != 1:
        raise ValueError("match_rule: one clause, e.g. {\"equals\": \"gpt-4o\"}")
    ((kind, value),) = rule.items()
    if kind in ("or", "and"):
        if not isinstance(value, list) or not value:
            raise ValueError(f"match_rule.{kind}: a list of clauses")
        inner = [match_rule(item) for item in value]
        return genai.ClauseOr(or_=inner) if kind == "or" else genai.ClauseAnd(and_=inner)
    if kind not in _TEXT_CLAUSES or not isinstance(value, str) or not value:
        raise ValueError(f"match_rule: clauses are {', '.join([*_TEXT_CLAUSES, 'or', 'and'])} with a text")
    return _TEXT_CLAUSES[kind](value)


# --- usage ----------------------------------------------------------------------------------------

# genai-prices' usage keys that events carry as fields of their own.
EVENT_FIELD_KEYS = {
    "input_tokens": "prompt_tokens",
    "output_tokens": "output_tokens",
    "cache_read_tokens": "cached_tokens",
    "cache_write_tokens": "cache_write_tokens",
}
MAX_USAGE_VALUE = 100_000_000  # as many as an event's token counts


@cache
def _ancestors() -> dict[str, tuple[str, ...]]:
    """Each usage key's totals: the keys whose dimensions it narrows (input_audio_tokens is part
    of input_tokens; cache_audio_read_tokens of cache_read_tokens and input_audio_tokens)."""
    dimensions = {key: set(unit.get("dimensions", {}).items()) for key, unit in unit_data.items()}
    return {
        key: tuple(sorted(other for other, dims in dimensions.items() if other != key and dims < own))
        for key, own in dimensions.items()
    }


def usage_problem(fields: Mapping[str, int], extra: Any) -> tuple[str, str] | None:
    """(field, message) for the first thing wrong with an event's `usage` object, else None.

    `fields` are the event's own counts by their names (prompt_tokens, …).
    """
    if not isinstance(extra, Mapping):
        return "usage", "must be an object of genai-prices usage keys, e.g. {\"input_audio_tokens\": 120}"
    if len(extra) > 64:
        return "usage", "at most 64 keys"
    values = {key: fields[name] for key, name in EVENT_FIELD_KEYS.items()}
    for key, value in extra.items():
        where = f"usage.{key}"
        if key in EVENT_FIELD_KEYS:
            return where, f"send it as the event's {EVENT_FIELD_KEYS[key]}"
        if key not in usage_keys():
            return where, "is not a genai-prices usage key"
        if isinstance(value, bool) or not isinstance(value, int):
            return where, "must be a whole number"
        if not 0 <= value <= MAX_USAGE_VALUE:
            return where, f"must be between 0 and {MAX_USAGE_VALUE}"
        values[key] = value
    for key in extra:
        for total in _ancestors()[key]:
            if total in values and values[key] > values[total]:
                named = EVENT_FIELD_KEYS.get(total) or f"usage.{total}"
                return f"usage.{key}", f"must not exceed {named} ({values[total]})"
    return None


@cache
def related_usage_keys(key: str) -> frozenset[str]:
    """The usage keys whose count can change what a price charges when `key` is reported: those it
    is part of or that are part of it (input_audio_tokens: input_tokens, cache_audio_read_tokens,
    …), leaving out the event's own four counts, which are always reported."""
    own = set(unit_data[key].get("dimensions", {}).items())
    related = {
        other
        for other, unit in unit_data.items()
        if (dims := set(unit.get("dimensions", {}).items())) <= own or own <= dims
    }
    return frozenset(related - set(EVENT_FIELD_KEYS))


def priced_usage_keys(price_keys_set: Any) -> frozenset[str]:
    """The usage keys a set of price keys prices (input_audio_mtok → input_audio_tokens)."""
    return frozenset(
        usage_key for usage_key, unit in unit_data.items() if unit.get("price_key", usage_key) in price_keys_set
    )
