"""Django's Redis cache, failing open: an unreachable Redis is a cache that forgets everything at once.

Everything kept in the cache can be recomputed from the database (budget spend, latency sketches,
the rendered Prometheus text) or may be lost (the per-token rate-limit counters), so ingest, reads
and the budget check must keep working while Redis is away. Each operation that cannot reach Redis
answers as if the key had just expired: `get` gives the default, `set` and `delete` do nothing,
`add` reports the value stored (then forgotten), `incr` finds no key (ValueError, as for a missing
key). The rate limit (teams.authentication.ApiTokenRateThrottle) then counts every request as the
first of its window: it allows them all.

Every such operation is counted and logged (llmcost_project.degraded). After a failure the next
RETRY_SECONDS skip Redis altogether, so an outage costs microseconds per operation, not a
connection attempt (or a socket timeout) each; the first operation after that tries Redis again,
and the cache is used again as soon as Redis answers.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.redis import RedisCache
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .degraded import degraded

UNREACHABLE = (RedisConnectionError, RedisTimeoutError)  # BusyLoadingError (a restart loading data) included
RETRY_SECONDS = 1.0
_NOT_FOUND = object()


class FailOpenRedisCache(RedisCache):
    def __init__(self, server, params) -> None:
        super().__init__(server, params)
        self._skip_until = 0.0  # time.monotonic() before which Redis is not tried

    def _call(self, operation: str, fallback, method, *args):
        """`method(*args)` (RedisCache's own), or `fallback` after counting the degraded operation."""
        if time.monotonic() < self._skip_until:
            degraded("redis", operation, "failed less than a second ago")
            return fallback
        try:
            return method(*args)
        except UNREACHABLE as exc:
            self._skip_until = time.monotonic() + RETRY_SECONDS
            degraded("redis", operation, exc)
            return fallback

    def get(self, key, default=None, version=None):
        return self._call("get", default, super().get, key, default, version)

    def get_many(self, keys, version=None) -> dict[str, Any]:
        return self._call("get_many", {}, super().get_many, keys, version)

    def has_key(self, key, version=None) -> bool:
        return self._call("has_key", False, super().has_key, key, version)

    def set(self, key, value, timeout=DEFAULT_TIMEOUT, version=None) -> None:
        self._call("set", None, super().set, key, value, timeout, version)

    def set_many(self, data, timeout=DEFAULT_TIMEOUT, version=None) -> list:
        return self._call("set_many", list(data), super().set_many, data, timeout, version)  # failed keys

    def add(self, key, value, timeout=DEFAULT_TIMEOUT, version=None) -> bool:
        # Stored, then forgotten: the caller proceeds as the first to add it.
        return self._call("add", True, super().add, key, value, timeout, version)

    def incr(self, key, delta=1, version=None) -> int:
        value = self._call("incr", _NOT_FOUND, super().incr, key, delta, version)
        if value is _NOT_FOUND:
            raise ValueError(f"Key {key!r} not found (Redis is unreachable).")
        return value

    def touch(self, key, timeout=DEFAULT_TIMEOUT, version=None) -> bool:
        return self._call("touch", False, super().touch, key, timeout, version)

    def delete(self, key, version=None) -> bool:
        return self._call("delete", False, super().delete, key, version)

    def delete_many(self, keys, version=None) -> None:
        self._call("delete_many", None, super().delete_many, keys, version)

    def clear(self) -> None:
        self._call("clear", None, super().clear)
