"""Validation of what clients send to the ingest API.

Ingest validates thousands of events a second, so events are checked with pydantic (its core is
compiled) rather than DRF serializers. Every rule names the field it rejects. JSON bodies are
parsed with `parse_json_body`, which keeps decimals exact and refuses NaN and Infinity.
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, Literal

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    model_validator,
)

from billing.pricing.rates import EVENT_FIELD_KEYS, usage_problem

MAX_TOKENS = 100_000_000  # no single LLM call uses more; larger values are client bugs
MAX_LATENCY_MS = 86_400_000.0  # one day
# One event's cost: no single LLM call costs more, and 10^6 such events still sum within 64-bit money.
MAX_COST_USD = Decimal(10_000)
MAX_BATCH_COST_USD = Decimal(1_000_000)  # a batch run is many calls
EARLIEST_TIMESTAMP = datetime(2015, 1, 1, tzinfo=UTC)
MAX_METADATA_BYTES = 16_384


class MalformedBody(ValueError):
    """The request body is not acceptable JSON at all."""


def _reject_constant(name: str):
    raise MalformedBody(f"{name} is not allowed in JSON; send a finite number or null")


def parse_json_body(body: bytes) -> Any:
    if not body:
        raise MalformedBody("The request body is empty; send a JSON object.")
    try:
        return json.loads(body, parse_float=Decimal, parse_constant=_reject_constant)
    except MalformedBody:
        raise
    except RecursionError:
        raise MalformedBody("The request body nests JSON too deeply.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedBody(f"The request body is not valid JSON: {exc}") from None


MAX_MAGNITUDE = 10**15  # larger than any field's limit; checked before any arithmetic on the value


def _number(value: Any) -> Any:
    # JSON numbers only: "12" (a string) and true (a bool) are type errors, not numbers.
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise ValueError("must be a number")
    # 1e999999999 parses to a Decimal cheaply; turning it into an int or float would not.
    if isinstance(value, Decimal) and (not value.is_finite() or value.adjusted() > 15):
        raise ValueError("is out of range")
    if isinstance(value, int) and abs(value) > MAX_MAGNITUDE:
        raise ValueError("is out of range")
    return value


def _integer(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise ValueError("must be an integer")
    value = _number(value)
    if isinstance(value, (Decimal, float)):
        if value != int(value):
            raise ValueError("must be a whole number")
        return int(value)
    return value


def _boolean(value: Any) -> Any:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


NOT_UTF8 = "must be valid Unicode text: a lone surrogate (\\ud800-\\udfff) cannot be stored"
HAS_NUL = "must not contain NUL (\\u0000) characters"  # PostgreSQL cannot store NUL in text


def is_utf8(value: str) -> bool:
    """False for text holding a lone surrogate ("\\ud800" in JSON): it has no UTF-8 form, so
    PostgreSQL refuses it and pages cannot render it. ASCII (the usual case) is checked in one step."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if "\x00" in value:
        raise ValueError(HAS_NUL)
    if not is_utf8(value):
        raise ValueError(NOT_UTF8)
    return value


class NestedValueError(ValueError):
    """A value error inside a structure; its message starts with the path to the value ("a.0: ...")."""

    def __init__(self, message: str, path: tuple[str | int, ...] = ()):
        super().__init__(message)
        self.message, self.path = message, path

    def within(self, step: str | int) -> NestedValueError:
        return NestedValueError(self.message, (step, *self.path))

    def __str__(self) -> str:
        return f"{'.'.join(map(str, self.path))}: {self.message}" if self.path else self.message


_window: tuple[timedelta, timedelta, int] | None = None


@receiver(setting_changed)
def _forget_window(*, setting, **kwargs):
    global _window
    if setting in ("RAW_EVENT_RETENTION_DAYS", "INGEST_MAX_FUTURE_SECONDS"):
        _window = None


def _accepted_window() -> tuple[timedelta, timedelta, int]:
    """(how far back, how far ahead, days back) an event's timestamp may be; settings read once."""
    global _window
    if _window is None:
        # A day short of the raw retention window, so an accepted event is rolled up before it is pruned.
        oldest_days = settings.RAW_EVENT_RETENTION_DAYS - 1
        _window = (timedelta(days=oldest_days), timedelta(seconds=settings.INGEST_MAX_FUTURE_SECONDS), oldest_days)
    return _window


