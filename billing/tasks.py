"""Celery tasks for billing: thin wrappers around services, each safe to run twice or concurrently."""

from datetime import datetime

from celery import shared_task

from metrics.failures import retry_pause
from metrics.services import usage_events_reprice

from . import services

REPRICE_ATTEMPTS = 8  # with growing pauses: about 2 hours before an organization's repricing is given up


@shared_task
def events_reprice(
    provider: str, model: str, start: str, end: str | None, organization_ids: list[int] | None = None, attempt: int = 1
) -> int:
    """Reprice a price row's window; organizations that failed (recorded as JobFailure) are retried
    by a later task of their own, so one organization's bad data never holds back the others."""
    result = usage_events_reprice(
        provider=provider,
        model=model,
        start=datetime.fromisoformat(start),
        end=datetime.fromisoformat(end) if end else None,
        organization_ids=organization_ids,
    )
    if result.failed_organizations and attempt < REPRICE_ATTEMPTS:
        events_reprice.apply_async(
            (provider, model, start, end),
            {"organization_ids": result.failed_organizations, "attempt": attempt + 1},
            countdown=retry_pause(attempt).total_seconds(),
        )
    return result.updated


@shared_task
def budgets_evaluate() -> int:
    return services.budgets_evaluate()
