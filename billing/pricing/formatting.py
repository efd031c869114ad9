"""Money for people: $1,234.57 (sub-cent amounts keep enough digits to not read as zero).

Part of pricing, so every layer above (metrics' pages, budgets' pages and emails) formats money
the same way; `humanize_money` and `metrics_format` register it as their `usd` template filter.
"""

from decimal import ROUND_HALF_EVEN, Decimal


def usd(value) -> str:
    if value is None or value == "":
        return "—"
    amount = Decimal(value)
    if amount != 0 and abs(amount) < Decimal("0.01"):
        return f"${amount.quantize(Decimal('0.000001'), ROUND_HALF_EVEN).normalize():f}"
    return f"${amount.quantize(Decimal('0.01'), ROUND_HALF_EVEN):,}"
