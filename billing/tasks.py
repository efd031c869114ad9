"""Celery tasks for billing: thin wrappers around services, each safe to run twice or concurrently."""

from celery import shared_task

from . import notifications, services


@shared_task
def budgets_evaluate() -> int:
    return services.budgets_evaluate()


@shared_task
def notification_deliveries_send() -> int:
    return notifications.deliveries_send()
