"""Celery tasks for billing: thin wrappers around services, each safe to run twice or concurrently."""

from celery import shared_task

from . import services


@shared_task
def budgets_evaluate() -> int:
    return services.budgets_evaluate()
