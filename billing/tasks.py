"""Celery tasks for billing: thin wrappers around services, each safe to run twice or concurrently."""

from datetime import datetime

from celery import shared_task

from metrics.services import usage_events_reprice

from . import services


@shared_task
def events_reprice(provider: str, model: str, start: str, end: str | None) -> int:
    return usage_events_reprice(
        provider=provider,
        model=model,
        start=datetime.fromisoformat(start),
        end=datetime.fromisoformat(end) if end else None,
    )


@shared_task
def budgets_evaluate() -> int:
    return services.budgets_evaluate()
