"""The FOCUS export (`GET /api/v1/exports/focus`): the caller's spend as FinOps Open Cost and Usage
Specification (FOCUS) 1.2 cost and usage rows, one row per charge.

A charge is one UTC day × team × provider × model, summed from raw events (`UsageEvent`), so the
export sees what raw retention keeps (`RAW_EVENT_RETENTION_DAYS`); serving whole days from the daily
rollups is a later step and changes no figure. The grouped query is read through `.iterator()` (a
server-side cursor on PostgreSQL) in chunks and each row is written as it arrives: the export never
holds more than one chunk in memory, whatever the range.

The FOCUS rules followed (FOCUS_Spec repository, `specification/columns/*.md`, `attributes/*.md`):
- Date/Time Format: UTC, extended ISO 8601 `YYYY-MM-DDTHH:mm:ssZ`. ChargePeriodStart is inclusive,
  ChargePeriodEnd exclusive; BillingPeriodStart/End likewise (here: the UTC calendar month).
- Numeric Format: a plain integer or decimal, no exponent, no sign for positive values, no
  thousands separators or currency symbols. BilledCost, EffectiveCost, ListCost, ConsumedQuantity
  and PricingQuantity are of type Decimal; money is the exact sum of the events' 1e-10 USD units.
- ChargeCategory is one of Usage, Purchase, Tax, Credit, Adjustment: every row here is "Usage".
  ChargeClass is null (no row is a correction of an earlier period).
- BillingCurrency follows Currency Format (ISO 4217): "USD".
- ServiceCategory is one of the spec's allowed values: "AI and Machine Learning".
- Unit Format: count-based units are capitalised plural nouns, "Tokens" among the recommended ones.
- Tags follow Key-Value Format (a JSON object of string/number/boolean/null values, no nesting);
  provider-defined tags carry a provider-specified prefix: ours is `llmcost/`.
- Custom columns start with `x_`.

Choices where the spec leaves room:
- BillingAccountId is the organization's slug (unique, and what the API and pages name it by);
  SubAccountId the team's id, SubAccountName its alias.
- ProviderName, PublisherName and InvoiceIssuerName are the LLM provider of the price used (an
  event whose provider is unknown reads "unknown"); ServiceName is "<provider> LLM API" (the offering
  purchased; the model is the row's SKU-like detail, in ChargeDescription and x_Model).
- Tags hold `llmcost/team` (the team's alias). A charge sums many users' and end users' calls, and
  FOCUS Tags are one finalized value per key for the row, so user and end user are not tags; the
  reports API (`group_by=user_id`) breaks spend down by them. Declared dimensions will join as
  `llmcost/<key>` once organizations can declare them.
- A charge of zero tokens (a call that failed before any token, or a client-priced call) is still
  a row: ConsumedQuantity 0, so BilledCost sums to the period's spend.
- A range that does not start or end at midnight UTC clips the first and last day's charge period
  to it, so ChargePeriodStart/End always bound the events a row sums.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Count, F
from django.db.models.functions import TruncDay

from llmcost_project.db import Sum
from teams.access import AccessScope
from teams.models import Organization

from .forecasts import calendar_period
from .reports import list_cost
from .selectors import EventFilter, scoped_events

# FOCUS 1.2 columns, in the spec's order (alphabetical), then our custom x_ columns.
COLUMNS = (
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "ConsumedQuantity",
    "ConsumedUnit",
    "EffectiveCost",
    "InvoiceIssuerName",
    "ListCost",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "ServiceCategory",
    "ServiceName",
    "SubAccountId",
    "SubAccountName",
    "Tags",
    "x_Model",
    "x_Requests",
)
CURRENCY = "USD"  # every amount is stored in USD (billing.pricing.money)
TOKENS = "Tokens"
SERVICE_CATEGORY = "AI and Machine Learning"
UNKNOWN_PROVIDER = "unknown"
TAG_PREFIX = "llmcost/"
CHUNK_ROWS = 2000  # grouped rows fetched per round trip


@dataclass(frozen=True)
class Charge:
    """One row's figures: a UTC day's events of one team, provider and model."""

    day: datetime  # midnight UTC
    team_id: int
    team_alias: str
    provider: str
    model: str
    cost: Decimal
    list_cost: Decimal
    tokens: int
    requests: int


def focus_time(moment: datetime) -> str:
    """FOCUS Date/Time Format: UTC, `YYYY-MM-DDTHH:mm:ssZ`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def decimal_text(value: Decimal | int) -> str:
    """FOCUS Numeric Format: the exact value as a plain integer or decimal, never an exponent."""
    value = Decimal(value)
    if value == 0:
        return "0"
    text = format(value.normalize(), "f")  # "f" never writes an exponent, whatever normalize() gives
    return text


