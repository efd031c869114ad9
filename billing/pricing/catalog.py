"""Loading the genai-prices catalog bundled with the package into the price table (offline)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from billing.models.prices import EPOCH, ModelPrice

from .book import forget_price_book
from .services import reprice_after_change

PRICE_FIELDS = ("input_per_mtok", "output_per_mtok", "cache_read_per_mtok", "cache_write_per_mtok", "match_patterns")


@dataclass
class SyncResult:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    kept_admin_edits: int = 0


PRICE_QUANTUM = Decimal("1e-10")  # ModelPrice stores 10 decimal places


def _flat_decimal(value) -> Decimal | None:
    """A catalog price (or the base of a tiered one) at the precision we store.

    The catalog carries some prices through floats (0.18000000000000002); rounding to the stored
    precision is what makes a second sync see them as unchanged.
    """
    value = getattr(value, "base", value)
    if value is None:
        return None
    return Decimal(value).quantize(PRICE_QUANTUM)


def _patterns(match) -> list[str]:
    """genai-prices match clauses as our pattern strings (ANDed clauses cannot be expressed; skipped)."""
    kind = type(match).__name__
    if kind == "ClauseEquals":
        return [match.equals.lower()]
    if kind == "ClauseStartsWith":
        return [f"{match.starts_with.lower()}*"]
    if kind == "ClauseEndsWith":
        return [f"*{match.ends_with.lower()}"]
    if kind == "ClauseContains":
        return [f"*{match.contains.lower()}*"]
    if kind == "ClauseRegex":
        return [f"re:{match.regex}"]
    if kind == "ClauseOr":
        return [pattern for clause in match.or_ for pattern in _patterns(clause)]
    return []


def catalog_prices() -> list[dict]:
    """Every token price in the genai-prices snapshot bundled with the package (no network)."""
    from genai_prices import data_snapshot

    rows = []
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            patterns = [p for p in dict.fromkeys(_patterns(model.match)) if p != model.id.lower()]
            priced = model.prices if isinstance(model.prices, list) else [model.prices]
            for entry in priced:
                constraint = getattr(entry, "constraint", None)
                prices = getattr(entry, "prices", entry)
                if constraint is None:
                    start = EPOCH
                elif hasattr(constraint, "start_date"):
                    start = datetime.combine(constraint.start_date, datetime.min.time(), tzinfo=UTC)
                else:  # time-of-day discounts are not modelled; the standard price applies
                    continue
                input_p = _flat_decimal(getattr(prices, "input_mtok", None))
                output_p = _flat_decimal(getattr(prices, "output_mtok", None))
                if input_p is None and output_p is None:
                    continue  # priced per image, request or second, not per token
                rows.append(
                    {
                        "provider": provider.id,
                        "model": model.id,
                        "effective_from": start,
                        "input_per_mtok": input_p or Decimal(0),
                        "output_per_mtok": output_p or Decimal(0),
                        "cache_read_per_mtok": _flat_decimal(getattr(prices, "cache_read_mtok", None)),
                        "cache_write_per_mtok": _flat_decimal(getattr(prices, "cache_write_mtok", None)),
                        "match_patterns": patterns,
                    }
                )
    return rows


def _same(row: ModelPrice, values: dict) -> bool:
    for name in PRICE_FIELDS:
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
    existing = {(r.provider, r.model, r.effective_from): r for r in ModelPrice.objects.all()}
    to_create, to_update, seen = [], [], set()
    now = timezone.now()
    for values in catalog_prices():
        key = (values["provider"], values["model"], values["effective_from"])
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
            for name in PRICE_FIELDS:
                setattr(row, name, values[name])
            row.updated_at = now
            to_update.append(row)
    ModelPrice.objects.bulk_create(to_create, batch_size=500)
    ModelPrice.objects.bulk_update(to_update, [*PRICE_FIELDS, "updated_at"], batch_size=500)
    result.created, result.updated = len(to_create), len(to_update)
    transaction.on_commit(forget_price_book)
    for row in [*to_create, *to_update]:
        reprice_after_change(provider=row.provider, model=row.model, effective_from=row.effective_from)
    return result
