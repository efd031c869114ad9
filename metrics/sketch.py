"""A mergeable latency sketch: counts in fixed logarithmic buckets (the DDSketch mapping).

Bucket i holds values in (γ^(i-1), γ^i] with γ = (1+α)/(1-α); answering 2γ^i/(γ+1) for any value
in it is within α relative error. With α = 1 % every P50/P95/P99 computed from merged rollups
is within 1 % of the exact value. Fixed buckets (rather than the ddsketch package's objects) let
the database compute bucket indexes inside the rollup's GROUP BY, so raw latencies never leave
PostgreSQL; merging two sketches is adding counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from django.db.models import Case, F, FloatField, IntegerField, Value, When
from django.db.models.functions import Cast, Ceil, Ln

ALPHA = 0.01
GAMMA = (1 + ALPHA) / (1 - ALPHA)
LN_GAMMA = math.log(GAMMA)
ZERO_BUCKET = -(10**6)  # latencies of 0 ms (cache hits answered instantly, clients that omit it)


def bucket_of(value_ms: float) -> int:
    if value_ms <= 0:
        return ZERO_BUCKET
    return math.ceil(math.log(value_ms) / LN_GAMMA)


def bucket_value(index: int) -> float:
    if index == ZERO_BUCKET:
        return 0.0
    return 2 * GAMMA**index / (GAMMA + 1)


def bucket_expression(field: str = "latency_ms"):
    """The same bucket index computed by the database (PostgreSQL natively, SQLite via Django's LN)."""
    return Case(
        When(**{f"{field}__lte": 0}, then=Value(ZERO_BUCKET)),
        default=Cast(Ceil(Ln(F(field)) / Value(LN_GAMMA, output_field=FloatField())), IntegerField()),
        output_field=IntegerField(),
    )


def merge(sketches: Iterable[Mapping]) -> dict[int, int]:
    merged: dict[int, int] = {}
    for sketch in sketches:
        for index, count in sketch.items():
            index = int(index)  # JSON object keys are strings
            merged[index] = merged.get(index, 0) + count
    return merged


def quantiles(sketch: Mapping[int, int], percentiles: Iterable[int]) -> dict[str, float | None]:
    """Nearest-rank percentiles (the value at rank ⌈p/100 · n⌉), as estimated from the buckets."""
    total = sum(sketch.values())
    wanted = sorted(percentiles)
    result: dict[str, float | None] = {f"p{p}": None for p in wanted}
    if not total:
        return result
    ranks = [(p, max(1, math.ceil(p / 100 * total))) for p in wanted]
    seen = 0
    position = 0
    for index in sorted(sketch):
        seen += sketch[index]
        while position < len(ranks) and seen >= ranks[position][1]:
            result[f"p{ranks[position][0]}"] = round(bucket_value(index), 3)
            position += 1
        if position == len(ranks):
            break
    return result


def as_json(sketch: Mapping[int, int]) -> dict[str, int]:
    return {str(index): count for index, count in sketch.items() if count}
