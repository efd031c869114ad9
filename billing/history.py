"""Retention of notification history: finished deliveries, and forecast and anomaly alerts once sent.

Pruned hourly (`billing.tasks.notification_history_prune`) after `NOTIFICATION_HISTORY_DAYS`, per
organization and in bounded chunks, each chunk one transaction run isolated (metrics.failures): one
organization's failure is recorded and retried without holding back the others.

Only what is finished goes: a pending delivery (still being retried) and an alert not yet sent are
never deleted, whatever their age. An alert row is also the lock that makes its event happen once,
so it goes only when nothing can record that event again:
- a forecast alert (unique per budget and period) once its period is over: evaluation only records
  the current period's;
- an anomaly alert once its anomaly is older than alerting looks back (ANOMALY_ALERT_WITHIN).
A delivery's unique (channel, event key) row guards only against the same event being offered
twice, and an event is offered once, when its alert row is created: deleting an old delivery can
never let it be sent again. Threshold alerts (BudgetAlert) are not pruned here.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db.models import QuerySet

from metrics.failures import JobRun

from .models import BudgetForecastAlert, NotificationDelivery, SpendAnomalyAlert
from .services import ANOMALY_ALERT_WITHIN

PRUNE_JOB = "notification_history_prune"
# A budget period is at most a calendar month (31 days, plus an hour across a DST change) in any
# time zone: a forecast alert whose period started longer ago than this belongs to a period that is over.
LONGEST_PERIOD = timedelta(days=32)
FINISHED = (NotificationDelivery.Status.DELIVERED, NotificationDelivery.Status.FAILED)


def history_cutoff(now: datetime | None = None) -> datetime:
    return (now or datetime.now(UTC)) - timedelta(days=settings.NOTIFICATION_HISTORY_DAYS)


def _prunable(now: datetime) -> list[tuple[QuerySet, str]]:
    """What may go, as (rows, the field naming their organization)."""
    cutoff = history_cutoff(now)
    return [
        (NotificationDelivery.objects.filter(status__in=FINISHED, finished_at__lt=cutoff), "organization_id"),
        (
            BudgetForecastAlert.objects.filter(sent_at__lt=cutoff, period_start__lt=now - LONGEST_PERIOD),
            "budget__organization_id",
        ),
        (
            SpendAnomalyAlert.objects.filter(sent_at__lt=cutoff, anomaly__hour__lt=now - ANOMALY_ALERT_WITHIN),
            "anomaly__organization_id",
        ),
    ]


def notification_history_prune(
    *, now: datetime | None = None, chunk_size: int = 1000, time_budget_seconds: float = 300.0
) -> int:
    """Delete finished deliveries and sent forecast and anomaly alerts older than the history window;
    returns how many rows went. What is left when the time budget runs out goes at the next run."""
    now = now or datetime.now(UTC)
    deadline = time.monotonic() + time_budget_seconds
    run = JobRun(PRUNE_JOB, now=now)
    prunable = _prunable(now)
    organization_ids = sorted(
        {pk for rows, field in prunable for pk in rows.order_by().values_list(field, flat=True).distinct()}
    )
    deleted = 0
    for organization_id in organization_ids:
        if not run.due(organization_id):
            continue
        for rows, field in prunable:
            gone, ok = _chunks_delete(run, organization_id, rows.filter(**{field: organization_id}), chunk_size,
                                      deadline)  # fmt: skip
            deleted += gone
            if not ok:
                break  # recorded; this organization is retried after its pause, the others go on
    return deleted


def _chunks_delete(
    run: JobRun, organization_id: int, rows: QuerySet, chunk_size: int, deadline: float
) -> tuple[int, bool]:
    """Delete `rows` a chunk per transaction until none is left or the time is up: (deleted, ok)."""
    deleted = 0
    rows = rows.order_by()
    while time.monotonic() < deadline:
        with run.unit(organization_id) as outcome:
            gone = _chunk_delete(rows, chunk_size)
            deleted += gone
        if not outcome.ok:
            return deleted, False
        if gone < chunk_size:
            break
    return deleted, True


def _chunk_delete(rows: QuerySet, chunk_size: int) -> int:
    ids = list(rows.values_list("pk", flat=True)[:chunk_size])
    # Deleted by the same conditions they were selected by: a row that changed meanwhile stays.
    return rows.filter(pk__in=ids).delete()[0] if ids else 0
