"""Failure isolation for background jobs: one tenant's bad unit of work never stops the others.

A job (rollups, pruning, budget evaluation, alert sending, repricing) walks many units of work,
each of one organization. `JobRun.unit` runs one in a savepoint: if it raises, its writes are
rolled back, the failure is logged with its organization and recorded as a `JobFailure` row
(counted, shown to platform admins in Django admin and on /metrics), and the job goes on with the
next unit. The unit's own state (dirty marks, unsent alert rows, budgets) stays in the database,
so a later run finds it again; `JobRun.due` holds a failing unit back with a growing pause so it
does not eat every run's time. A unit that succeeds again is marked resolved.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime, timedelta

from django.db import transaction
from django.db.models import F

from .models import JobFailure

logger = logging.getLogger("llmcost.jobs")

RETRY_PAUSE_MAX = timedelta(minutes=30)
ERROR_TEXT_MAX = 8000


def retry_pause(consecutive_failures: int) -> timedelta:
    """1, 2, 4 ... minutes after each consecutive failure, at most RETRY_PAUSE_MAX."""
    return min(timedelta(minutes=2 ** max(consecutive_failures - 1, 0)), RETRY_PAUSE_MAX)


class Outcome:
    ok = True


class JobRun:
    """One run of `job` over many units, each identified by (organization id, key)."""

    def __init__(self, job: str, *, now: datetime | None = None) -> None:
        self.job = job
        self.now = now or datetime.now(UTC)
        self.failed = 0
        self.last_error = ""  # "Type: message" of the last unit that failed
        # Read once per run, so a unit that never failed costs no query on success.
        self.open = {
            (failure.organization_id, failure.key): failure
            for failure in JobFailure.objects.filter(job=job, resolved_at__isnull=True)
        }

    def due(self, organization_id: int, key: str = "") -> bool:
        """False while a failed unit waits for its retry."""
        failure = self.open.get((organization_id, key))
        return failure is None or failure.retry_at <= self.now

    @contextmanager
    def unit(self, organization_id: int, *keys: str, record: bool = True, atomic: bool = True) -> Iterator[Outcome]:
        """Run one unit of work (covering `keys`, default "") isolated: an exception is swallowed
        and, if `record`, recorded against each key; success resolves the keys' open failures.

        `atomic=False` for a unit that commits in steps of its own (each step safe to redo)."""
        keys = keys or ("",)
        outcome = Outcome()
        try:
            with transaction.atomic() if atomic else nullcontext():
                yield outcome
        except Exception as exc:
            outcome.ok = False
            self.failed += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:ERROR_TEXT_MAX]
            if record:
                for key in keys:
                    self._record_failure(organization_id, key, exc)
            else:
                logger.warning("%s failed for organization %s, retried in parts: %s: %s",
                               self.job, organization_id, type(exc).__name__, exc)  # fmt: skip
        else:
            resolved = [self.open.pop((organization_id, key)).pk for key in keys if (organization_id, key) in self.open]
            if resolved:
                JobFailure.objects.filter(pk__in=resolved).update(resolved_at=datetime.now(UTC), consecutive_failures=0)

    def _record_failure(self, organization_id: int, key: str, exc: Exception) -> None:
        # One line in the log; the traceback goes to the failure's row, where admins read it.
        logger.error(
            "%s failed for organization %s%s: %s: %s", self.job, organization_id, f" ({key})" if key else "",
            type(exc).__name__, exc,
        )  # fmt: skip
        now = datetime.now(UTC)
        trace = "".join(traceback.format_exception(exc))
        error = f"{type(exc).__name__}: {exc}\n\n{trace}"[:ERROR_TEXT_MAX]
        try:
            with transaction.atomic():
                failure, _ = JobFailure.objects.select_for_update().get_or_create(
                    job=self.job, organization_id=organization_id, key=key,
                    defaults={"first_failed_at": now, "consecutive_failures": 0, "total_failures": 0},
                )  # fmt: skip
                again = failure.resolved_at is not None  # a new episode of failures
                consecutive = (0 if again else failure.consecutive_failures) + 1
                JobFailure.objects.filter(pk=failure.pk).update(
                    first_failed_at=now if again else failure.first_failed_at,
                    consecutive_failures=consecutive,
                    total_failures=F("total_failures") + 1,
                    last_failed_at=now,
                    retry_at=now + retry_pause(consecutive),
                    resolved_at=None,
                    last_error=error,
                )
        except Exception:  # recording must not stop the job either (the log line above stays)
            logger.exception("could not record the failure of %s for organization %s", self.job, organization_id)
