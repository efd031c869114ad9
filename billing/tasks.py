"""Celery tasks for billing: thin wrappers around services, each safe to run twice or concurrently."""

from celery import shared_task

from . import history, notifications, services


@shared_task
def budgets_evaluate() -> int:
    return services.budgets_evaluate()


@shared_task
def notification_deliveries_send() -> int:
    return notifications.deliveries_send()


@shared_task
def notification_history_prune() -> int:
    """Beat, hourly: finished deliveries and sent forecast and anomaly alerts past NOTIFICATION_HISTORY_DAYS."""
    return history.notification_history_prune()