def _aware_timestamp(value: datetime) -> datetime:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # the seed sends naive UTC times ("2025-12-14 19:37:14")
    try:
        value = value.astimezone(UTC)
    except OverflowError:  # "9999-12-31T23:59:59-01:00" is after year 9999 in UTC
        raise ValueError("is out of range: send a time between 2015 and now (UTC)") from None
    now = datetime.now(UTC)
    back, ahead, oldest_days = _accepted_window()
    if value < EARLIEST_TIMESTAMP or value < now - back:
        raise ValueError(f"is older than the {oldest_days}-day window this service keeps raw events for")
    if value > now + ahead:
        raise ValueError("is in the future; send the time the call was made (UTC)")
    return value


MAX_METADATA_DEPTH = 8


def _metadata(value: Any) -> Any:
    """Free-form metadata, bounded: shallow nesting, sane numbers (Decimals become plain numbers),
    storable text in keys and values. A problem's message starts with its path (`a.0: ...`)."""
    if not isinstance(value, dict):
        return value  # pydantic names the wrong type
    return _metadata_value(value, 0)


def _storable_text(value: str) -> bool:
    return "\x00" not in value and is_utf8(value)


def _metadata_value(value: Any, depth: int) -> Any:
    # The path to a bad value is built only while its error unwinds: the usual input pays nothing for it.
    if depth > MAX_METADATA_DEPTH:
        raise NestedValueError(f"nests deeper than {MAX_METADATA_DEPTH} levels")
    if isinstance(value, str):
        if not _storable_text(value):
            raise NestedValueError(HAS_NUL if "\x00" in value else NOT_UTF8)
        return value
    if isinstance(value, dict):
        cleaned = {}
        for key, item in value.items():
            if not isinstance(key, str) or not _storable_text(key):
                # The key itself cannot be shown in the error: name the object holding it.
                raise NestedValueError("has a key that is not storable text (NUL or a lone surrogate)")
            try:
                cleaned[key] = _metadata_value(item, depth + 1)
            except NestedValueError as exc:
                raise exc.within(key) from None
        return cleaned
    if isinstance(value, list):
        items = []
        for index, item in enumerate(value):
            try:
                items.append(_metadata_value(item, depth + 1))
            except NestedValueError as exc:
                raise exc.within(index) from None
        return items
    if isinstance(value, Decimal):
        if not value.is_finite() or value.adjusted() > 15:
            raise NestedValueError("is a number out of range")
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_MAGNITUDE:
        raise NestedValueError("is a number out of range")
    if isinstance(value, float) and not math.isfinite(value):  # from Python callers; JSON has no NaN
        raise NestedValueError("is a number out of range")
    return value


def _small_json(value: Any) -> Any:
    if len(json.dumps(value)) > MAX_METADATA_BYTES:
        raise ValueError(f"must serialise to at most {MAX_METADATA_BYTES} bytes")
    return value


Tokens = Annotated[int, BeforeValidator(_integer), Field(ge=0, le=MAX_TOKENS)]
Millis = Annotated[float, BeforeValidator(_number), Field(ge=0, le=MAX_LATENCY_MS, allow_inf_nan=False)]
Usd = Annotated[Decimal, BeforeValidator(_number), Field(ge=0, le=int(MAX_COST_USD), allow_inf_nan=False)]
BatchUsd = Annotated[Decimal, BeforeValidator(_number), Field(ge=0, le=int(MAX_BATCH_COST_USD), allow_inf_nan=False)]
Flag = Annotated[bool, BeforeValidator(_boolean)]


def Text(max_length: int, min_length: int = 0):  # noqa: N802 -- reads as a type in the models below
    return Annotated[str, BeforeValidator(_text), Field(min_length=min_length, max_length=max_length)]


ALIAS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@:-]*$"
Alias = Annotated[str, BeforeValidator(_text), Field(min_length=1, max_length=100, pattern=ALIAS_PATTERN)]
Timestamp = Annotated[datetime, AfterValidator(_aware_timestamp)]
# Checked before pydantic's dict validation, so a bad key is named by our rule, not echoed back.
Metadata = Annotated[dict[str, Any], BeforeValidator(_metadata), AfterValidator(_small_json)]
Tags = Annotated[list[Annotated[str, BeforeValidator(_text), Field(max_length=100)]], Field(max_length=50)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, allow_inf_nan=False)


