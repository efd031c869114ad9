"""Celery tasks: thin wrappers around services. Each is safe to run twice or concurrently."""

from celery import shared_task

from . import rollups


@shared_task
def rollups_refresh() -> dict:
    result = rollups.dirty_rollups_refresh()
    return {"hours": result.hours, "days": result.days, "skipped": result.skipped}


@shared_task
def raw_events_prune() -> int:
    return rollups.raw_events_prune()
