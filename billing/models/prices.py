"""Prices: what the platform charges per model (from the genai-prices catalog or an admin), and
an organization's own price list (overrides and discounts) that applies to it alone."""

from datetime import UTC, datetime

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from billing.pricing.money import MAX_PRICE_PER_MTOK
from billing.pricing.rates import COLUMN_KEYS, match_rule, validate_rates

# Catalog prices with no start date are in force from the beginning of time.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PRICE_BOUNDS = [MinValueValidator(0), MaxValueValidator(MAX_PRICE_PER_MTOK)]


class PriceRates(models.Model):
    """Every dimension of a price: the four common rates as columns, the rest in `extra_prices`.

    Rates are USD per million tokens (see `billing.pricing.rates` for `extra_prices`' keys, which
    are genai-prices' own: tiers, 1 h cache writes, audio/image/video tokens, per-request and
    per-search prices). Bounded so that no event's cost can pass what an event's money column
    holds (see billing.pricing.money).
    """

    input_per_mtok = models.DecimalField("input $/1M", max_digits=20, decimal_places=10, validators=PRICE_BOUNDS)
    output_per_mtok = models.DecimalField("output $/1M", max_digits=20, decimal_places=10, validators=PRICE_BOUNDS)
    cache_read_per_mtok = models.DecimalField(
        "cache read $/1M", max_digits=20, decimal_places=10, null=True, blank=True, validators=PRICE_BOUNDS,
        help_text="Empty: cached prompt tokens cost the input price.",
    )
    cache_write_per_mtok = models.DecimalField(
        "cache write $/1M", max_digits=20, decimal_places=10, null=True, blank=True, validators=PRICE_BOUNDS,
        help_text="Empty: prompt tokens written to the cache cost the input price.",
    )
    extra_prices = models.JSONField(
        default=dict, blank=True,
        help_text='Other dimensions by genai-prices price key, e.g. {"cache_write_1h_mtok": "6", '
        '"input_mtok": {"base": "3", "tiers": [{"start": 200000, "price": "6"}]}}.',
    )

    class Meta:
        abstract = True

    def rate_columns(self) -> dict:
        return {key: getattr(self, column) for key, column in COLUMN_KEYS.items()}

    def clean(self) -> None:
        super().clean()
        try:
            validate_rates(self.rate_columns(), self.extra_prices)
        except ValueError as error:
            raise ValidationError({"extra_prices": str(error)}) from None


class ModelPrice(PriceRates):
    """The platform's price for one model at one provider, in force from `effective_from`.

    A price change is a new row with a later `effective_from`, so events keep the price they
    were made at. A row with a daily window (`daily_from`–`daily_until`, UTC) applies inside it
    over the row without one (DeepSeek's off-peak prices). Names match the model by its own name,
    by the catalog's `match_rule` (genai-prices clauses), or by `match_patterns`: exact names,
    shell-style globs (`gpt-4o-2024-*`) or regular expressions written `re:<pattern>`.
    """

    class Source(models.TextChoices):
        CATALOG = "catalog", "genai-prices catalog"
        ADMIN = "admin", "Admin"

    provider = models.CharField(max_length=64, db_index=True)
    model = models.CharField(max_length=200, db_index=True, help_text="Canonical model name.")
    match_patterns = models.JSONField(default=list, blank=True)
    match_rule = models.JSONField(
        null=True, blank=True, help_text='The catalog\'s match clauses, e.g. {"or": [{"equals": "gpt-4o"}]}.'
    )
    catalog_rank = models.PositiveIntegerField(
        null=True, blank=True, editable=False,
        help_text="The model's place in its provider's catalog list: the first whose rule matches a name wins.",
    )
    effective_from = models.DateTimeField(db_index=True)
    daily_from = models.TimeField(null=True, blank=True, help_text="UTC. With daily_until: applies only then.")
    daily_until = models.TimeField(null=True, blank=True, help_text="UTC; may be before daily_from (overnight).")
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.ADMIN)
    admin_edited = models.BooleanField(
        default=False, help_text="Set when an admin changes the row; sync_prices then leaves it alone."
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "model", "effective_from"], condition=models.Q(daily_from__isnull=True),
                name="one_price_per_model_and_start",
            ),
            models.UniqueConstraint(
                fields=["provider", "model", "effective_from", "daily_from"],
                condition=models.Q(daily_from__isnull=False), name="one_daily_price_per_model_start_and_time",
            ),
            models.CheckConstraint(
                condition=models.Q(daily_from__isnull=True, daily_until__isnull=True)
                | models.Q(daily_from__isnull=False, daily_until__isnull=False),
                name="daily_window_has_both_ends",
            ),
        ]
        ordering = ["provider", "model", "-effective_from"]

    def __str__(self) -> str:
        window = f" {self.daily_from:%H:%M}-{self.daily_until:%H:%M} UTC" if self.daily_from else ""
        return f"{self.provider}/{self.model} from {self.effective_from:%Y-%m-%d}{window}"

    def clean(self) -> None:
        super().clean()
        if (self.daily_from is None) != (self.daily_until is None):
            raise ValidationError({"daily_until": "A daily window needs both daily_from and daily_until."})
        if self.match_rule is not None:
            try:
                match_rule(self.match_rule)
            except ValueError as error:
                raise ValidationError({"match_rule": str(error)}) from None


class PriceListEntry(models.Model):
    """Shared by an organization's overrides and discounts: whose, and when it applies."""

    organization = models.ForeignKey("teams.Organization", on_delete=models.CASCADE, related_name="+")
    effective_from = models.DateTimeField(default=timezone.now)
    effective_until = models.DateTimeField(null=True, blank=True, help_text="Empty: until changed or ended.")
    note = models.CharField(max_length=200, blank=True, help_text="e.g. the contract it comes from.")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True

    def clean(self) -> None:
        super().clean()
        if self.effective_until is not None and self.effective_until <= self.effective_from:
            raise ValidationError({"effective_until": "Must be after effective_from."})


class OrganizationPrice(PriceListEntry, PriceRates):
    """An organization's negotiated price for one model: replaces the platform's for its events."""

    provider = models.CharField(max_length=64)
    model = models.CharField(max_length=200, help_text="The platform's model name (or the name clients send).")

    class Meta:
        indexes = [models.Index(fields=["organization", "provider", "model"], name="orgprice_org_model")]
        ordering = ["provider", "model", "-effective_from"]

    def __str__(self) -> str:
        return f"{self.organization_id}: {self.provider}/{self.model} from {self.effective_from:%Y-%m-%d}"

    def clean(self) -> None:
        super().clean()
        if not self.provider or not self.model:
            raise ValidationError({"model": "An override names a provider and a model."})


class OrganizationDiscount(PriceListEntry):
    """A percentage off the platform's prices (negative: a markup) for a provider, a model, or all."""

    percent = models.DecimalField(
        max_digits=7, decimal_places=4,
        validators=[MinValueValidator(-1000), MaxValueValidator(100)],
        help_text="10 = 10 % off; -5 = a 5 % markup.",
    )
    provider = models.CharField(max_length=64, blank=True, help_text="Empty: every provider.")
    model = models.CharField(max_length=200, blank=True, help_text="Empty: every model (of the provider).")

    class Meta:
        indexes = [models.Index(fields=["organization", "provider", "model"], name="orgdiscount_org_model")]
        ordering = ["provider", "model", "-effective_from"]

    def __str__(self) -> str:
        scope = "/".join(part for part in (self.provider, self.model) if part) or "everything"
        return f"{self.organization_id}: {self.percent}% off {scope} from {self.effective_from:%Y-%m-%d}"
