"""Notification channels (webhooks, Slack, email) and the deliveries of events to them."""

from __future__ import annotations

import uuid

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from billing.safe_http import HTTP_URL, url_validate

EVENT_TYPES = ("budget.threshold", "budget.forecast", "spend.anomaly")


class NotificationChannel(models.Model):
    """Somewhere an organization's alerts go, optionally limited to some teams and event types.

    The signing secret is stored as it is (a webhook receiver verifies an HMAC made with it, so it
    cannot be hashed) and shown once, when the channel is created.
    """

    class Kind(models.TextChoices):
        WEBHOOK = "webhook", "Webhook (signed JSON)"
        SLACK = "slack", "Slack incoming webhook"
        EMAIL = "email", "Email"

    organization = models.ForeignKey(
        "teams.Organization", on_delete=models.CASCADE, related_name="notification_channels"
    )
    name = models.CharField(max_length=200, blank=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    url = models.URLField(max_length=2000, blank=True, validators=[HTTP_URL])
    emails = models.JSONField(default=list, blank=True, help_text="Addresses of an email channel.")
    secret = models.CharField(max_length=128, editable=False)
    teams = models.ManyToManyField(
        "teams.Team",
        blank=True,
        related_name="notification_channels",
        help_text="Empty: every team, and organization-wide budgets.",
    )
    event_types = models.JSONField(default=list, blank=True, help_text="Empty: every event type.")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.organization.slug}: {self.label}"

    @property
    def label(self) -> str:
        return self.name or f"{self.get_kind_display()} {self.destination}"

    @property
    def destination(self) -> str:
        """Where the channel sends, safe to show: a Slack URL is itself a credential, so only its host."""
        if self.kind == self.Kind.EMAIL:
            return ", ".join(self.emails or [])
        if self.kind == self.Kind.SLACK:
            host = self.url.split("://", 1)[-1].split("/", 1)[0]
            return f"{host}/…{self.url[-4:]}"
        return self.url

    def clean(self) -> None:
        if self.kind == self.Kind.EMAIL:
            if not self.emails:
                raise ValidationError({"emails": "An email channel needs at least one address."})
        elif not self.url:
            raise ValidationError({"url": "Give the http(s) URL to post to."})
        else:
            url_validate(self.url)  # a host that is or resolves to a private address is refused
        unknown = set(self.event_types or []) - set(EVENT_TYPES)
        if unknown:
            raise ValidationError({"event_types": f"Unknown event types: {', '.join(sorted(unknown))}."})

    def wants(self, event_type: str) -> bool:
        return not self.event_types or event_type in self.event_types


class NotificationDelivery(models.Model):
    """One event for one channel. The unique (channel, event_key) row is the lock: an event reaches
    a channel once however many workers run; `claimed_at` keeps two workers off one attempt."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    # Sent as X-Llmcost-Delivery, the same on every retry, so a receiver can drop a duplicate.
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    organization = models.ForeignKey(
        "teams.Organization", on_delete=models.CASCADE, related_name="notification_deliveries"
    )
    channel = models.ForeignKey(NotificationChannel, on_delete=models.CASCADE, related_name="deliveries")
    event_type = models.CharField(max_length=64)
    # What makes an event one event, e.g. "budget.threshold:alert:17" (budget, period and threshold).
    event_key = models.CharField(max_length=200)
    payload = models.JSONField(default=dict)
    is_test = models.BooleanField(default=False)
    budget_alert = models.ForeignKey(
        "billing.BudgetAlert", null=True, blank=True, on_delete=models.CASCADE, related_name="deliveries"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    created_at = models.DateTimeField(default=timezone.now)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claimed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["channel", "event_key"], name="one_delivery_per_event_and_channel")
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="delivery_due")]
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.event_type} → {self.channel_id} ({self.status})"
