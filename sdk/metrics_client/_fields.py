"""What the server accepts, checked before anything is queued, and JSON that keeps Decimals exact.

The server validates everything again (ranges, lengths, clock skew); the checks here catch what
would make a whole batch useless later — an unknown field, a wrong type — while the caller can
still be told, and they fill in the two fields that make a retried send safe to repeat: the
`request_id` the server de-duplicates on, and the `timestamp` of the call (not of the send).
"""

from __future__ import annotations

import json
import math
import numbers
import uuid
from collections.abc import Mapping
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from .errors import MetricsValidationError

# Field name -> kind, as the server's /api/v1/events and /api/v1/metrics/track accept them.
EVENT_FIELDS: dict[str, str] = {
    "model": "text",
    "prompt_tokens": "integer",
    "output_tokens": "integer",
    "total_tokens": "integer",
    "cached_tokens": "integer",
    "cache_write_tokens": "integer",
    "usage": "usage",
    "latency_ms": "number",
    "time_to_first_token_ms": "number",
    "cache_hit": "boolean",
    "cache_similarity_score": "number",
    "is_batched": "boolean",
    "batch_id": "text",
    "batch_size": "integer",
    "user_id": "text",
    "team_alias": "text",
    "end_user": "text",
    "query_type": "text",
    "status": "event_status",
    "error_message": "text",
    "timestamp": "timestamp",
    "request_id": "text",
    "provider": "text",
    "response_cost": "money",
    "prompt_cost": "money",
    "output_cost": "money",
    "metadata": "object",
    "tags": "tags",
}
EVENT_REQUIRED = ("model",)

CACHE_FIELDS: dict[str, str] = {
    "cache_hit": "integer",
    "cache_miss": "integer",
    "avg_lookup_time_ms": "number",
    "team_alias": "text",
    "timestamp": "timestamp",
}

BATCH_FIELDS: dict[str, str] = {
    "batch_id": "text",
    "batch_size": "integer",
    "total_tokens": "integer",
    "batch_cost": "money",
    "batch_latency_ms": "number",
    "status": "batch_status",
    "team_alias": "text",
    "timestamp": "timestamp",
}
BATCH_REQUIRED = ("batch_id", "batch_size")

# Field name -> kind, as POST /api/v1/budget/reserve accepts them.
RESERVE_FIELDS: dict[str, str] = {
    "team_alias": "text",
    "user_id": "text",
    "end_user": "text",
    "request_id": "text",
    "amount": "money",
    "model": "text",
    "provider": "text",
    "prompt_tokens": "integer",
    "max_output_tokens": "integer",
    "ttl_seconds": "integer",
}
# What prices a reservation when no amount is given; all three, or none.
RESERVE_PRICED = ("model", "prompt_tokens", "max_output_tokens")

_CHOICES = {"event_status": ("success", "error"), "batch_status": ("success", "error", "partial")}


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError("must be an integer")
    if isinstance(value, numbers.Integral):
        return int(value)
    if not math.isfinite(_float(value)) or value != int(value):
        raise ValueError("must be a whole number")
    return int(value)


def _float(value: numbers.Real) -> float:
    try:
        return float(value)
    except OverflowError:  # an int (or Fraction) beyond a float's range, e.g. 10**400
        raise ValueError("is too large") from None


def _number(value: Any) -> float | Decimal:
    if isinstance(value, Decimal):  # not a numbers.Real, but the exact kind of number
        if not value.is_finite():
            raise ValueError("must be a finite number")
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError("must be a number")
    number = _float(value)
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    return number


def _money(value: Any) -> Decimal | int | float:
    """Costs in USD; a Decimal (or a numeric string, read as one) is sent exactly."""
    if isinstance(value, str):
        try:
            value = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError("must be a number") from None
    number = _number(value)
    return value if isinstance(value, numbers.Integral) else number


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _timestamp(value: Any) -> str | int | float:
    # Naive datetimes mean UTC, as on the server; strings and epoch seconds pass through.
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        raise ValueError("must be a datetime, an ISO 8601 string or epoch seconds, not a date")
    if isinstance(value, str):
        return value
    try:
        return _number(value)
    except ValueError:
        raise ValueError("must be a datetime, an ISO 8601 string or epoch seconds") from None


def _object(value: Any) -> dict:
    if not isinstance(value, Mapping):
        raise ValueError("must be a dict")
    value = dict(value)
    try:
        dumps(value)
    except RecursionError:
        raise ValueError("is nested too deeply") from None
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise ValueError(f"must hold JSON values only ({exc})") from None
    return value


def _usage(value: Any) -> dict[str, int]:
    """Other billed usage by genai-prices key ({"input_audio_tokens": 120}): whole counts of 0 or more.

    Which keys exist, and that a part stays within its total, the server checks (it knows the
    catalog's keys; this package does not depend on it).
    """
    if not isinstance(value, Mapping):
        raise ValueError('must be a dict of usage key -> count, e.g. {"input_audio_tokens": 120}')
    counts: dict[str, int] = {}
    for key, count in value.items():
        if not isinstance(key, str) or not key:
            raise ValueError("keys must be non-empty strings")
        try:
            number = _integer(count)
        except ValueError as exc:
            raise ValueError(f"{key} {exc}") from None
        if number < 0:
            raise ValueError(f"{key} must not be negative")
        counts[key] = number
    return counts


def _tags(value: Any) -> list[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, set, frozenset)):
        raise ValueError("must be a list of strings")
    if not all(isinstance(tag, str) for tag in value):
        raise ValueError("must be a list of strings")
    return list(value)


