"""Usage breakdowns another tool reports (audio, reasoning, image tokens…) → an event's `usage` object.

A breakdown only refines a total the event already carries, so a detail that the event could not
hold (not a whole number, or larger than its total, as some provider and tool versions report) is
left out and kept in the event's metadata instead: the call is still recorded and priced on its
totals, and ingest never refuses a well-formed log over a detail. Whether a detail fits is the
ingest rule itself (`usage_problem`), so the integrations and `/api/v1/events` cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from billing.pricing.rates import EVENT_FIELD_KEYS, usage_problem

MAX_IGNORED_TEXT = 100


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def usage_parts(fields: Mapping[str, Any], details: Mapping[str, Any]) -> tuple[dict[str, int], dict[str, Any]]:
    """(usage, ignored): the details, by genai-prices usage key, that fit the event's own counts
    (`fields`: prompt_tokens, output_tokens, cached_tokens, cache_write_tokens as the event will
    have them), and those that do not. Absent and zero details are neither."""
    counts = {name: fields.get(name, 0) if _whole(fields.get(name, 0)) else 0 for name in EVENT_FIELD_KEYS.values()}
    usage: dict[str, int] = {}
    ignored: dict[str, Any] = {}
    for key, value in details.items():
        if value is None or (_whole(value) and value == 0):
            continue
        if not _whole(value) or usage_problem(counts, {**usage, key: value}) is not None:
            ignored[key] = value if _whole(value) else str(value)[:MAX_IGNORED_TEXT]
            continue
        usage[key] = value
    return usage, ignored
