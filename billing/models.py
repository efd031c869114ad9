from datetime import UTC, datetime

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from .money import MAX_PRICE_PER_MTOK, MoneySumField


def default_thresholds() -> list[int]:
    return [50, 80, 100]


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


class Budget(models.Model):
    """A spending limit for an organization, a team, or one user within a team, per calendar period.

    Periods follow the organization's time zone. A new period starts from zero simply because
    spend is always summed over the current period: there is no reset job that could wipe spend.
    """

    class Period(models.TextChoices):
        DAILY = "daily", "Daily"
        WEEKLY = "weekly", "Weekly (from Monday)"
        MONTHLY = "monthly", "Monthly"

    organization = models.ForeignKey("teams.Organization", on_delete=models.CASCADE, related_name="budgets")
    team = models.ForeignKey(
        "teams.Team", null=True, blank=True, on_delete=models.CASCADE, related_name="budgets",
        help_text="Empty: the whole organization.",
    )
    user_id = models.CharField(max_length=255, blank=True, help_text="Limit one user within the team.")
    name = models.CharField(max_length=200, blank=True)
    amount_usd = models.DecimalField(max_digits=18, decimal_places=6)
    period = models.CharField(max_length=16, choices=Period.choices, default=Period.MONTHLY)
    thresholds = models.JSONField(default=default_thresholds, help_text="Percentages that send an alert.")
    is_hard = models.BooleanField(
        default=False, help_text="Reaching the limit makes budget checks answer 'not allowed'."
    )
    extra_emails = models.JSONField(default=list, blank=True, help_text="Also alert these addresses.")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    # The last evaluation's answer (every minute, by the budgets task), for readers that must not
    # query usage themselves, such as the Prometheus scrape.
    evaluated_spend_usd = MoneySumField(null=True, blank=True, editable=False)  # type: ignore[misc]
    evaluated_period_start = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(user_id="") | models.Q(team__isnull=False), name="user_budget_needs_team"
            ),
            models.CheckConstraint(condition=models.Q(amount_usd__gt=0), name="budget_amount_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.scope_label}: ${self.amount_usd} {self.period}"

    def clean(self) -> None:
        if self.team is not None and self.team.organization_id != self.organization_id:
            raise ValidationError({"team": "This team belongs to another organization."})
        if self.user_id and self.team_id is None:
            raise ValidationError({"user_id": "A user budget needs a team."})
        if any(not isinstance(t, int) or not 0 < t <= 1000 for t in self.thresholds or [None]):
            raise ValidationError({"thresholds": "Give percentages between 1 and 1000, e.g. [50, 80, 100]."})

    @property
    def scope_label(self) -> str:
        if self.team is None:
            return f"{self.organization.slug} (organization)"
        if self.user_id:
            return f"{self.organization.slug}/{self.team.alias} user {self.user_id}"
        return f"{self.organization.slug}/{self.team.alias}"


class BudgetAlert(models.Model):
    """One threshold crossed in one period. The unique row is the lock: it is created once, sent once."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="alerts")
    period_start = models.DateTimeField()
    threshold = models.PositiveSmallIntegerField()
    spend_usd = MoneySumField()
    limit_usd = models.DecimalField(max_digits=18, decimal_places=6)
    created_at = models.DateTimeField(default=timezone.now)
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    recipients = models.JSONField(default=list, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["budget", "period_start", "threshold"], name="one_alert_per_threshold")
        ]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.budget} {self.threshold}% ({self.period_start:%Y-%m-%d})"

