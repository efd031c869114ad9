"""Budgets: spending limits and the alerts they send."""

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from billing.pricing.money import MoneySumField


def default_thresholds() -> list[int]:
    return [50, 80, 100]


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
    end_user = models.CharField(
        max_length=255, blank=True, help_text="Limit one end user (a customer of the organization's product)."
    )
    token = models.ForeignKey(
        "teams.ApiToken", null=True, blank=True, on_delete=models.CASCADE, related_name="budgets",
        help_text="Limit what is reserved with this API token.",
    )
    name = models.CharField(max_length=200, blank=True)
    amount_usd = models.DecimalField(max_digits=18, decimal_places=6)
    period = models.CharField(max_length=16, choices=Period.choices, default=Period.MONTHLY)
    thresholds = models.JSONField(default=default_thresholds, help_text="Percentages that send an alert.")
    is_hard = models.BooleanField(
        default=False, help_text="Reaching the limit makes budget checks answer 'not allowed'."
    )
    extra_emails = models.JSONField(default=list, blank=True, help_text="Also alert these addresses.")
    is_active = models.BooleanField(default=True)

    class OnError(models.TextChoices):
        ALLOW = "allow", "Allow"
        DENY = "deny", "Deny"

    on_error = models.CharField(
        max_length=8, choices=OnError.choices, default=OnError.ALLOW,
        help_text="The reservation answer when the store behind reservations cannot be reached.",
    )
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
        if self.token is not None and self.token.organization_id != self.organization_id:
            raise ValidationError({"token": "This token belongs to another organization."})
        if any(not isinstance(t, int) or not 0 < t <= 1000 for t in self.thresholds or [None]):
            raise ValidationError({"thresholds": "Give percentages between 1 and 1000, e.g. [50, 80, 100]."})

    @property
    def scope_label(self) -> str:
        if self.team is None:
            label = f"{self.organization.slug} (organization)"
        elif self.user_id:
            label = f"{self.organization.slug}/{self.team.alias} user {self.user_id}"
        else:
            label = f"{self.organization.slug}/{self.team.alias}"
        if self.end_user:
            label += f" end user {self.end_user}"
        if self.token_id is not None:
            label += f" token {self.token}"
        return label

    @property
    def scope(self) -> str:
        """The narrowest dimension the budget limits."""
        if self.token_id is not None:
            return "token"
        if self.end_user:
            return "end_user"
        if self.team_id is None:
            return "organization"
        return "user" if self.user_id else "team"


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