def focus_charges(*, scope: AccessScope, start: datetime, end: datetime,
                  team_alias: str | None = None) -> Iterator[Charge]:
    """The caller's charges in [start, end), ordered by day, team, provider and model.

    The events come through the access scope (`scoped_events`); a team_alias the caller cannot see is
    a 404, raised here, before the first row is read (the view calls this before it streams).
    """
    events = scoped_events(scope=scope, filters=EventFilter(start=start, end=end, team_alias=team_alias))
    grouped = (
        events.order_by()
        .annotate(day=TruncDay("timestamp", tzinfo=UTC), team_alias=F("team__alias"))
        .values("day", "team_id", "team_alias", "provider", "model")  # names apart from the fields summed
        .annotate(billed=Sum("cost"), listed=Sum(list_cost()), tokens=Sum("total_tokens"), requests=Count("id"))
        .order_by("day", "team_alias", "provider", "model")
    )
    rows = grouped.iterator(chunk_size=CHUNK_ROWS)  # a server-side cursor on PostgreSQL
    return (_charge(row) for row in rows)


def _charge(row: Mapping[str, Any]) -> Charge:
    day = row["day"]
    if isinstance(day, str):  # defensive: some backends hand truncated times back as text
        day = datetime.fromisoformat(day)
    if day.tzinfo is None:
        day = day.replace(tzinfo=UTC)
    return Charge(
        day=day.astimezone(UTC), team_id=row["team_id"], team_alias=row["team_alias"], provider=row["provider"],
        model=row["model"], cost=Decimal(row["billed"] or 0), list_cost=Decimal(row["listed"] or 0),
        tokens=int(row["tokens"] or 0), requests=int(row["requests"]),
    )


def focus_row(*, organization: Organization, charge: Charge, start: datetime, end: datetime) -> list[str]:
    """One charge as FOCUS column values, in `COLUMNS` order (null as the empty string)."""
    provider = charge.provider or UNKNOWN_PROVIDER
    period_start = max(charge.day, start)
    period_end = min(charge.day + timedelta(days=1), end)
    billing_start, billing_end = calendar_period("UTC", "monthly", charge.day)  # FOCUS billing periods: UTC months
    billed = decimal_text(charge.cost)
    values = {
        "BilledCost": billed,
        "BillingAccountId": organization.slug,
        "BillingAccountName": organization.name,
        "BillingCurrency": CURRENCY,
        "BillingPeriodEnd": focus_time(billing_end),
        "BillingPeriodStart": focus_time(billing_start),
        "ChargeCategory": "Usage",
        "ChargeClass": "",
        "ChargeDescription": f"{charge.model} tokens, {charge.team_alias}",
        "ChargeFrequency": "Usage-Based",
        "ChargePeriodEnd": focus_time(period_end),
        "ChargePeriodStart": focus_time(period_start),
        "ConsumedQuantity": decimal_text(charge.tokens),
        "ConsumedUnit": TOKENS,
        "EffectiveCost": billed,  # no prepaid commitments to amortize: what is billed is what it costs
        "InvoiceIssuerName": provider,
        "ListCost": decimal_text(charge.list_cost),
        "PricingQuantity": decimal_text(charge.tokens),
        "PricingUnit": TOKENS,
        "ProviderName": provider,
        "PublisherName": provider,
        "ServiceCategory": SERVICE_CATEGORY,
        "ServiceName": f"{provider} LLM API",
        "SubAccountId": str(charge.team_id),
        "SubAccountName": charge.team_alias,
        "Tags": json.dumps({f"{TAG_PREFIX}team": charge.team_alias}, ensure_ascii=False, separators=(",", ":")),
        "x_Model": charge.model,
        "x_Requests": str(charge.requests),
    }
    return [values[name] for name in COLUMNS]


def focus_rows(*, scope: AccessScope, start: datetime, end: datetime,
               team_alias: str | None = None) -> Iterator[list[str]]:
    """The header, then one row per charge. Resolves the team (or 404s) when called, not when iterated."""
    charges = focus_charges(scope=scope, start=start, end=end, team_alias=team_alias)
    organization = scope.organization

    def rows() -> Iterator[list[str]]:
        yield list(COLUMNS)
        for charge in charges:
            yield focus_row(organization=organization, charge=charge, start=start, end=end)

    return rows()
