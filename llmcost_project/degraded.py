"""Work done without a dependency that is away: counted on /metrics and logged, never silently.

When Redis is unreachable the caches and the rate limit fail open (llmcost_project/cache.py); when
the database is unreachable requests are answered 503 (llmcost_project/middleware.py). Each such
operation increments `llmcost_degraded_operations_total{dependency, operation}`, and a warning is
logged at most once per LOG_INTERVAL seconds per dependency (with how many operations it stands
for), so an outage does not write a line per request.
"""

from __future__ import annotations

import logging
import threading
import time

from prometheus_client import Counter

logger = logging.getLogger("llmcost.degraded")

LOG_INTERVAL = 10.0  # seconds between warnings about one dependency

DEGRADED_OPERATIONS = Counter(
    "llmcost_degraded_operations",
    "Operations done without a dependency that could not be reached (redis: a cache or rate-limit "
    "operation treated as a miss; database: a request answered 503).",
    ["dependency", "operation"],
)


class _Throttled:
    """Remembers when each dependency was last logged about, and how much happened since."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._since: dict[str, int] = {}

    def due(self, dependency: str) -> int:
        """How many operations the next warning stands for, or 0 when it is not yet time to log."""
        now = time.monotonic()
        with self._lock:
            self._since[dependency] = self._since.get(dependency, 0) + 1
            if now - self._last.get(dependency, -LOG_INTERVAL) < LOG_INTERVAL:
                return 0
            self._last[dependency] = now
            return self._since.pop(dependency)


_throttled = _Throttled()


def degraded(dependency: str, operation: str, error: BaseException | str) -> None:
    """Count one operation done without `dependency`, and log it (rate-limited)."""
    DEGRADED_OPERATIONS.labels(dependency=dependency, operation=operation).inc()
    count = _throttled.due(dependency)
    if count:
        detail = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        logger.warning(
            "%s unreachable (%s); %d operation(s) degraded since the last warning (last: %s). "
            "See llmcost_degraded_operations_total.", dependency, detail, count, operation,
        )
