"""The `usd` filter for billing's templates: money as billing's pricing part formats it."""

from django import template

from billing.pricing.formatting import usd

register = template.Library()
register.filter("usd", usd)
