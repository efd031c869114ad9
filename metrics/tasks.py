"""Celery tasks: thin wrappers around services. Each is safe to run twice or concurrently."""

from celery import shared_task

from . import anomalies, repricing, rollups


@shared_task
def rollups_refresh(*, share: bool = True) -> dict:
    """Beat, every minute. A backlog is shared: helper runs are queued first, and all runs split its
    chunks (each skips the chunks another run holds or has finished)."""
    if share:
        for _ in range(rollups.helpers_wanted()):
            # Like the beat run's own message: a helper no worker takes within the minute is dropped.
            rollups_refresh.apply_async(kwargs={"share": False}, expires=55)
    result = rollups.dirty_rollups_refresh()
    return {"hours": result.hours, "days": result.days, "skipped": result.skipped}


@shared_task
def raw_events_prune() -> int:
    return rollups.raw_events_prune()


@shared_task
def events_reprice(request_id: int) -> int:
    """Run a recorded repricing (a RepriceRequest); a no-op if another worker holds it or it is done."""
    return repricing.reprice_request_run(request_id)


@shared_task
def reprice_requests_sweep() -> int:
    """Beat, every minute: recorded repricings whose task was lost, and retries of failed organizations."""
    return repricing.reprice_requests_sweep()


@shared_task
def reprice_history_prune() -> int:
    """Beat, hourly: finished repricing records past REPRICE_HISTORY_DAYS."""
    return repricing.reprice_history_prune()


@shared_task
def spend_anomalies_detect() -> int:
    """Beat, every 5 minutes: each team's last closed hours against its baseline (metrics.anomalies)."""
    return anomalies.spend_anomalies_detect()