class _EventBase(_Strict):
    """What both forms of an event share: the cross-field rule, the defaults, the client's cost."""

    if TYPE_CHECKING:  # declared by each subclass, with its own validation
        prompt_tokens: int
        output_tokens: int
        total_tokens: int | None
        cached_tokens: int
        cache_write_tokens: int
        request_id: str | None
        timestamp: datetime | None
        response_cost: Decimal | None
        prompt_cost: Decimal | None
        output_cost: Decimal | None
        usage: dict[str, Any] | None

    @model_validator(mode="after")
    def _consistent(self) -> _EventBase:
        if self.usage is not None:
            counts = {name: getattr(self, name) for name in EVENT_FIELD_KEYS.values()}
            problem = usage_problem(counts, self.usage)
            if problem:
                raise ValueError(f"{problem[0]}: {problem[1]}")
        if self.cached_tokens > self.prompt_tokens:
            raise ValueError("cached_tokens: must not exceed prompt_tokens")
        if self.cached_tokens + self.cache_write_tokens > self.prompt_tokens:
            # prompt_tokens is the whole input: cache reads and cache writes are parts of it.
            raise ValueError("cache_write_tokens: cached_tokens + cache_write_tokens must not exceed prompt_tokens")
        # A larger total is kept (some providers count tokens beyond prompt and output); a smaller
        # one contradicts the event's own counts.
        if self.total_tokens is not None and self.total_tokens < self.prompt_tokens + self.output_tokens:
            raise ValueError("total_tokens: must be at least prompt_tokens + output_tokens")
        if self.total_tokens is None:
            self.total_tokens = self.prompt_tokens + self.output_tokens
        if self.request_id is None:
            self.request_id = str(uuid.uuid4())
        if self.timestamp is None:
            self.timestamp = datetime.now(UTC)
        return self

    @property
    def client_cost(self) -> Decimal | None:
        if self.response_cost is not None:
            return self.response_cost
        if self.prompt_cost is not None or self.output_cost is not None:
            return (self.prompt_cost or Decimal(0)) + (self.output_cost or Decimal(0))
        return None


class _EventRules(_EventBase):
    """The rules for one event, written out with their own messages.

    `EventIn` sends here every input its compiled checks do not accept outright, so this model
    alone decides what is refused and words the errors.
    """

    model_config = ConfigDict(title="EventIn")

    model: Text(200, 1)
    prompt_tokens: Tokens = 0
    output_tokens: Tokens = 0
    total_tokens: Tokens | None = None
    cached_tokens: Tokens = 0
    cache_write_tokens: Tokens = 0
    latency_ms: Millis = 0.0
    time_to_first_token_ms: Millis | None = None
    cache_hit: Flag = False
    cache_similarity_score: Annotated[
        float, BeforeValidator(_number), Field(ge=0, le=1, allow_inf_nan=False)
    ] | None = None
    is_batched: Flag = False
    batch_id: Text(128) | None = None
    batch_size: Annotated[int, BeforeValidator(_integer), Field(ge=1, le=1_000_000)] | None = None
    user_id: Text(255) | None = None
    team_alias: Alias | None = None
    end_user: Text(255) | None = None
    query_type: Text(100) | None = None
    status: Literal["success", "error"] = "success"
    error_message: Text(4000) | None = None
    timestamp: Timestamp | None = None
    request_id: Annotated[str, BeforeValidator(_text), Field(min_length=1, max_length=128)] | None = None
    provider: Text(64) | None = None
    response_cost: Usd | None = None
    prompt_cost: Usd | None = None
    output_cost: Usd | None = None
    metadata: Metadata | None = None
    tags: Tags | None = None
    usage: dict[str, Any] | None = None


# The same fields in pydantic-core's strict types: JSON-typed input (ints for counts, numbers for
# durations, Decimals for costs, strings without NUL) is checked without calling Python per field.
# Each accepts a subset of what its `_EventRules` twin accepts, and yields the same value.
# pydantic-core refuses a lone surrogate itself (`string_unicode`), so such text is judged by the rules.
_NO_NUL = r"^[^\x00]*$"
_StrictTokens = Annotated[int, Strict(), Field(ge=0, le=MAX_TOKENS)]
_StrictMillis = Annotated[float, Strict(), Field(ge=0, le=MAX_LATENCY_MS, allow_inf_nan=False)]
_StrictUsd = Annotated[Decimal, Strict(), Field(ge=0, le=int(MAX_COST_USD), allow_inf_nan=False)]
_StrictFlag = Annotated[bool, Strict()]