def _choice(kind: str):
    allowed = _CHOICES[kind]

    def check(value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return check


_CHECKS = {
    "integer": _integer,
    "number": _number,
    "money": _money,
    "text": _text,
    "boolean": _boolean,
    "timestamp": _timestamp,
    "object": _object,
    "usage": _usage,
    "tags": _tags,
    "event_status": _choice("event_status"),
    "batch_status": _choice("batch_status"),
}


# What checking an odd value can raise besides the checks' own ValueError: a number type whose
# __float__ or comparison fails, a float overflow, a structure too deep to encode. Tracking must
# answer these as field errors, never raise them into the caller.
_UNUSABLE_VALUE = (TypeError, ArithmeticError, RecursionError)


def clean(values: Mapping[str, Any], fields: Mapping[str, str], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields given (None means "not given"), checked and ready for JSON; or every problem at once."""
    errors: dict[str, list[str]] = {}
    cleaned: dict[str, Any] = {}
    for name, value in values.items():
        if name not in fields:
            errors[name] = ["is not a known field"]
        elif value is not None:
            try:
                cleaned[name] = _CHECKS[fields[name]](value)
            except ValueError as exc:
                errors[name] = [str(exc)]
            except _UNUSABLE_VALUE as exc:  # a value whose own methods fail: still the caller's field error
                errors[name] = [f"is not usable ({type(exc).__name__}: {exc})"]
    for name in required:
        if values.get(name) is None:
            errors[name] = ["is required"]
    if errors:
        raise MetricsValidationError("Invalid fields; nothing was sent.", errors=errors,
                                     request_ids=[values["request_id"]] if values.get("request_id") else [])
    return cleaned


def _reserve_choice_errors(values: Mapping[str, Any]) -> dict[str, list[str]]:
    """What the server would refuse about the request as a whole: amount xor model + both token counts."""
    given = {name for name, value in values.items() if value is not None}
    if "amount" in given:
        if given.intersection(RESERVE_PRICED):
            return {"amount": ["give amount, or model + prompt_tokens + max_output_tokens, not both"]}
        return {}
    missing = [name for name in RESERVE_PRICED if name not in given]
    if len(missing) == len(RESERVE_PRICED):
        return {"amount": ["is required, unless model, prompt_tokens and max_output_tokens are given"]}
    return {name: ["is required with model, prompt_tokens and max_output_tokens (or give amount)"]
            for name in missing}


def _decimal_text(value: Decimal | int | float) -> str:
    """A checked amount as the decimal string the server reads exactly (a JSON number may become a float)."""
    if isinstance(value, float):
        value = Decimal(repr(value))  # the shortest text that reads back as this float
    elif not isinstance(value, Decimal):
        value = Decimal(int(value))
    return format(value, "f")  # never exponent notation


def reserve_payload(values: Mapping[str, Any]) -> dict[str, Any]:
    """A checked reservation request, with the request id that makes sending it twice hold once.

    A missing `request_id` is generated: the transport repeats a reserve after a connection error,
    429 or 5xx, and the server gives a repeated request id its first reservation back.
    """
    errors = _reserve_choice_errors(values)
    try:
        body = clean(values, RESERVE_FIELDS)
    except MetricsValidationError as exc:
        errors.update(exc.errors)  # a field's own problem says more than the combination's
    if errors:
        raise MetricsValidationError("Invalid reservation; nothing was sent.", errors=errors,
                                     request_ids=[values["request_id"]] if values.get("request_id") else [])
    if "amount" in body:
        body["amount"] = _decimal_text(body["amount"])
    body.setdefault("request_id", uuid.uuid4().hex)
    return body


def new_request_id() -> str:
    return str(uuid.uuid4())


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat()


def event_payload(values: Mapping[str, Any]) -> dict[str, Any]:
    """A checked event with the request id and call time every queued event needs."""
    event = clean(values, EVENT_FIELDS, EVENT_REQUIRED)
    event.setdefault("request_id", new_request_id())
    event.setdefault("timestamp", now_utc())
    return event


# --- JSON ------------------------------------------------------------------------------------------

class _NeedsExactEncoder(Exception):
    pass


def _not_plain_json(value: Any) -> Any:
    raise _NeedsExactEncoder


def dumps(value: Any) -> bytes:
    """JSON for the API: Decimals are written digit for digit (json.dumps cannot), NaN is refused."""
    try:  # the common case, at C speed: nothing but plain JSON types
        return json.dumps(value, allow_nan=False, separators=(",", ":"), default=_not_plain_json).encode()
    except _NeedsExactEncoder:
        parts: list[str] = []
        _encode(value, parts)
        return "".join(parts).encode()


def _encode(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(json.dumps(value))
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("NaN and Infinity cannot be sent")
        out.append(str(value))
    elif isinstance(value, numbers.Integral):
        out.append(str(int(value)))
    elif isinstance(value, numbers.Real):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError("NaN and Infinity cannot be sent")
        out.append(repr(number))
    elif isinstance(value, Mapping):
        out.append("{")
        for position, (key, item) in enumerate(value.items()):
            if not isinstance(key, str):
                raise TypeError(f"object keys must be strings, not {type(key).__name__}")
            if position:
                out.append(",")
            out.append(json.dumps(key))
            out.append(":")
            _encode(item, out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for position, item in enumerate(value):
            if position:
                out.append(",")
            _encode(item, out)
        out.append("]")
    elif isinstance(value, datetime):
        out.append(json.dumps(value.isoformat()))
    else:
        raise TypeError(f"{type(value).__name__} is not JSON")


def loads(content: bytes) -> Any:
    """The server's JSON, with fractional numbers as Decimal so costs add up exactly."""
    return json.loads(content, parse_float=Decimal)
