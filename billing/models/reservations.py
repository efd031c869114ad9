"""Reservations: holds on hard budgets taken before an LLM call and settled by its event."""

import uuid

from django.db import models
from django.utils import timezone

from billing.pricing.money import MoneyField

from .budgets import Budget


class BudgetLedger(models.Model):
    """One row per budget and period: the row reservations lock (SELECT … FOR UPDATE, in budget
    order) so that deciding and taking a hold on every hard budget is one atomic step."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="+")
    period_start = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["budget", "period_start"], name="one_ledger_per_period")]

    def __str__(self) -> str:
        return f"ledger {self.budget_id} {self.period_start:%Y-%m-%d}"


class Reservation(models.Model):
    """A gateway's hold on budgets for one call. Open until its event settles it, it is released,
    or it expires (an expired hold simply stops counting: no job has to run)."""

    class State(models.TextChoices):
        OPEN = "open", "Open"
        SETTLED = "settled", "Settled"
        RELEASED = "released", "Released"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey("teams.Organization", on_delete=models.CASCADE, related_name="+")
    token = models.ForeignKey("teams.ApiToken", null=True, on_delete=models.SET_NULL, related_name="+")
    team = models.ForeignKey("teams.Team", null=True, on_delete=models.SET_NULL, related_name="+")
    user_id = models.CharField(max_length=255, blank=True)
    end_user = models.CharField(max_length=255, blank=True)
    request_id = models.CharField(max_length=128, blank=True)
    amount = MoneyField(help_text="The estimate held.")
    cost = MoneyField(null=True, blank=True, help_text="The real cost, once its event settled it.")  # type: ignore[misc]
    state = models.CharField(max_length=16, choices=State.choices, default=State.OPEN)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # One reservation per request id: a gateway's retry of reserve gets the same hold back.
            models.UniqueConstraint(
                fields=["organization", "request_id"],
                condition=~models.Q(request_id=""),
                name="one_reservation_per_request_id",
            ),
        ]

    def __str__(self) -> str:
        return f"reservation {self.pk} ${self.amount} {self.state}"


class ReservationHold(models.Model):
    """A reservation's amount held on one budget in one period. Open holds (and holds settled since
    the settled spend was read) are summed under the ledger lock; `is_open` and `expires_at` are
    copied from the reservation so that the sum reads this table alone, through its indexes."""

    reservation = models.ForeignKey(Reservation, on_delete=models.CASCADE, related_name="holds")
    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="+")
    period_start = models.DateTimeField()
    amount = MoneyField()
    expires_at = models.DateTimeField()
    is_open = models.BooleanField(default=True)
    cost = MoneyField(null=True, blank=True)  # type: ignore[misc]  # settled: the event's real cost
    # When the hold closed, on the database's clock (PostgreSQL) so that it compares with the moment
    # a reservation read the settled spend (see billing.reservations).
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["budget", "period_start", "expires_at"],
                condition=models.Q(is_open=True),
                name="open_holds",
            ),
            models.Index(fields=["budget", "period_start", "closed_at"], name="closed_holds"),
        ]

    def __str__(self) -> str:
        return f"hold {self.budget_id} ${self.amount}"
