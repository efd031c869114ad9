"""SyncMetricsClient: the seed's client, recording in the background so the LLM call never waits."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from ._fields import BATCH_FIELDS, BATCH_REQUIRED, CACHE_FIELDS, clean, event_payload, now_utc, reserve_payload
from ._sender import BATCH_RUN, CACHE_REPORT, EVENT, BackgroundSender, Item
from ._transport import (
    BATCH_RUN_PATH,
    BUDGET_PATH,
    CACHE_PATH,
    DASHBOARD_PATH,
    RECENT_PATH,
    RELEASE_PATH,
    RESERVE_PATH,
    TRACK_PATH,
    Reply,
    RetryPolicy,
    Settings,
    SyncTransport,
)
from .errors import MetricsClientError, MetricsValidationError
from .stats import ClientStats

logger = logging.getLogger("metrics_client")

MAX_BATCH_SIZE = 1000  # the server's limit per POST /api/v1/events
_NOT_FIELDS = ("self", "wait", "unknown_fields")


def _fields(arguments: dict[str, Any]) -> dict[str, Any]:
    """A track method's arguments as record fields (its keyword extras are unknown fields)."""
    fields = {name: value for name, value in arguments.items() if name not in _NOT_FIELDS}
    fields.update(arguments.get("unknown_fields") or {})
    return fields


