"""One API request with retries: the settings, the retry policy and the reading of answers.

The policy is shared by the sync and async clients; only the waiting differs. Every outcome,
including "no answer at all", becomes a `Reply`, so the callers decide what to raise.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from ._fields import dumps, loads
from ._version import __version__
from .errors import MetricsClientError, MetricsValidationError
from .stats import ClientStats

logger = logging.getLogger("metrics_client")

DEFAULT_BASE_URL = "http://localhost:8000"  # the address the seed's examples use
EVENTS_PATH = "/api/v1/events"
TRACK_PATH = "/api/v1/metrics/track"
CACHE_PATH = "/api/v1/metrics/cache"
BATCH_RUN_PATH = "/api/v1/metrics/batch"
DASHBOARD_PATH = "/api/v1/dashboard/metrics"
RECENT_PATH = "/api/v1/requests/recent"
BUDGET_PATH = "/api/v1/budget/check"
RESERVE_PATH = "/api/v1/budget/reserve"
RELEASE_PATH = "/api/v1/budget/release"

MAX_RETRY_AFTER = 300.0  # a server asking for a longer pause is honoured for this long

# Failures after which the request may be repeated: the server either never saw it, or it is safe
# to repeat because the server de-duplicates it (events and reservations carry request ids, batch
# runs batch ids; releasing twice frees one hold).
RETRYABLE_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError)
# Failures that prove the request never reached the server: the only ones safe for a record the
# server cannot de-duplicate (cache reports).
NOT_DELIVERED_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Statuses a proxy or the server's front answers before the application ran.
NOT_PROCESSED_STATUSES = (429, 502, 503)


@dataclass
class Settings:
    base_url: str
    api_key: str | None
    timeout: float

    @classmethod
    def resolve(cls, base_url: str | None, api_key: str | None, timeout: float) -> Settings:
        """Arguments win over LLMCOST_BASE_URL / LLMCOST_API_KEY, which win over the seed's address."""
        url = (base_url or os.environ.get("LLMCOST_BASE_URL") or DEFAULT_BASE_URL).strip().rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url must be an http:// or https:// address, got {url!r}")
        key = api_key if api_key is not None else os.environ.get("LLMCOST_API_KEY")
        if not key:
            logger.warning("metrics_client: no API key (pass api_key= or set LLMCOST_API_KEY); the server will refuse")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        return cls(base_url=url, api_key=key.strip() if key else None, timeout=timeout)

    def headers(self) -> dict[str, str]:
        headers = {
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": f"llmcost-client/{__version__} httpx/{httpx.__version__}",
        }
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