def _StrictText(max_length: int, min_length: int = 0):  # noqa: N802 -- reads as a type in the model below
    return Annotated[str, Strict(), Field(min_length=min_length, max_length=max_length, pattern=_NO_NUL)]


_StrictAlias = Annotated[str, Strict(), Field(min_length=1, max_length=100, pattern=ALIAS_PATTERN)]


class EventIn(_EventBase):
    """One LLM call: the seed's `metrics` columns plus optional metadata.

    Accepts exactly what `_EventRules` accepts, with the same values and the same errors: the
    strict fields below take the usual input in compiled code (ingest validates thousands of events
    a second), and anything they refuse is judged again by `_EventRules`.
    """

    model: _StrictText(200, 1)
    prompt_tokens: _StrictTokens = 0
    output_tokens: _StrictTokens = 0
    total_tokens: _StrictTokens | None = None
    cached_tokens: _StrictTokens = 0
    cache_write_tokens: _StrictTokens = 0
    latency_ms: _StrictMillis = 0.0
    time_to_first_token_ms: _StrictMillis | None = None
    cache_hit: _StrictFlag = False
    cache_similarity_score: Annotated[float, Strict(), Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    is_batched: _StrictFlag = False
    batch_id: _StrictText(128) | None = None
    batch_size: Annotated[int, Strict(), Field(ge=1, le=1_000_000)] | None = None
    user_id: _StrictText(255) | None = None
    team_alias: _StrictAlias | None = None
    end_user: _StrictText(255) | None = None
    query_type: _StrictText(100) | None = None
    status: Literal["success", "error"] = "success"
    error_message: _StrictText(4000) | None = None
    timestamp: Timestamp | None = None
    request_id: _StrictText(128, 1) | None = None
    provider: _StrictText(64) | None = None
    response_cost: _StrictUsd | None = None
    prompt_cost: _StrictUsd | None = None
    output_cost: _StrictUsd | None = None
    metadata: Metadata | None = None
    tags: Annotated[list[_StrictText(100)], Field(max_length=50)] | None = None
    usage: Annotated[dict[str, Any], Strict()] | None = None

    @model_validator(mode="wrap")
    @classmethod
    def _strict_or_rules(cls, data: Any, handler) -> EventIn:
        try:
            return handler(data)
        except ValidationError:
            # Raises the rules' own errors, or accepts what only they accept (e.g. 100.0 tokens).
            ruled = _EventRules.model_validate(data)
            return cls.model_construct(_fields_set=ruled.model_fields_set, **dict(ruled))


class CacheStatIn(_Strict):
    cache_hit: Tokens = 0
    cache_miss: Tokens = 0
    avg_lookup_time_ms: Millis = 0.0
    team_alias: Alias | None = None
    timestamp: Timestamp | None = None


class BatchRunIn(_Strict):
    batch_id: Text(128, 1)
    batch_size: Annotated[int, BeforeValidator(_integer), Field(ge=1, le=1_000_000)]
    total_tokens: Tokens = 0
    batch_cost: BatchUsd = Decimal(0)
    batch_latency_ms: Millis = 0.0
    status: Literal["success", "error", "partial"] = "success"
    team_alias: Alias | None = None
    timestamp: Timestamp | None = None


def field_errors(exc: ValidationError) -> dict[str, list[str]]:
    """pydantic errors as `{field: [message, ...]}`, the API's one error shape."""
    errors: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False):
        location = ".".join(str(part) for part in error["loc"]) or "non_field_errors"
        message = error["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if location == "non_field_errors" and ": " in message:  # model-level rule naming its field
            location, message = message.split(": ", 1)
        if error["type"] == "extra_forbidden":
            message = "is not a known field"
        elif error["type"] == "missing":
            message = "is required"
        elif error["type"] == "string_unicode":
            message = NOT_UTF8
        errors.setdefault(location, []).append(message)
    return errors
