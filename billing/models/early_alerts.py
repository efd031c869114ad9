"""Alerts that warn before a limit is hit: a budget's forecast, and a team's anomalous hour."""

from django.db import models
from django.utils import timezone

from billing.pricing.money import MoneySumField


class AlertDelivery(models.Model):
    """How an alert row is claimed and sent (the same rules as BudgetAlert's)."""

    created_at = models.DateTimeField(default=timezone.now)
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    recipients = models.JSONField(default=list, blank=True)

    class Meta:
        abstract = True


class BudgetForecastAlert(AlertDelivery):
    """The projection first exceeding the limit in one period: one row per (budget, period) is the lock."""

    EVENT_TYPE = "budget.forecast"

    budget = models.ForeignKey("billing.Budget", on_delete=models.CASCADE, related_name="forecast_alerts")
    period_start = models.DateTimeField()
    spend_usd = MoneySumField()
    projected_spend_usd = MoneySumField()
    limit_usd = models.DecimalField(max_digits=18, decimal_places=6)
    runs_out_on = models.DateField(help_text="Projected date (organization's time zone) the limit is reached.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["budget", "period_start"], name="one_forecast_alert_per_period")]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.budget} forecast {self.projected_spend_usd} ({self.period_start:%Y-%m-%d})"


class SpendAnomalyAlert(AlertDelivery):
    """The alert for one recorded anomaly (metrics.SpendAnomaly, unique per team and hour)."""

    EVENT_TYPE = "spend.anomaly"

    anomaly = models.OneToOneField("metrics.SpendAnomaly", on_delete=models.CASCADE, related_name="alert")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"anomaly alert {self.anomaly}"
