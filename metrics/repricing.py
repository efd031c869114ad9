"""Repricing stored events when a price changes: recorded in the database, run by Celery.

The pricing part of billing announces a change (`billing.pricing.price_changed`) inside the
transaction that makes it; `price_change_record` writes a `RepriceRequest` in that same
transaction and queues its task after the commit. A platform price concerns every
organization's events; an organization's override or discount only that organization's. The
request is finished (and kept, as the run's record: events changed, total before and after)
once every organization's events in the window are repriced, so the work never lives only in
the queue: a task that could not be queued (the broker away) or was lost with it (Redis
restarted, a worker killed) is run by `reprice_requests_sweep`, every minute. An organization
whose repricing fails (recorded as a JobFailure) stays in the request and is retried after a
growing pause, never given up: a price must end up applied. Finished records are pruned after
`REPRICE_HISTORY_DAYS` (`reprice_history_prune`, hourly); an unfinished one never is.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.dispatch import receiver

from billing.pricing import price_changed

from .failures import JobRun, retry_pause
from .models import RepriceRequest, UsageEvent
from .services import usage_events_reprice

logger = logging.getLogger(__name__)

# A claimed request not finished within the task time limit belonged to a worker that died.
REPRICE_CLAIM_TIMEOUT = timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 60)


@receiver(price_changed)
def price_change_record(
    *, provider: str, model: str, start: datetime, end: datetime | None, organization_id: int | None = None,
    reason: str = "", **kwargs,
) -> None:
    from .tasks import events_reprice  # tasks import this module

    if organization_id is None:
        if not UsageEvent.objects.exists():  # a fresh install (sync_prices' first run) has nothing to reprice
            return
        request = RepriceRequest.objects.create(provider=provider, model=model, start=start, end=end,
                                                reason=reason[:300])
    else:  # always recorded: the organization's Prices page shows the run, even one that changed nothing
        request = RepriceRequest.objects.create(
            provider=provider, model=model, start=start, end=end, reason=reason[:300],
            organization_id=organization_id, organization_ids=[organization_id],
        )  # fmt: skip

    def enqueue() -> None:
        try:
            events_reprice.delay(request.pk)
        except Exception as exc:  # the request is saved: the sweep runs it
            logger.warning("Could not queue repricing of %s/%s from %s (%s); the sweep will run it",
                           provider, model, start, exc)  # fmt: skip

    transaction.on_commit(enqueue)


def _claimable(now: datetime) -> Q:
    unclaimed = Q(claimed_at__isnull=True) | Q(claimed_at__lt=now - REPRICE_CLAIM_TIMEOUT)
    return Q(finished_at__isnull=True, not_before__lte=now) & unclaimed


def reprice_request_run(request_id: int, *, now: datetime | None = None) -> int:
    """Run one recorded repricing if it is due, unfinished and no live worker holds it; returns
    events updated. What each attempt changed is added to the request's record."""
    now = now or datetime.now(UTC)
    if RepriceRequest.objects.filter(_claimable(now), pk=request_id).update(claimed_at=now) != 1:
        return 0
    request = RepriceRequest.objects.get(pk=request_id)
    result = usage_events_reprice(
        provider=request.provider, model=request.model, start=request.start, end=request.end,
        organization_ids=request.organization_ids,
    )  # fmt: skip
    # The claim makes this worker the only writer of the record, so the sums are added here.
    record = {
        "events_changed": request.events_changed + result.updated,
        "cost_before": request.cost_before + result.cost_before,
        "cost_after": request.cost_after + result.cost_after,
    }
    if result.failed_organizations:
        RepriceRequest.objects.filter(pk=request_id).update(
            organization_ids=result.failed_organizations,
            attempts=F("attempts") + 1,
            not_before=datetime.now(UTC) + retry_pause(request.attempts + 1),
            claimed_at=None,
            **record,
        )
    else:
        RepriceRequest.objects.filter(pk=request_id).update(finished_at=datetime.now(UTC), claimed_at=None, **record)
    return result.updated


def reprice_requests_sweep(*, now: datetime | None = None) -> int:
    """Run every recorded repricing that is due and unclaimed (its task lost, or a retry)."""
    now = now or datetime.now(UTC)
    due = RepriceRequest.objects.filter(_claimable(now)).order_by("id").values_list("id", flat=True)
    return sum(reprice_request_run(pk, now=now) for pk in due)


REPRICE_PRUNE_JOB = "reprice_history_prune"


def reprice_history_prune(
    *, now: datetime | None = None, chunk_size: int = 1000, time_budget_seconds: float = 120.0
) -> int:
    """Delete finished repricing records older than `REPRICE_HISTORY_DAYS`, in chunks of one
    transaction each; returns how many went. An unfinished request (still to run, or retrying a
    failed organization) is never deleted, however old.

    An organization's own records (its price list's changes) are pruned isolated per organization.
    Platform price records belong to no organization: they go last, so a failure there (raised to
    the task's log, retried at the next run) never holds back an organization's."""
    now = now or datetime.now(UTC)
    deadline = time.monotonic() + time_budget_seconds
    finished = RepriceRequest.objects.filter(
        finished_at__lt=now - timedelta(days=settings.REPRICE_HISTORY_DAYS)
    ).order_by()
    run = JobRun(REPRICE_PRUNE_JOB, now=now)
    deleted = 0
    owners = finished.filter(organization__isnull=False).values_list("organization_id", flat=True).distinct()
    for organization_id in sorted(owners):
        if not run.due(organization_id):
            continue
        while time.monotonic() < deadline:
            with run.unit(organization_id) as outcome:
                gone = _chunk_delete(finished.filter(organization_id=organization_id), chunk_size)
                deleted += gone
            if not outcome.ok or gone < chunk_size:
                break
    while time.monotonic() < deadline:
        gone = _chunk_delete(finished.filter(organization__isnull=True), chunk_size)
        deleted += gone
        if gone < chunk_size:
            break
    return deleted


def _chunk_delete(rows, chunk_size: int) -> int:
    with transaction.atomic():
        ids = list(rows.values_list("id", flat=True)[:chunk_size])
        # The same conditions again: only finished records, whatever happened since they were selected.
        return rows.filter(id__in=ids).delete()[0] if ids else 0