class _ClientBase:
    """Configuration, validation and the background sender, shared by the sync and async clients."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        max_queue_size: int = 10_000,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        shutdown_timeout: float = 5.0,
        strict: bool = False,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}")
        if max_queue_size < 1 or flush_interval <= 0 or shutdown_timeout < 0:
            raise ValueError("max_queue_size must be >= 1, flush_interval > 0 and shutdown_timeout >= 0")
        self.settings = Settings.resolve(base_url, api_key, timeout)
        self.policy = RetryPolicy(max_retries, backoff_base, backoff_max)
        self.strict = strict
        self.stats = ClientStats()
        self._transport = SyncTransport(self.settings, self.policy, self.stats)
        self._sender = BackgroundSender(self._transport, self.stats, batch_size=batch_size,
                                        flush_interval=flush_interval, max_queue_size=max_queue_size,
                                        strict=strict, shutdown_timeout=shutdown_timeout)
        # Request ids of the reservations open in `reservation()` blocks whose event is not tracked yet.
        self._untracked_holds: set[str] = set()

    @property
    def base_url(self) -> str:
        return self.settings.base_url

    @property
    def pending(self) -> int:
        """Records queued or being sent."""
        return self._sender.pending

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.settings.base_url} pending={self.pending} {self.stats!r}>"

    # --- building records ---------------------------------------------------------------------------

    def _checked(self, kind: str, fields: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(payload, None) for a valid record, else (None, the error answer); strict mode raises instead."""
        try:
            if kind == EVENT:
                payload = event_payload(fields)
                self._untracked_holds.discard(payload["request_id"])  # its event will settle the hold
            else:
                schema, required = (CACHE_FIELDS, ()) if kind == CACHE_REPORT else (BATCH_FIELDS, BATCH_REQUIRED)
                payload = clean(fields, schema, required)
                payload.setdefault("timestamp", now_utc())  # when it happened, not when it was sent
        except MetricsValidationError as exc:
            self.stats.add(rejected=1)
            logger.warning("metrics_client: %s not recorded: %s", kind, exc)
            if self.strict:
                raise
            return None, {"status": "error", "message": exc.message, "errors": exc.errors,
                          "request_id": fields.get("request_id")}
        return payload, None

    def _enqueue(self, kind: str, payload: dict[str, Any], note: str = "") -> dict[str, Any]:
        if not self._sender.put(Item(kind, payload)):
            self.stats.add(dropped=1)
            logger.warning("metrics_client: %s not recorded: the client is closed", kind)
            if self.strict:
                raise MetricsClientError("The client is closed.", request_ids=[payload.get("request_id", "")])
            return {"status": "error", "message": "The client is closed.", "request_id": payload.get("request_id")}
        return _queued_answer(kind, payload, note)

    def _answered(self, kind: str, payload: dict[str, Any], reply: Reply, *, repeatable: bool) -> dict[str, Any]:
        """The answer to a `wait=True` call: the server's, or what became of the record."""
        label = payload.get("request_id") or payload.get("batch_id")
        if reply.ok:
            duplicate = isinstance(reply.body, dict) and reply.body.get("duplicate")
            if duplicate:
                self.stats.add(duplicates=1)
            else:
                self.stats.add(sent=1)
            return reply.body if isinstance(reply.body, dict) else {"status": "success"}
        if self.policy.may_repeat(reply, repeatable=repeatable):
            self.stats.add(failures=1)
            if self.strict:
                raise reply.exception(f"Sending the {kind}", [label] if label else [])
            # Still worth recording: the background sender keeps trying.
            return self._enqueue(kind, payload, note=f"{reply.message()}; queued to be sent in the background")
        if reply.retryable:  # a cache report that may or may not have been stored: not repeated
            self.stats.add(failures=1)
        else:
            self.stats.add(rejected=1)
        logger.warning("metrics_client: %s %s not recorded: %s %s", kind, label or "", reply.message(),
                       reply.field_errors() or "")
        if self.strict:
            raise reply.exception(f"Sending the {kind}", [label] if label else [])
        answer = {"status": "error", "message": reply.message(), "errors": reply.field_errors()}
        if payload.get("request_id"):
            answer["request_id"] = payload["request_id"]
        return answer

    def _read_result(self, path: str, reply: Reply, *, method: str = "GET", request_ids=()) -> Any:
        # Reads (and reservations) raise in every mode: there is no harmless value to hand back instead.
        if reply.ok:
            return reply.body
        raise reply.exception(f"{method} {path}", request_ids)

    # --- reservations -------------------------------------------------------------------------------

    def _reserved(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        answer = self._read_result(RESERVE_PATH, reply, method="POST", request_ids=[body["request_id"]])
        return {**answer, "request_id": body["request_id"]}  # the server's answer does not echo it

    @staticmethod
    def _release_body(reservation_id: Any) -> dict[str, Any]:
        if reservation_id is None or reservation_id == "":
            problem = "is required (a refused or degraded reservation has none to release)"
        elif isinstance(reservation_id, (str, uuid.UUID)):
            return {"reservation_id": str(reservation_id)}
        else:
            problem = "must be a string"
        raise MetricsValidationError("Invalid release; nothing was sent.", errors={"reservation_id": [problem]})

    def _hold_left_open(self, answer: dict[str, Any]) -> bool:
        """Whether a `reservation()` block that failed should release: a hold no tracked event will settle."""
        return bool(answer.get("reservation_id")) and answer["request_id"] in self._untracked_holds


def _queued_answer(kind: str, payload: dict[str, Any], note: str = "") -> dict[str, Any]:
    answer: dict[str, Any] = {"status": "queued", "message": note or "Queued; sent in the background"}
    if kind == EVENT:
        tokens = payload.get("total_tokens")
        if tokens is None:
            tokens = payload.get("prompt_tokens", 0) + payload.get("output_tokens", 0)
        answer.update(request_id=payload["request_id"], cost=None, tokens=tokens)
    elif kind == BATCH_RUN:
        answer["batch_id"] = payload["batch_id"]
    return answer


def _dashboard_params(time_range_hours, team_alias, model_filter, start, end) -> dict[str, Any]:
    return {"time_range_hours": time_range_hours, "team_alias": team_alias, "model_filter": model_filter,
            "start": start, "end": end}


class SyncMetricsClient(_ClientBase):
    """Records LLM calls with an llmcost server; thread-safe, one background sender thread per process.

    `SyncMetricsClient(base_url="http://localhost:8000")` — the address may also come from
    LLMCOST_BASE_URL and the token (`api_key=`) from LLMCOST_API_KEY; arguments win. Create one
    client at start-up and share it. Tracking never raises by default: problems are logged
    (logger "metrics_client") and counted in `stats`; `strict=True` raises `MetricsClientError`.
    """

    def track_request(
        self,
        model: str | None = None,
        *,
        prompt_tokens: int | None = None,
        output_tokens: int | None = None,
        total_tokens: int | None = None,
        latency_ms: float | None = None,
        user_id: str | None = None,
        request_id: str | None = None,
        team_alias: str | None = None,
        cache_hit: bool | None = None,
        query_type: str | None = None,
        status: str | None = None,
        error_message: str | None = None,
        cached_tokens: int | None = None,
        cache_write_tokens: int | None = None,
        usage: Mapping[str, int] | None = None,
        time_to_first_token_ms: float | None = None,
        cache_similarity_score: float | None = None,
        is_batched: bool | None = None,
        batch_id: str | None = None,
        batch_size: int | None = None,
        end_user: str | None = None,
        timestamp: Any = None,
        provider: str | None = None,
        response_cost: Any = None,
        prompt_cost: Any = None,
        output_cost: Any = None,
        metadata: dict[str, Any] | None = None,
        tags: list[str] | None = None,
        wait: bool = False,
        **unknown_fields: Any,
    ) -> dict[str, Any]:
        """Record one LLM call.

        Returns at once with `{"status": "queued", "request_id": ..., "tokens": ..., "cost": None}`;
        the event is sent in the background. A missing `request_id` is generated (uuid4) and a
        missing `timestamp` is the time of this call, so a repeated send is stored once, at the
        right time. With `wait=True` the event is sent now and the server's answer is returned
        (`{"status": "success", "request_id", "cost", "tokens", "duplicate", "priced", "budget"}`,
        fractional numbers as Decimal); if the server cannot be reached even after retries, the
        event is queued instead and the answer says "queued".
        An invalid field gives `{"status": "error", "errors": {field: [...]}}` (strict: raises).
        """
        payload, error = self._checked(EVENT, _fields(locals()))
        if payload is None:
            return error or {}
        if not wait:
            return self._enqueue(EVENT, payload)
        reply = self._transport.request("POST", TRACK_PATH, body=payload)
        return self._answered(EVENT, payload, reply, repeatable=True)

    def track_cache_metrics(
        self,
        cache_hit: int | None = None,
        cache_miss: int | None = None,
        avg_lookup_time_ms: float | None = None,
        team_alias: str | None = None,
        *,
        timestamp: Any = None,
        wait: bool = False,
        **unknown_fields: Any,
    ) -> dict[str, Any]:
        """Record counts of your response cache's hits and misses (POST /api/v1/metrics/cache)."""
        payload, error = self._checked(CACHE_REPORT, _fields(locals()))
        if payload is None:
            return error or {}
        if not wait:
            return self._enqueue(CACHE_REPORT, payload)
        reply = self._transport.request("POST", CACHE_PATH, body=payload, repeatable=False)
        return self._answered(CACHE_REPORT, payload, reply, repeatable=False)

    def track_batch(
        self,
        batch_id: str | None = None,
        batch_size: int | None = None,
        total_tokens: int | None = None,
        batch_cost: Any = None,
        batch_latency_ms: float | None = None,
        team_alias: str | None = None,
        *,
        status: str | None = None,
        timestamp: Any = None,
        wait: bool = False,
        **unknown_fields: Any,
    ) -> dict[str, Any]:
        """Record one batch run (POST /api/v1/metrics/batch); a repeated batch_id is stored once."""
        payload, error = self._checked(BATCH_RUN, _fields(locals()))
        if payload is None:
            return error or {}
        if not wait:
            return self._enqueue(BATCH_RUN, payload)
        reply = self._transport.request("POST", BATCH_RUN_PATH, body=payload)
        return self._answered(BATCH_RUN, payload, reply, repeatable=True)

    # --- reads (a token with the read scope) ------------------------------------------------------

    def get_dashboard_metrics(self, time_range_hours: int | None = None, *, team_alias: str | None = None,
                              model_filter: str | None = None, start: Any = None, end: Any = None) -> dict[str, Any]:
        """Totals, model_usage, hourly_trend and latency percentiles for a range (default: 24 hours)."""
        params = _dashboard_params(time_range_hours, team_alias, model_filter, start, end)
        return self._read_result(DASHBOARD_PATH, self._transport.request("GET", DASHBOARD_PATH, params=params))

    def get_recent_requests(self, limit: int = 20, *, status: str | None = None, user_id: str | None = None,
                            query_type: str | None = None, min_cost: Any = None, team_alias: str | None = None,
                            model_filter: str | None = None, time_range_hours: int | None = None,
                            start: Any = None, end: Any = None) -> list[dict[str, Any]]:
        """The newest events first (default: the last 30 days), narrowed by any filter given."""
        params = {"limit": limit, "status": status, "user_id": user_id, "query_type": query_type,
                  "min_cost": min_cost, **_dashboard_params(time_range_hours, team_alias, model_filter, start, end)}
        return self._read_result(RECENT_PATH, self._transport.request("GET", RECENT_PATH, params=params))

    def check_budget(self, team_alias: str | None = None, *, user_id: str | None = None,
                     end_user: str | None = None) -> dict[str, Any]:
        """Whether the team (user, end user, and this token) may still spend: `{"allowed": bool, "budgets": [...]}`.

        Only reads: gateways that must not overshoot a hard budget under concurrency `reserve()`.
        """
        params = {"team_alias": team_alias, "user_id": user_id, "end_user": end_user}
        return self._read_result(BUDGET_PATH, self._transport.request("GET", BUDGET_PATH, params=params))

    # --- reservations (a token with the ingest scope) ---------------------------------------------

    def reserve(
        self,
        team_alias: str | None = None,
        *,
        amount: Decimal | str | float | None = None,
        model: str | None = None,
        prompt_tokens: int | None = None,
        max_output_tokens: int | None = None,
        provider: str | None = None,
        user_id: str | None = None,
        end_user: str | None = None,
        request_id: str | None = None,
        ttl_seconds: int | None = None,
    ) -> dict[str, Any]:
        """Hold budget for one LLM call before making it (POST /api/v1/budget/reserve).

        Give `amount` (USD; a Decimal or numeric string is sent exactly) or `model` +
        `prompt_tokens` + `max_output_tokens` (priced by the server). Returns the server's answer —
        `{"allowed", "degraded", "reservation_id", "expires_at", "amount", "budgets": [...]}` — plus
        the `request_id` the hold is kept under: a missing one is generated, so a retried send never
        holds twice. Send that request_id on the call's event (`track_request(request_id=...)`): the
        event settles the hold at its real cost. If the call is not made, `release()` the hold (or
        it ends at `expires_at`). Raises MetricsValidationError for an invalid argument and
        MetricsClientError when the server refuses or cannot be reached, in every mode.
        """
        body = reserve_payload({name: value for name, value in locals().items() if name != "self"})
        return self._reserved(body, self._transport.request("POST", RESERVE_PATH, body=body))

    def release(self, reservation_id: str | uuid.UUID) -> dict[str, Any]:
        """Free a reservation's hold now, the call not being made (POST /api/v1/budget/release).

        Returns `{"reservation_id", "released", "state"}` (`released` is False for a hold already
        settled, released or expired); an id unknown to the token's organization raises
        MetricsClientError with status_code 404.
        """
        body = self._release_body(reservation_id)
        return self._read_result(RELEASE_PATH, self._transport.request("POST", RELEASE_PATH, body=body),
                                 method="POST")

    @contextmanager
    def reservation(self, team_alias: str | None = None, **options: Any) -> Iterator[dict[str, Any]]:
        """`reserve()` (same arguments) for a `with` block, which receives the answer.

        If the block raises before an event with the answer's `request_id` was tracked through this
        client, the hold is released (a failed release is logged; the hold then ends at expires_at).
        The block must check `answer["allowed"]` itself.
        """
        answer = self.reserve(team_alias, **options)
        self._untracked_holds.add(answer["request_id"])
        try:
            yield answer
        except BaseException:
            if self._hold_left_open(answer):
                try:
                    self.release(answer["reservation_id"])
                except MetricsClientError as exc:
                    logger.warning("metrics_client: reservation %s not released: %s", answer["reservation_id"], exc)
            raise
        finally:
            self._untracked_holds.discard(answer["request_id"])

    # --- lifecycle --------------------------------------------------------------------------------

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Block until everything tracked so far is sent (or rejected); False if `timeout` ran out first.

        Strict mode raises MetricsClientError instead, and also when records were rejected or dropped.
        """
        return self._sender.flush(timeout)

    def close(self, timeout: float | None = 10.0) -> bool:
        """Send what is queued (up to `timeout` seconds), then stop. Later track calls are dropped."""
        try:
            return self._sender.close(timeout)
        finally:
            self._transport.close()

    def __enter__(self) -> SyncMetricsClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
