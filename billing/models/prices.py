"""Prices: what the platform charges per model, from the genai-prices catalog or an admin."""

from datetime import UTC, datetime

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from billing.pricing.money import MAX_PRICE_PER_MTOK

# Catalog prices with no start date are in force from the beginning of time.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PRICE_BOUNDS = [MinValueValidator(0), MaxValueValidator(MAX_PRICE_PER_MTOK)]


class ModelPrice(models.Model):
    """USD per million tokens for one model at one provider, in force from `effective_from`.

    A price change is a new row with a later `effective_from`, so events keep the price they
    were made at. `match_patterns` lists other names the model is called by: exact names,
    shell-style globs (`gpt-4o-2024-*`) or regular expressions written `re:<pattern>`.
    """

    class Source(models.TextChoices):
        CATALOG = "catalog", "genai-prices catalog"
        ADMIN = "admin", "Admin"

    provider = models.CharField(max_length=64, db_index=True)
    model = models.CharField(max_length=200, db_index=True, help_text="Canonical model name.")
    match_patterns = models.JSONField(default=list, blank=True)
    # Bounded so that no event's cost can pass what an event's money column holds (see billing.money).
    input_per_mtok = models.DecimalField("input $/1M", max_digits=20, decimal_places=10, validators=PRICE_BOUNDS)
    output_per_mtok = models.DecimalField("output $/1M", max_digits=20, decimal_places=10, validators=PRICE_BOUNDS)
    cache_read_per_mtok = models.DecimalField(
        "cache read $/1M", max_digits=20, decimal_places=10, null=True, blank=True, validators=PRICE_BOUNDS,
        help_text="Empty: cached prompt tokens cost the input price.",
    )
    cache_write_per_mtok = models.DecimalField(
        "cache write $/1M", max_digits=20, decimal_places=10, null=True, blank=True, validators=PRICE_BOUNDS
    )
    effective_from = models.DateTimeField(db_index=True)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.ADMIN)
    admin_edited = models.BooleanField(
        default=False, help_text="Set when an admin changes the row; sync_prices then leaves it alone."
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "model", "effective_from"], name="one_price_per_model_and_start"
            )
        ]
        ordering = ["provider", "model", "-effective_from"]

    def __str__(self) -> str:
        return f"{self.provider}/{self.model} from {self.effective_from:%Y-%m-%d}"
