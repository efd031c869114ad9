"""Celery tasks for billing: thin wrappers around services, each safe to run twice or concurrently."""

from celery import shared_task

from . import services


@shared_task
def events_reprice(request_id: int) -> int:
    """Run a recorded repricing (see `RepriceRequest`); a no-op if another worker holds it or it is done."""
    return services.reprice_request_run(request_id)


@shared_task
def reprice_requests_sweep() -> int:
    """Beat, every minute: recorded repricings whose task was lost, and retries of failed organizations."""
    return services.reprice_requests_sweep()


@shared_task
def budgets_evaluate() -> int:
    return services.budgets_evaluate()
