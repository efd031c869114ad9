"""Loading the genai-prices catalog bundled with the package into the price table (offline).

Every dimension the catalog prices is kept (tiers, 1 h cache writes, audio/image/video tokens,
per-request and per-search prices), with the catalog's match clauses and its order of models,
its start-dated changes (rows with a later `effective_from`) and its time-of-day prices (rows
with a daily window), so stored prices cost events exactly as genai-prices' calculator does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone
from genai_prices import types as genai

from billing.models.prices import EPOCH, ModelPrice

from .book import RATE_FIELDS, forget_price_book
from .rates import COLUMN_KEYS, PRICE_PRECISION, extra_prices_json, match_rule_json
from .services import reprice_after_change

# What sync keeps up to date on a catalog row.
SYNCED_FIELDS = (*RATE_FIELDS, "match_rule", "catalog_rank", "daily_until")


@dataclass
class SyncResult:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    kept_admin_edits: int = 0


def _stored(value: Decimal) -> Decimal:
    """A catalog price at the precision we store. The catalog carries some prices through floats
    (0.18000000000000002); rounding is what makes a second sync see them as unchanged."""
    return Decimal(value).quantize(PRICE_PRECISION)


def _stored_rate(value: Any) -> Decimal | genai.TieredPrices:
    if isinstance(value, genai.TieredPrices):
        tiers = [genai.Tier(start=tier.start, price=_stored(tier.price)) for tier in value.tiers]
        return genai.TieredPrices(base=_stored(value.base), tiers=tiers)
    return _stored(value)


def _entry_values(rates: Any) -> dict[str, Any]:
    """One catalog price entry as our columns and `extra_prices`."""
    columns: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in rates.__dict__.items():
        if value is None or key.startswith("_"):
            continue
        rate = _stored_rate(value)
        if key in COLUMN_KEYS:
            columns[COLUMN_KEYS[key]] = rate.base if isinstance(rate, genai.TieredPrices) else rate
            if isinstance(rate, genai.TieredPrices):
                extra[key] = rate
        else:
            extra[key] = rate
    return {
        "input_per_mtok": columns.get("input_per_mtok", Decimal(0)),
        "output_per_mtok": columns.get("output_per_mtok", Decimal(0)),
        "cache_read_per_mtok": columns.get("cache_read_per_mtok"),
        "cache_write_per_mtok": columns.get("cache_write_per_mtok"),
        "extra_prices": extra_prices_json(extra),
    }


def catalog_prices() -> list[dict]:
    """Every price in the genai-prices snapshot bundled with the package (no network)."""
    from genai_prices import data_snapshot

    rows = []
    for provider in data_snapshot.get_snapshot().providers:
        for rank, model in enumerate(provider.models):
            entries = model.prices if isinstance(model.prices, list) else [genai.ConditionalPrice(prices=model.prices)]
            for entry in entries:
                constraint = entry.constraint
                start, daily = EPOCH, (None, None)
                if isinstance(constraint, genai.StartDateConstraint):
                    start = datetime.combine(constraint.start_date, datetime.min.time(), tzinfo=UTC)
                elif isinstance(constraint, genai.TimeOfDateConstraint):
                    daily = (_utc_time(constraint.start_time), _utc_time(constraint.end_time))
                rows.append(
                    {
                        "provider": provider.id,
                        "model": model.id,
                        "effective_from": start,
                        "daily_from": daily[0],
                        "daily_until": daily[1],
                        "match_rule": match_rule_json(model.match),
                        "catalog_rank": rank,
                        **_entry_values(entry.prices),
                    }
                )
    return rows


def _utc_time(value):
    """A catalog time of day as a naive UTC time (how the daily window columns store it)."""
    if value.tzinfo is not None:
        value = datetime.combine(EPOCH.date(), value).astimezone(UTC).time()
    return value.replace(tzinfo=None)


def _same(row: ModelPrice, values: dict) -> bool:
    for name in SYNCED_FIELDS:
        current, wanted = getattr(row, name), values[name]
        if isinstance(wanted, Decimal) and current is not None:
            if Decimal(current) != wanted:
                return False
        elif current != wanted:
            return False
    return True


@transaction.atomic
def price_catalog_sync() -> SyncResult:
    """Load the bundled catalog. Idempotent; rows an admin edited are left as they are."""
    result = SyncResult()
    existing = {(r.provider, r.model, r.effective_from, r.daily_from): r for r in ModelPrice.objects.all()}
    to_create, to_update, seen = [], [], set()
    now = timezone.now()
    for values in catalog_prices():
        key = (values["provider"], values["model"], values["effective_from"], values["daily_from"])
        if key in seen:  # the catalog lists a few models twice; the first entry wins
            continue
        seen.add(key)
        row = existing.get(key)
        if row is None:
            to_create.append(ModelPrice(source=ModelPrice.Source.CATALOG, **values))
        elif row.admin_edited:
            result.kept_admin_edits += 1
        elif _same(row, values):
            result.unchanged += 1
        else:
            for name in SYNCED_FIELDS:
                setattr(row, name, values[name])
            row.updated_at = now
            to_update.append(row)
    ModelPrice.objects.bulk_create(to_create, batch_size=500)
    ModelPrice.objects.bulk_update(to_update, [*SYNCED_FIELDS, "updated_at"], batch_size=500)
    result.created, result.updated = len(to_create), len(to_update)
    transaction.on_commit(forget_price_book)
    for row in [*to_create, *to_update]:
        reprice_after_change(
            provider=row.provider, model=row.model, effective_from=row.effective_from, daily=row.daily_from is not None
        )
    return result
