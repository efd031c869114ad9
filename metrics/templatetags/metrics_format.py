"""Numbers for people on the metrics pages: 1,234,567 tokens, 840 ms, 2.35 s, 12.5%, $1,234.57.

The views use the same functions for the display strings of the dashboard's JSON, so a figure
reads the same whether the server rendered it or the auto-refresh wrote it.
"""

from __future__ import annotations

from decimal import Decimal

from django import template

from billing.pricing.formatting import usd

register = template.Library()
register.filter("usd", usd)

DASH = "—"


@register.filter
def thousands(value) -> str:
    if value is None or value == "":
        return DASH
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}"
    return f"{int(value):,}"


@register.filter
def duration_ms(value) -> str:
    """840 ms, 3.2 ms, 2.35 s, 1 min 05 s."""
    if value is None or value == "":
        return DASH
    ms = float(value)
    if ms == 0:
        return "0 ms"
    if ms < 10:
        return f"{ms:.1f} ms"
    if ms < 1000:
        return f"{ms:,.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    minutes, seconds = divmod(round(ms / 1000), 60)
    return f"{minutes:,} min {seconds:02d} s"


@register.filter
def percent(value) -> str:
    """A figure already in percent (12.5 -> 12.5%)."""
    if value is None or value == "":
        return DASH
    number = float(value)
    if number and abs(number) < 0.1:
        return f"{number:.2f}%"
    return f"{number:,.1f}%"


@register.filter
def per_thousand_tokens(cost, tokens) -> str:
    """Cost per 1,000 tokens, or a dash when no tokens were used."""
    if not tokens:
        return DASH
    return usd(Decimal(cost or 0) * 1000 / Decimal(tokens))


@register.filter
def full_money(value) -> str:
    """The exact stored amount, every digit (CSV and the request page's detail)."""
    if value is None or value == "":
        return ""
    return format(Decimal(value), "f")


@register.filter
def usd_request(value) -> str:
    """One request's cost: cents hide the differences that matter, so amounts under $1 keep 4 decimals."""
    if value is None or value == "":
        return DASH
    amount = Decimal(value)
    if amount == 0 or abs(amount) >= 1 or abs(amount) < Decimal("0.0001"):
        return usd(amount)
    return f"${amount.quantize(Decimal('0.0001')):f}"


@register.filter
def plain_decimal(value) -> str:
    """A decimal without trailing zeros (0.1500000000 -> 0.15)."""
    if value is None or value == "":
        return DASH
    return format(Decimal(value).normalize(), "f")
