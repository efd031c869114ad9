"""The background sender: a bounded queue, drained by one thread per client and process.

Track calls only append to the queue. The thread sends events through the batch endpoint when
`batch_size` of them wait, when the oldest has waited `flush_interval`, or when `flush()` or
`close()` asks. A batch that cannot be delivered goes back to the head of the queue (same
request ids, so the server counts it once whatever happened to earlier tries), and when the
queue is full the oldest events are dropped and counted: memory stays bounded while the server
is away, and the newest data survives.

One record the server fails on (HTTP 500 and the like, not 502/503/504: those and connection
errors mean the server is away, and never cost a record) must not stop the records behind it. A
batch still answered so after its retries is split in halves, each tried once and split again
while it fails, down to single events, each then given its retries. An event that still fails is
a suspect: it is dropped (counted in `stats.failures`, logged with its request id) only when it
fails after the server has shown it stores other records — another part of the same batch stored
before it failed, or any record stored since the suspect first failed. Evidence that comes after
the failure proves nothing (a server failing on everything may recover between the two), so a
suspect that failed before the server stored the rest of its round is tried once more at the end
of the round, and dropped only if it fails again. Until then it stays at the head of the queue, and
what waits behind a suspect is sent first. So a poison record is dropped and the queue moves on,
while a server that fails on everything, and recovers at any moment, loses nothing.

After `os.fork()` (gunicorn's pre-fork workers, multiprocessing) the child starts with an empty
queue and no thread; its thread starts on its first track call. Queued events are the parent's
to send. At interpreter exit every client still open is closed, which sends what is queued.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ._transport import BATCH_RUN_PATH, CACHE_PATH, EVENTS_PATH, Reply, RetryPolicy, SyncTransport
from .errors import MetricsClientError, MetricsValidationError
from .stats import ClientStats

logger = logging.getLogger("metrics_client")

EVENT, CACHE_REPORT, BATCH_RUN = "event", "cache report", "batch run"
DROP_LOG_INTERVAL = 10.0  # seconds between warnings about a full queue
GIVE_UP_GRACE = 1.0  # seconds close() still waits for the sender after its time ran out
MAX_LOST_DETAILS = 1000  # strict mode keeps this many lost records' details for its exception
# 5xx answers that say the server (or the proxy before it) is away, not that it failed on the records.
SERVER_AWAY_STATUSES = (502, 503, 504)
DROPPED_SUSPECT = "dropped: the server fails on this record while it stores others"


def failed_on_the_records(reply: Reply) -> bool:
    """A 5xx from the application itself: it may fail on what was sent, not because it is away."""
    return reply.status is not None and reply.status >= 500 and reply.status not in SERVER_AWAY_STATUSES


@dataclass
class Item:
    kind: str
    payload: dict[str, Any]
    seq: int = 0
    queued_at: float = 0.0
    # Set when the server failed on this record alone and it was kept: how many records the server
    # had stored by the end of that round.
    suspect_since: int | None = None

    @property
    def label(self) -> str:
        return str(self.payload.get("request_id") or self.payload.get("batch_id") or f"#{self.seq}")


@dataclass
class Lost:
    label: str
    status: int | None
    message: str
    errors: dict[str, list[str]]


@dataclass
class Outcome:
    stored_before: int = 0  # records the server had stored before this round (the sender's count)
    sent: int = 0
    duplicates: int = 0
    rejected: list[tuple[Item, Lost]] = field(default_factory=list)
    abandoned: list[tuple[Item, Lost]] = field(default_factory=list)  # maybe recorded, not safe to repeat
    retry: list[Item] = field(default_factory=list)
    failure: str | None = None
    # Failed alone with a 5xx, after retries, before the server was seen storing others; with the
    # records this round had stored when it failed.
    suspects: list[tuple[Item, Lost, int]] = field(default_factory=list)

    @property
    def stored(self) -> int:
        """Records the server stored (or already had) in this round so far."""
        return self.sent + self.duplicates


class BackgroundSender:
    def __init__(self, transport: SyncTransport, stats: ClientStats, *, batch_size: int, flush_interval: float,
                 max_queue_size: int, strict: bool, shutdown_timeout: float) -> None:
        self._transport = transport
        self._policy: RetryPolicy = transport.policy
        self.stats = stats
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_queue_size = max_queue_size
        self.strict = strict
        self.shutdown_timeout = shutdown_timeout
        self._init_state()
        _open_senders.add(self)

    def _init_state(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._queue: deque[Item] = deque()
        self._in_flight: list[Item] = []
        self._seq = 0
        self._flush_upto = 0  # events up to this sequence number are to be sent now
        self._pause_until = 0.0  # after a failed round, the next one waits until then
        self._closing = False
        self._closed = False
        self._give_up = threading.Event()  # close() ran out of time: stop waiting and retrying
        self._dropped_at_close = 0
        self._thread: threading.Thread | None = None
        self._lost: list[Lost] = []
        self._lost_count = 0
        self._last_failure: str | None = None
        self._failed_rounds = 0
        self._stored = 0  # records the server stored (or had already) so far: evidence that it works
        self._dropped_since_log = 0
        self._last_drop_log = -math.inf

    def _reset_after_fork(self) -> None:
        closed = self._closing or self._closed
        self._init_state()
        self._closed = closed
        self.stats._reset_after_fork()
        self._transport._reset_after_fork()

    def _check_process(self) -> None:
        if self._pid != os.getpid():  # forked without the at-fork hook (it is POSIX-only)
            self._reset_after_fork()

    # --- the caller's side ------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue) + len(self._in_flight)

    @property
    def closed(self) -> bool:
        return self._closing or self._closed

    def put(self, item: Item) -> bool:
        """Queue one record; False once the client is closed. Never blocks on the network."""
        self._check_process()
        with self._wakeup:
            if self._closing or self._closed:
                return False
            self._seq += 1
            item.seq, item.queued_at = self._seq, time.monotonic()
            self._queue.append(item)
            self._drop_overflow_locked()
            if len(self._queue) == 1 or len(self._queue) >= self.batch_size:
                self._wakeup.notify_all()
        self._ensure_thread()
        return True

    def flush(self, timeout: float | None) -> bool:
        """Send everything queued so far; True when all of it was settled within `timeout` seconds."""
        self._check_process()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._wakeup:
            target = self._seq
            self._flush_upto = max(self._flush_upto, target)
            self._pause_until = 0.0  # asked to send now: try at once even after a failed round
            self._wakeup.notify_all()
        inline = self._lowest_unsettled() <= target and not self._ensure_thread()
        if inline:  # no thread possible (interpreter exit): send here, within the time given
            self._work(until_seq=target, deadline=deadline)
        with self._wakeup:
            # After an inline run nothing else is sending: what is left stays unsent, so stop waiting.
            while not inline and self._lowest_unsettled_locked() <= target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._wakeup.wait(remaining)
            done = self._lowest_unsettled_locked() > target
            unsent = len(self._queue) + len(self._in_flight)
        if self.strict:
            self._raise_if_lost()
            if not done:
                raise MetricsClientError(
                    f"{_records(unsent)} not sent within {timeout} s"
                    + (f"; last error: {self._last_failure}" if self._last_failure else "")
                )
        return done

    def close(self, timeout: float | None) -> bool:
        """Send what is queued (for up to `timeout` seconds), then stop; True when nothing was left unsent."""
        self._check_process()
        with self._wakeup:
            if self._closed:
                return True
            self._closing = True
            self._pause_until = 0.0
            self._wakeup.notify_all()
            thread = self._thread
        deadline = None if timeout is None else time.monotonic() + timeout
        if thread is not None and thread.is_alive():
            thread.join(timeout)
            if thread.is_alive():
                self._give_up.set()
                with self._wakeup:
                    self._wakeup.notify_all()
                thread.join(GIVE_UP_GRACE)  # let a batch between retries settle; one mid-request may not
        elif self._queue:
            self._work(until_seq=self._seq, deadline=deadline)
        with self._wakeup:
            self._closed = True
            left = list(self._queue)
            self._queue.clear()
            if left:
                self.stats.add(dropped=len(left))
                self._note_lost_locked([(item, Lost(item.label, None, "not sent before close", {})) for item in left])
            delivered = not left and not self._in_flight and not self._dropped_at_close
        if left:
            logger.warning("metrics_client: closed with %s unsent (last error: %s)", _records(len(left)),
                           self._last_failure or "none; the time allowed ran out")
        if self.strict:
            self._raise_if_lost()
        return delivered

    # --- the sending side -------------------------------------------------------------------------

    def _ensure_thread(self) -> bool:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return True
            if self._closed or self._give_up.is_set():
                return False
            thread = threading.Thread(target=self._run_thread, name="metrics-client-sender", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # "can't create new thread at interpreter shutdown"
                return False
            self._thread = thread
            return True

    def _run_thread(self) -> None:
        try:
            self._work()
        except BaseException:  # pragma: no cover - _work handles its own errors; this is the last guard
            logger.exception("metrics_client: the sender thread stopped")

    def _work(self, *, until_seq: int | None = None, deadline: float | None = None) -> None:
        """Send batches: forever in the sender thread (until closed), or inline up to `until_seq`."""
        while True:
            with self._wakeup:
                batch = self._next_batch_locked(until_seq, deadline)
                if batch is None:
                    return
                self._in_flight = batch
                stored_before = self._stored
            try:
                outcome = self._deliver(batch, deadline, stored_before)
            except Exception as exc:  # a bug here must not kill the sender and strand the queue
                logger.exception("metrics_client: sending failed unexpectedly")
                outcome = Outcome(stored_before, retry=list(batch), failure=f"{type(exc).__name__}: {exc}")
            with self._wakeup:
                self._in_flight = []
                self._settle_locked(outcome)
                self._wakeup.notify_all()

    def _next_batch_locked(self, until_seq: int | None, deadline: float | None) -> list[Item] | None:
        while True:
            if self._give_up.is_set():
                return None
            if until_seq is not None and self._lowest_unsettled_locked() > until_seq:
                return None
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return None
            wait: float | None = None
            if self._queue:
                head = self._queue[0]
                urgent = (self._closing or until_seq is not None or head.seq <= self._flush_upto
                          or len(self._queue) >= self.batch_size)
                ready_at = max(now if urgent else head.queued_at + self.flush_interval, self._pause_until)
                if now >= ready_at:
                    return self._take_locked()
                if deadline is not None and ready_at >= deadline:
                    return None  # the next try (after a failed round's pause) would start too late
                wait = ready_at - now
            elif self._closing:
                return None
            if deadline is not None:
                wait = deadline - now if wait is None else min(wait, deadline - now)
            self._wakeup.wait(wait)

    def _take_locked(self) -> list[Item]:
        # Records the server failed on alone, with nothing stored since, wait at the head: send what
        # waits behind them first, so they cannot block it (and its fate tells about the server).
        suspects = []
        while len(self._queue) > 1 and self._queue[0].suspect_since == self._stored:
            suspects.append(self._queue.popleft())
        batch = [self._queue.popleft()]
        if batch[0].kind == EVENT:
            while self._queue and len(batch) < self.batch_size and self._queue[0].kind == EVENT:
                batch.append(self._queue.popleft())
        self._queue.extendleft(reversed(suspects))
        return batch

    def _deliver(self, batch: list[Item], deadline: float | None = None, stored_before: int = 0) -> Outcome:
        """Send one batch; with a `deadline` (the inline path's), no try or retry runs past it."""
        outcome = Outcome(stored_before)
        if batch[0].kind == EVENT:
            self._send_events(batch, outcome, deadline)
            self._try_suspects_again(outcome, deadline)
            return outcome
        item = batch[0]
        # A batch run is stored once per batch_id; a cache report has no key, so it is repeated
        # only after failures that prove the server never processed it.
        repeatable = item.kind == BATCH_RUN
        path = BATCH_RUN_PATH if item.kind == BATCH_RUN else CACHE_PATH
        reply = self._transport.request("POST", path, body=item.payload, repeatable=repeatable, stop=self._give_up,
                                        deadline=deadline)
        if reply.ok:
            if isinstance(reply.body, dict) and reply.body.get("duplicate"):
                outcome.duplicates += 1
            else:
                outcome.sent += 1
        elif repeatable and failed_on_the_records(reply):
            self._failed_alone(item, reply, outcome)
        elif RetryPolicy.may_repeat(reply, repeatable=repeatable):
            outcome.retry.append(item)
            outcome.failure = reply.message()
        elif reply.retryable:
            lost = Lost(item.label, reply.status, f"{reply.message()} (may or may not be recorded)", {})
            outcome.abandoned.append((item, lost))
        else:
            outcome.rejected.append((item, Lost(item.label, reply.status, reply.message(), reply.field_errors())))
        return outcome

    def _post_events(self, items: list[Item], deadline: float | None, *, retries: bool) -> Reply:
        body = {"events": [item.payload for item in items]}
        if retries:
            return self._transport.request("POST", EVENTS_PATH, body=body, stop=self._give_up, deadline=deadline)
        remaining = None if deadline is None else deadline - time.monotonic()
        return self._transport.once("POST", EVENTS_PATH, body=body, timeout=remaining)

    def _send_events(self, items: list[Item], outcome: Outcome, deadline: float | None = None, *,
                     retries: bool = True) -> None:
        """Send `items` as one batch, splitting it as needed; `retries=False` (halves of a batch the
        server failed on) tries once, since the whole batch was already retried."""
        if deadline is not None and time.monotonic() >= deadline:  # a split batch's later half, out of time
            outcome.retry.extend(items)
            outcome.failure = outcome.failure or "the time allowed ran out"
            return
        reply = self._post_events(items, deadline, retries=retries)
        if reply.status == 413 and len(items) > 1:  # body over the server's limit: halve until it fits
            half = len(items) // 2
            self._send_events(items[:half], outcome, deadline, retries=retries)
            self._send_events(items[half:], outcome, deadline, retries=retries)
            return
        if failed_on_the_records(reply) and not (self._give_up.is_set() or self._closed):
            if outcome.suspects and not (outcome.sent or outcome.duplicates):
                # A single event failed and nothing was stored yet: the server may be failing on
                # everything. The rest of the batch is tried once each, not searched, and kept.
                outcome.retry.extend(items)
                outcome.failure = reply.message()
                return
            if len(items) > 1:  # look for the records it fails on: halve, try each half once
                half = len(items) // 2
                self._send_events(items[:half], outcome, deadline, retries=False)
                self._send_events(items[half:], outcome, deadline, retries=False)
                return
            if not retries:  # one event, so far tried once: give it its retries
                reply = self._post_events(items, deadline, retries=True)
            if failed_on_the_records(reply):
                self._failed_alone(items[0], reply, outcome)
                return
        self._read_events_reply(items, reply, outcome)

    def _read_events_reply(self, items: list[Item], reply: Reply, outcome: Outcome) -> None:
        """Note in `outcome` what the server's answer to a batch of `items` made of each (not a 500 to search)."""
        if RetryPolicy.may_repeat(reply):
            outcome.retry.extend(items)
            outcome.failure = reply.message()
            return
        body = reply.body if isinstance(reply.body, dict) else {}
        if reply.status not in (200, 400) or not isinstance(body.get("rejected"), list):
            for item in items:  # refused as a whole: bad token, missing scope, unexpected answer
                outcome.rejected.append((item, Lost(item.label, reply.status, reply.message(), reply.field_errors())))
            return
        answered = set()
        for result in body.get("results") or []:
            index = result.get("index") if isinstance(result, dict) else None
            if isinstance(index, int) and 0 <= index < len(items):
                answered.add(index)
                if result.get("duplicate"):
                    outcome.duplicates += 1
                else:
                    outcome.sent += 1
        for rejection in body["rejected"]:
            index = rejection.get("index") if isinstance(rejection, dict) else None
            if isinstance(index, int) and 0 <= index < len(items):
                answered.add(index)
                errors = rejection.get("errors") if isinstance(rejection.get("errors"), dict) else {}
                item = items[index]
                # 400 whatever the batch's status (200 when others were stored): this event was invalid.
                outcome.rejected.append((item, Lost(item.label, 400, "rejected by the server", errors)))
        for index, item in enumerate(items):
            if index not in answered:
                lost = Lost(item.label, reply.status, "the server's answer did not mention this event", {})
                outcome.rejected.append((item, lost))

    def _failed_alone(self, item: Item, reply: Reply, outcome: Outcome) -> None:
        """`item` was answered a 5xx alone, after its retries: drop it if the server had stored other
        records before this failure (since the item first failed), else keep it as a suspect."""
        lost = Lost(item.label, reply.status, reply.message(), {})
        outcome.failure = reply.message()
        since = outcome.stored_before if item.suspect_since is None else item.suspect_since
        if outcome.stored_before + outcome.stored > since:
            lost.message = f"{lost.message}; {DROPPED_SUSPECT}"
            outcome.abandoned.append((item, lost))
        else:
            outcome.suspects.append((item, lost, outcome.stored))

    def _try_suspects_again(self, outcome: Outcome, deadline: float | None) -> None:
        """Once more, a suspect the server failed on before it stored other records of this round.

        The records stored after the failure do not show that the server fails on this one: it may
        have been failing on everything and recovered in between. Tried once now that it stores
        others, a suspect that fails again is dropped; one that is stored was never poison.
        """
        kept = []
        for item, lost, stored_then in outcome.suspects:
            out_of_time = deadline is not None and time.monotonic() >= deadline
            if outcome.stored == stored_then or out_of_time or self._give_up.is_set() or self._closed:
                kept.append((item, lost, stored_then))
                continue
            reply = self._post_events([item], deadline, retries=False)
            if failed_on_the_records(reply):
                lost = Lost(item.label, reply.status, f"{reply.message()}; {DROPPED_SUSPECT}", {})
                outcome.abandoned.append((item, lost))
            else:
                self._read_events_reply([item], reply, outcome)
        outcome.suspects = kept

    def _settle_locked(self, outcome: Outcome) -> None:
        self._stored += outcome.stored
        for item, _lost, _stored_then in outcome.suspects:
            # Kept: the server has not been seen storing other records since this one first failed.
            if item.suspect_since is None:
                item.suspect_since = self._stored
            outcome.retry.append(item)
        outcome.retry.sort(key=lambda item: item.seq)  # the queue stays in order (see _lowest_unsettled)
        self.stats.add(sent=outcome.sent, duplicates=outcome.duplicates, rejected=len(outcome.rejected))
        for item, lost in outcome.rejected:
            logger.warning("metrics_client: %s %s rejected: %s %s", item.kind, lost.label, lost.message,
                           lost.errors or "")
        self._note_lost_locked(outcome.rejected)
        if outcome.abandoned:
            self.stats.add(failures=len(outcome.abandoned))
            for item, lost in outcome.abandoned:
                logger.error("metrics_client: %s %s not sent: %s", item.kind, lost.label, lost.message)
            self._note_lost_locked(outcome.abandoned)
        if outcome.retry:
            self.stats.add(failures=1)
            self._last_failure = outcome.failure
            if self._give_up.is_set() or self._closed:
                self._dropped_at_close += len(outcome.retry)
                self.stats.add(dropped=len(outcome.retry))
                logger.warning("metrics_client: closed with %s unsent (last error: %s)",
                               _records(len(outcome.retry)), outcome.failure)
                self._note_lost_locked([(item, Lost(item.label, None, outcome.failure or "", {}))
                                        for item in outcome.retry])
                return
            older = []  # a suspect the batch was taken from behind stays ahead of it
            while self._queue and self._queue[0].seq < outcome.retry[0].seq:
                older.append(self._queue.popleft())
            self._queue.extendleft(reversed(outcome.retry))
            self._queue.extendleft(reversed(older))
            self._drop_overflow_locked()
            pause = self._policy.backoff(self._policy.max_retries)
            self._pause_until = time.monotonic() + pause
            self._failed_rounds += 1
            # While the server stays away, one warning per ten failed rounds is enough.
            log = logger.warning if self._failed_rounds % 10 == 1 else logger.info
            log("metrics_client: could not send %s (%s); %d failed attempts in a row, trying again in %.1f s",
                _records(len(outcome.retry)), outcome.failure, self._failed_rounds, pause)
        elif outcome.sent or outcome.duplicates:
            if self._failed_rounds:
                logger.warning("metrics_client: sending again after %d failed attempts", self._failed_rounds)
            self._failed_rounds = 0
            self._last_failure = None

    def _drop_overflow_locked(self) -> None:
        dropped = []
        while len(self._queue) > self.max_queue_size:
            dropped.append(self._queue.popleft())
        if not dropped:
            return
        self.stats.add(dropped=len(dropped))
        self._note_lost_locked([(item, Lost(item.label, None, "dropped: the queue was full", {})) for item in dropped])
        self._dropped_since_log += len(dropped)
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL:
            logger.warning("metrics_client: queue full (%s); dropped the %d oldest (%d in all so far)",
                           _records(self.max_queue_size), self._dropped_since_log, self.stats.dropped)
            self._dropped_since_log, self._last_drop_log = 0, now

    def _note_lost_locked(self, entries: list[tuple[Item, Lost]]) -> None:
        if not self.strict or not entries:
            return
        self._lost_count += len(entries)
        room = MAX_LOST_DETAILS - len(self._lost)
        self._lost.extend(lost for _, lost in entries[:max(room, 0)])

    def _raise_if_lost(self) -> None:
        with self._lock:
            lost, count = self._lost, self._lost_count
            self._lost, self._lost_count = [], 0
        if not count:
            return
        errors: dict[str, list[str]] = {}
        for entry in lost:
            for name, messages in entry.errors.items():
                for message in messages:
                    if message not in errors.setdefault(name, []):
                        errors[name].append(message)
        statuses = [entry.status for entry in lost if entry.status is not None]
        kind = MetricsValidationError if errors else MetricsClientError
        raise kind(f"{_records(count)} not stored; first: {lost[0].label}: {lost[0].message}",
                   status_code=statuses[-1] if statuses else None, errors=errors,
                   request_ids=[entry.label for entry in lost])

    # --- helpers ------------------------------------------------------------------------------------

    def _lowest_unsettled(self) -> float:
        with self._lock:
            return self._lowest_unsettled_locked()

    def _lowest_unsettled_locked(self) -> float:
        # Both are in order (taken from, and put back at, the head); a suspect left at the head while
        # the records behind it are in flight is older than they are.
        lowest = math.inf
        if self._in_flight:
            lowest = self._in_flight[0].seq
        if self._queue:
            lowest = min(lowest, self._queue[0].seq)
        return lowest


def _records(count: int) -> str:
    return f"{count} record" if count == 1 else f"{count} records"


_open_senders: weakref.WeakSet[BackgroundSender] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for sender in list(_open_senders):
        sender._reset_after_fork()


def _close_at_exit(sender: BackgroundSender) -> None:
    try:
        sender.close(sender.shutdown_timeout)
    except Exception:  # strict mode's report at exit: log it, the process is ending anyway
        logger.exception("metrics_client: records lost at exit")


def _close_all_at_exit() -> None:
    for sender in list(_open_senders):
        _close_at_exit(sender)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)
