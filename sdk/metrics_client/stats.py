"""Counters of what a client did, so a caller that is never interrupted can still see what was lost."""

from __future__ import annotations

import threading

COUNTERS = ("sent", "duplicates", "rejected", "dropped", "retries", "failures")


class ClientStats:
    """Counts since the client was created (in this process).

    - sent: records the server stored (events, cache reports, batch runs)
    - duplicates: records the server already had (a retry of a send whose answer was lost)
    - rejected: records refused for their content or credentials, by the client or the server; never retried
    - dropped: events discarded unsent: the oldest ones when the queue was full, and those still
      queued when `close()` ran out of time
    - retries: requests repeated after a connection error, 429 or 5xx
    - failures: requests that failed even after their retries (queued events are tried again later),
      plus records dropped because the server kept failing on them (HTTP 500) while storing others
    """

    __slots__ = ("_lock", *COUNTERS)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sent = 0
        self.duplicates = 0
        self.rejected = 0
        self.dropped = 0
        self.retries = 0
        self.failures = 0

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, count in counts.items():
                setattr(self, name, getattr(self, name) + count)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {name: getattr(self, name) for name in COUNTERS}

    def _reset_after_fork(self) -> None:
        # The parent's lock may have been held at fork time; the child starts counting afresh.
        self._lock = threading.Lock()
        for name in COUNTERS:
            setattr(self, name, 0)

    def __repr__(self) -> str:
        counts = ", ".join(f"{name}={value}" for name, value in self.as_dict().items())
        return f"ClientStats({counts})"