@dataclass
class Reply:
    """The outcome of one request: an HTTP answer (status, parsed JSON) or the error that prevented one."""

    status: int | None
    body: Any = None
    retry_after: float | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        if self.status is None:
            return isinstance(self.error, RETRYABLE_ERRORS)
        return self.status == 429 or self.status >= 500

    def message(self) -> str:
        if self.status is None:
            detail = str(self.error) or type(self.error).__name__
            return f"no answer from the server ({type(self.error).__name__}: {detail})"
        if isinstance(self.body, dict) and self.body.get("message"):
            return f"HTTP {self.status}: {self.body['message']}"
        return f"HTTP {self.status}"

    def field_errors(self) -> dict[str, list[str]]:
        errors = self.body.get("errors") if isinstance(self.body, dict) else None
        if not isinstance(errors, dict):
            return {}
        return {str(name): [str(m) for m in (messages if isinstance(messages, list) else [messages])]
                for name, messages in errors.items()}

    def exception(self, what: str, request_ids=()) -> MetricsClientError:
        kind = MetricsValidationError if self.status == 400 else MetricsClientError
        return kind(f"{what} failed: {self.message()}", status_code=self.status, errors=self.field_errors(),
                    request_ids=request_ids)


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds, from either of its forms (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        seconds = (moment - datetime.now(timezone.utc)).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def reply_from_response(response: httpx.Response) -> Reply:
    try:
        body = loads(response.content) if response.content else None
    except ValueError:
        body = {"message": response.text[:300]}
    return Reply(status=response.status_code, body=body,
                 retry_after=parse_retry_after(response.headers.get("Retry-After")))


class RetryPolicy:
    """Exponential backoff with jitter; a 429's Retry-After is waited out in full."""

    def __init__(self, max_retries: int, backoff_base: float, backoff_max: float) -> None:
        if max_retries < 0 or backoff_base < 0 or backoff_max < backoff_base:
            raise ValueError("max_retries and backoff_base must be >= 0, backoff_max >= backoff_base")
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._random = random.Random()  # noqa: S311 -- jitter spreads retries; nothing secret here

    def backoff(self, attempt: int) -> float:
        ceiling = min(self.backoff_max, self.backoff_base * (2 ** min(attempt, 32)))
        return self._random.uniform(ceiling / 2, ceiling)

    @staticmethod
    def may_repeat(reply: Reply, *, repeatable: bool = True) -> bool:
        """Whether sending the same request again could succeed without recording anything twice.

        `repeatable` says the server de-duplicates the request; otherwise only failures that prove
        the request was never processed qualify.
        """
        if reply.ok or not reply.retryable:
            return False
        if repeatable:
            return True
        if reply.status is None:
            return isinstance(reply.error, NOT_DELIVERED_ERRORS)
        return reply.status in NOT_PROCESSED_STATUSES

    def delay(self, reply: Reply, attempt: int, *, repeatable: bool = True) -> float | None:
        """Seconds to wait before repeating the request, or None when it must not be repeated."""
        if attempt >= self.max_retries or not self.may_repeat(reply, repeatable=repeatable):
            return None
        wait = self.backoff(attempt)
        if reply.retry_after is not None:
            wait = max(wait, reply.retry_after)
        return wait


def query_params(params: dict[str, Any]) -> dict[str, str]:
    """Query-string values as the server reads them; None means "not sent"."""
    out = {}
    for name, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif isinstance(value, datetime):
            out[name] = value.isoformat()
        else:
            out[name] = str(value)
    return out


class SyncTransport:
    """An httpx.Client per process (a forked child never reuses its parent's sockets), with retries."""

    def __init__(self, settings: Settings, policy: RetryPolicy, stats: ClientStats) -> None:
        self.settings = settings
        self.policy = policy
        self.stats = stats
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._pid = os.getpid()

    def _http(self) -> httpx.Client:
        if self._pid != os.getpid():
            self._reset_after_fork()
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(base_url=self.settings.base_url, headers=self.settings.headers(),
                                            timeout=self.settings.timeout)
            return self._client

    def _reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._client = None  # the parent's connections stay the parent's
        self._pid = os.getpid()

    def once(self, method: str, path: str, *, body: Any = None, params: dict | None = None,
             timeout: float | None = None) -> Reply:
        """One try; `timeout` (seconds) shortens the configured one, never lengthens it."""
        limit = self.settings.timeout if timeout is None else max(min(timeout, self.settings.timeout), 0.001)
        try:
            response = self._http().request(method, path, content=None if body is None else dumps(body),
                                            params=query_params(params or {}), timeout=limit)
        except Exception as exc:  # any failure becomes a Reply: tracking must never raise into the caller
            return Reply(status=None, error=exc)
        return reply_from_response(response)

    def request(self, method: str, path: str, *, body: Any = None, params: dict | None = None,
                repeatable: bool = True, stop: threading.Event | None = None,
                deadline: float | None = None) -> Reply:
        """Send, repeating after connection errors, 429 and 5xx; `stop` cuts the waiting short.

        With a `deadline` (a time.monotonic() value) no try outlasts it and no retry starts after it:
        the last reply is returned instead, for the caller to keep the record or give up on it.
        """
        attempt = 0
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            reply = self.once(method, path, body=body, params=params, timeout=remaining)
            delay = self.policy.delay(reply, attempt, repeatable=repeatable)
            if delay is None or (stop is not None and stop.is_set()):
                return reply
            if deadline is not None and time.monotonic() + delay >= deadline:
                return reply
            attempt += 1
            self.stats.add(retries=1)
            logger.info("metrics_client: %s %s: %s; retry %d in %.2fs", method, path, reply.message(), attempt, delay)
            if stop is not None:
                if stop.wait(delay):
                    return reply
            else:
                time.sleep(delay)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None and self._pid == os.getpid():
            client.close()
