"""AsyncMetricsClient: SyncMetricsClient's methods as coroutines, for asyncio services.

Tracking still only queues: the background sender is the same thread as the sync client's, so
a slow or absent server never occupies the event loop, and the exit-time flush works after the
loop is gone. Calls that wait for the server (`wait=True`, reads) use httpx's async client on
the caller's loop; `flush()` and `close()` wait for the sender in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import httpx

from ._fields import dumps, reserve_payload
from ._sender import BATCH_RUN, CACHE_REPORT, EVENT
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
    query_params,
    reply_from_response,
)
from .client import _ClientBase, _dashboard_params, _fields
from .errors import MetricsClientError
from .stats import ClientStats

logger = logging.getLogger("metrics_client")


class AsyncTransport:
    """One httpx.AsyncClient per event loop and process (an async client belongs to its loop)."""

    def __init__(self, settings: Settings, policy: RetryPolicy, stats: ClientStats) -> None:
        self.settings = settings
        self.policy = policy
        self.stats = stats
        self._client: httpx.AsyncClient | None = None
        self._owner: tuple[int, asyncio.AbstractEventLoop] | None = None

    def _http(self) -> httpx.AsyncClient:
        owner = (os.getpid(), asyncio.get_running_loop())
        if self._client is None or self._owner != owner:
            self._client = httpx.AsyncClient(base_url=self.settings.base_url, headers=self.settings.headers(),
                                             timeout=self.settings.timeout)
            self._owner = owner
        return self._client

    async def once(self, method: str, path: str, *, body: Any = None, params: dict | None = None) -> Reply:
        try:
            response = await self._http().request(method, path, content=None if body is None else dumps(body),
                                                  params=query_params(params or {}))
        except Exception as exc:  # any failure becomes a Reply: tracking must never raise into the caller
            return Reply(status=None, error=exc)
        return reply_from_response(response)

    async def request(self, method: str, path: str, *, body: Any = None, params: dict | None = None,
                      repeatable: bool = True) -> Reply:
        attempt = 0
        while True:
            reply = await self.once(method, path, body=body, params=params)
            delay = self.policy.delay(reply, attempt, repeatable=repeatable)
            if delay is None:
                return reply
            attempt += 1
            self.stats.add(retries=1)
            logger.info("metrics_client: %s %s: %s; retry %d in %.2fs", method, path, reply.message(), attempt, delay)
            await asyncio.sleep(delay)

    async def aclose(self) -> None:
        client, owner = self._client, self._owner
        self._client = self._owner = None
        if client is not None and owner == (os.getpid(), asyncio.get_running_loop()):
            await client.aclose()


class AsyncMetricsClient(_ClientBase):
    """The asyncio twin of SyncMetricsClient: same arguments, same answers, methods are coroutines."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, **options: Any) -> None:
        super().__init__(base_url, api_key, **options)
        self._async = AsyncTransport(self.settings, self.policy, self.stats)

    async def track_request(
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
        """See SyncMetricsClient.track_request: queues and returns at once unless `wait=True`."""
        payload, error = self._checked(EVENT, _fields(locals()))
        if payload is None:
            return error or {}
        if not wait:
            return self._enqueue(EVENT, payload)
        reply = await self._async.request("POST", TRACK_PATH, body=payload)
        return self._answered(EVENT, payload, reply, repeatable=True)

    async def track_cache_metrics(
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
        payload, error = self._checked(CACHE_REPORT, _fields(locals()))
        if payload is None:
            return error or {}
        if not wait:
            return self._enqueue(CACHE_REPORT, payload)
        reply = await self._async.request("POST", CACHE_PATH, body=payload, repeatable=False)
        return self._answered(CACHE_REPORT, payload, reply, repeatable=False)

    async def track_batch(
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
        payload, error = self._checked(BATCH_RUN, _fields(locals()))
        if payload is None:
            return error or {}
        if not wait:
            return self._enqueue(BATCH_RUN, payload)
        reply = await self._async.request("POST", BATCH_RUN_PATH, body=payload)
        return self._answered(BATCH_RUN, payload, reply, repeatable=True)

    async def get_dashboard_metrics(self, time_range_hours: int | None = None, *, team_alias: str | None = None,
                                    model_filter: str | None = None, start: Any = None,
                                    end: Any = None) -> dict[str, Any]:
        params = _dashboard_params(time_range_hours, team_alias, model_filter, start, end)
        return self._read_result(DASHBOARD_PATH, await self._async.request("GET", DASHBOARD_PATH, params=params))

    async def get_recent_requests(self, limit: int = 20, *, status: str | None = None, user_id: str | None = None,
                                  query_type: str | None = None, min_cost: Any = None,
                                  team_alias: str | None = None, model_filter: str | None = None,
                                  time_range_hours: int | None = None, start: Any = None,
                                  end: Any = None) -> list[dict[str, Any]]:
        params = {"limit": limit, "status": status, "user_id": user_id, "query_type": query_type,
                  "min_cost": min_cost, **_dashboard_params(time_range_hours, team_alias, model_filter, start, end)}
        return self._read_result(RECENT_PATH, await self._async.request("GET", RECENT_PATH, params=params))

    async def check_budget(self, team_alias: str | None = None, *, user_id: str | None = None,
                           end_user: str | None = None) -> dict[str, Any]:
        params = {"team_alias": team_alias, "user_id": user_id, "end_user": end_user}
        return self._read_result(BUDGET_PATH, await self._async.request("GET", BUDGET_PATH, params=params))

    async def reserve(
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
        """See SyncMetricsClient.reserve: the answer has the `request_id` to send on the call's event."""
        body = reserve_payload({name: value for name, value in locals().items() if name != "self"})
        return self._reserved(body, await self._async.request("POST", RESERVE_PATH, body=body))

    async def release(self, reservation_id: str | uuid.UUID) -> dict[str, Any]:
        """See SyncMetricsClient.release: an unknown id raises MetricsClientError with status_code 404."""
        body = self._release_body(reservation_id)
        return self._read_result(RELEASE_PATH, await self._async.request("POST", RELEASE_PATH, body=body),
                                 method="POST")

    @asynccontextmanager
    async def reservation(self, team_alias: str | None = None, **options: Any) -> AsyncIterator[dict[str, Any]]:
        """See SyncMetricsClient.reservation: `async with client.reservation(...) as answer:`."""
        answer = await self.reserve(team_alias, **options)
        self._untracked_holds.add(answer["request_id"])
        try:
            yield answer
        except BaseException:  # a cancelled task too: its call will not be tracked
            if self._hold_left_open(answer):
                try:
                    await self.release(answer["reservation_id"])
                except MetricsClientError as exc:
                    logger.warning("metrics_client: reservation %s not released: %s", answer["reservation_id"], exc)
            raise
        finally:
            self._untracked_holds.discard(answer["request_id"])

    async def flush(self, timeout: float | None = 30.0) -> bool:
        return await asyncio.to_thread(self._sender.flush, timeout)

    async def close(self, timeout: float | None = 10.0) -> bool:
        try:
            return await asyncio.to_thread(self._sender.close, timeout)
        finally:
            self._transport.close()
            await self._async.aclose()

    async def __aenter__(self) -> AsyncMetricsClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
