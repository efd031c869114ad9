"""LiteLLM's generic API logger (`callback_type: generic_api`) → usage events.

The logger posts LiteLLM's StandardLoggingPayload objects: a JSON array (`log_format: json_array`,
the default), one object per line (`ndjson`, still sent as `Content-Type: application/json`, so the
body's shape decides too) or one object per request (`single`). Each object becomes one `EventIn`:

| event field | from the LiteLLM log |
|---|---|
| request_id | `id` (unique per call; LiteLLM gives cache hits an id of their own) |
| model, provider | `model`, `custom_llm_provider` |
| prompt_tokens, output_tokens, total_tokens | `prompt_tokens`, `completion_tokens`, `total_tokens` |
| cached_tokens | `metadata.usage_object.prompt_tokens_details.cached_tokens` or `.cache_read_input_tokens` |
| cache_write_tokens | `metadata.usage_object.cache_creation_input_tokens` |
| usage.input_audio_tokens | `metadata.usage_object.prompt_tokens_details.audio_tokens` (likewise `image`) |
| usage.output_audio_tokens | `metadata.usage_object.completion_tokens_details.audio_tokens` (likewise `image`) |
| usage.output_reasoning_tokens | `metadata.usage_object.completion_tokens_details.reasoning_tokens` |
| timestamp | `startTime` (epoch seconds) |
| latency_ms | `endTime − startTime` |
| time_to_first_token_ms | `completionStartTime − startTime`, when the first chunk came before the end |
| cache_hit | `cache_hit` (served from LiteLLM's cache: no provider call, so no billed tokens) |
| status, error_message | `status` (`failure` → `error`), `error_str` / `error_information.error_message` |
| team_alias, user_id, end_user | `metadata.user_api_key_team_alias`, `metadata.user_api_key_user_id`, `end_user` |
| tags | `request_tags` |
| response_cost | `response_cost` (stored as the cost only when no price matches the model) |

Messages and responses in the log are not stored.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from metrics.schemas import NOT_UTF8, EventIn, MalformedBody, field_errors, is_utf8, parse_json_body

from .usage_parts import usage_parts

MAX_ERROR_MESSAGE = 4000  # EventIn's limit; LiteLLM's error strings can carry whole tracebacks
MAX_TAGS, MAX_TAG_LENGTH = 50, 100
LATEST_EPOCH_SECONDS = 10**11  # year 5138: anything larger is milliseconds or nanoseconds, not seconds


def team_alias_from_name(name: str) -> str:
    """A team alias for a free-text team name: runs of other characters become one '-'."""
    return re.sub(r"[^A-Za-z0-9._@:-]+", "-", name.strip()).lstrip("._@:-")[:100].rstrip("-")


class LogRejected(ValueError):
    """One log cannot become a usage event; `errors` names LiteLLM's fields."""

    def __init__(self, errors: dict[str, list[str]]):
        super().__init__(errors)
        self.errors = errors


# Where each event field comes from, so a rejected log's errors name the field LiteLLM sent.
SOURCE_FIELDS = {
    "request_id": "id",
    "model": "model",
    "provider": "custom_llm_provider",
    "prompt_tokens": "prompt_tokens",
    "output_tokens": "completion_tokens",
    "total_tokens": "total_tokens",
    "cached_tokens": "metadata.usage_object.prompt_tokens_details.cached_tokens",
    "cache_write_tokens": "metadata.usage_object.cache_creation_input_tokens",
    "timestamp": "startTime",
    "latency_ms": "endTime",
    "time_to_first_token_ms": "completionStartTime",
    "cache_hit": "cache_hit",
    "status": "status",
    "error_message": "error_str",
    "team_alias": "metadata.user_api_key_team_alias",
    "user_id": "metadata.user_api_key_user_id",
    "end_user": "end_user",
    "tags": "request_tags",
    "response_cost": "response_cost",
    "metadata": "metadata",
}


def source_errors(errors: dict[str, list[str]], sources: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Event-field errors renamed to the LiteLLM fields they came from (`tags.3` → `request_tags.3`)."""
    sources = {**SOURCE_FIELDS, **(sources or {})}
    renamed: dict[str, list[str]] = {}
    for location, messages in errors.items():
        head, _, rest = location.partition(".")
        name = sources.get(head, location) + (f".{rest}" if rest and head in sources else "")
        renamed.setdefault(name, []).extend(messages)
    return renamed


# --- the body -----------------------------------------------------------------------------------

NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines")


def split_logs(body: bytes, *, content_type: str) -> list[Any]:
    """The logs in a request body, in order. A line of NDJSON that is not JSON is kept as the
    `MalformedBody` it raised, so the other lines are still recorded and that one is named."""
    if content_type in NDJSON_TYPES:
        return _ndjson(body)
    try:
        data = parse_json_body(body)
    except MalformedBody:
        # LiteLLM sends NDJSON as application/json: one object per line fails as one document.
        if body.lstrip().startswith(b"{") and b"\n" in body.strip():
            return _ndjson(body)
        raise
    if isinstance(data, dict):
        return [data]
    if isinstance(data, list):
        return data
    raise MalformedBody("Send LiteLLM logs: a JSON array of objects, one object, or one object per line (NDJSON).")


def _ndjson(body: bytes) -> list[Any]:
    logs: list[Any] = []
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            logs.append(parse_json_body(line))
        except MalformedBody as exc:
            logs.append(MalformedBody(f"line {number}: {exc}"))
    if not logs:
        raise MalformedBody("The request body is empty; send LiteLLM logs.")
    return logs


# --- one log ------------------------------------------------------------------------------------


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _present(value: Any) -> bool:
    return value is not None and value != ""


def _seconds(log: dict, name: str, errors: dict[str, list[str]]) -> Decimal | None:
    """An epoch-seconds field (LiteLLM sends floats; ISO 8601 text is accepted too)."""
    value = log.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            errors.setdefault(name, []).append("must be epoch seconds or an ISO 8601 time")
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)  # LiteLLM's own times are UTC
        try:
            value = Decimal(str(moment.timestamp()))
        except (OverflowError, ValueError):  # e.g. year 1 at +05:00 is before year 1 in UTC
            value = Decimal(-1)
        if not 0 <= value < LATEST_EPOCH_SECONDS:
            errors.setdefault(name, []).append("must be a time between 1970 and 5000")
            return None
        return value
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)) or not Decimal(value).is_finite():
        errors.setdefault(name, []).append("must be epoch seconds (a number)")
        return None
    if not 0 <= value < LATEST_EPOCH_SECONDS:
        errors.setdefault(name, []).append("must be epoch seconds, not milliseconds")
        return None
    return Decimal(value)


def _cached_tokens(usage: dict[str, Any]) -> tuple[Any, str | None]:
    """Prompt tokens read from the provider's cache, and the usage field that said so.

    OpenAI-style usage reports `prompt_tokens_details.cached_tokens`, Anthropic-style
    `cache_read_input_tokens`; LiteLLM fills both when it knows. The larger one counts.
    """
    details = usage.get("prompt_tokens_details")
    candidates = [
        (details.get("cached_tokens") if isinstance(details, dict) else None,
         "metadata.usage_object.prompt_tokens_details.cached_tokens"),
        (usage.get("cache_read_input_tokens"), "metadata.usage_object.cache_read_input_tokens"),
    ]
    present = [(value, source) for value, source in candidates if value is not None]
    if not present:
        return 0, None
    numbers = [(value, source) for value, source in present if isinstance(value, (int, Decimal))
               and not isinstance(value, bool)]
    if len(numbers) < len(present):  # let EventIn name the malformed one
        return next((value, source) for value, source in present if (value, source) not in numbers)
    return max(numbers, key=lambda pair: pair[0])


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# (genai-prices usage key, which details object of LiteLLM's usage, its field there)
USAGE_DETAILS = (
    ("input_audio_tokens", "prompt_tokens_details", "audio_tokens"),
    ("input_image_tokens", "prompt_tokens_details", "image_tokens"),
    ("output_audio_tokens", "completion_tokens_details", "audio_tokens"),
    ("output_reasoning_tokens", "completion_tokens_details", "reasoning_tokens"),
    ("output_image_tokens", "completion_tokens_details", "image_tokens"),
)


def _usage_details(usage: dict[str, Any]) -> dict[str, Any]:
    return {key: _mapping(usage.get(holder)).get(name) for key, holder, name in USAGE_DETAILS}


def usage_event(log: Any) -> EventIn:
    """One LiteLLM StandardLoggingPayload as a validated usage event, or `LogRejected`."""
    if isinstance(log, MalformedBody):
        raise LogRejected({"non_field_errors": [str(log)]})
    if not isinstance(log, dict):
        raise LogRejected({"non_field_errors": ["Send a JSON object (one LiteLLM StandardLoggingPayload)."]})
    errors: dict[str, list[str]] = {}
    metadata = _mapping(log.get("metadata"))
    usage = _mapping(metadata.get("usage_object")) or _mapping(_mapping(log.get("hidden_params")).get("usage_object"))

    if not _present(log.get("id")):
        errors["id"] = ["is required: LiteLLM's id makes a re-sent log count once"]
    start = _seconds(log, "startTime", errors)
    end = _seconds(log, "endTime", errors)
    first_chunk = _seconds(log, "completionStartTime", errors)
    if start is None and "startTime" not in errors:
        errors["startTime"] = ["is required"]
    status = log.get("status") or "success"
    if status not in ("success", "failure"):
        errors["status"] = ["must be 'success' or 'failure'"]
    cached, cached_source = _cached_tokens(usage)
    if errors:
        raise LogRejected(errors)
    assert start is not None

    fields: dict[str, Any] = {
        "request_id": log["id"],
        "model": log.get("model") or log.get("model_group") or "",
        "timestamp": datetime.fromtimestamp(float(start), UTC),
        "status": "error" if status == "failure" else "success",
        "cache_hit": False if log.get("cache_hit") is None else log["cache_hit"],  # LiteLLM sends null for "no"
    }
    if _present(log.get("custom_llm_provider")):
        fields["provider"] = log["custom_llm_provider"]
    if end is not None:
        if end < start:
            raise LogRejected({"endTime": ["must not be before startTime"]})
        fields["latency_ms"] = float((end - start) * 1000)
        streamed = log.get("stream") is True
        # Without streaming LiteLLM sets completionStartTime to endTime: that is no first token.
        if first_chunk is not None and start <= first_chunk <= end and (streamed or first_chunk < end):
            fields["time_to_first_token_ms"] = float((first_chunk - start) * 1000)

    extra: dict[str, Any] = {"source": "litellm"}
    if fields["cache_hit"]:
        # Answered from LiteLLM's own cache: the provider was not called and billed nothing.
        extra["cache_hit_usage"] = {
            key: log.get(key) for key in ("prompt_tokens", "completion_tokens", "total_tokens") if key in log
        }
        if log.get("saved_cache_cost") is not None:
            extra["saved_cache_cost"] = log["saved_cache_cost"]
    else:
        for field, source in (("prompt_tokens", "prompt_tokens"), ("output_tokens", "completion_tokens"),
                              ("total_tokens", "total_tokens")):
            if log.get(source) is not None:
                fields[field] = log[source]
        if cached:
            fields["cached_tokens"] = cached
        written = usage.get("cache_creation_input_tokens")
        if written:
            fields["cache_write_tokens"] = written
            prompt = fields.get("prompt_tokens")
            # Our prompt_tokens is the whole input; LiteLLM versions that leave cache writes out of
            # theirs (Anthropic's input_tokens does) are told apart by the parts exceeding the whole.
            if _whole(prompt) and _whole(written) and _whole(cached) and cached + written > prompt:
                fields["prompt_tokens"] = prompt + written
                if _whole(fields.get("total_tokens")):
                    fields["total_tokens"] += written
        parts, ignored = usage_parts(fields, _usage_details(usage))
        if parts:
            fields["usage"] = parts
        if ignored:
            # A detail larger than its total (or not a count) is no usage we can price: kept as sent.
            extra["usage_ignored"] = ignored

    if fields["status"] == "error":
        information = _mapping(log.get("error_information"))
        message = log.get("error_str") or information.get("error_message")
        if isinstance(message, str) and message:
            fields["error_message"] = message[:MAX_ERROR_MESSAGE]
        if information.get("error_code") is not None:
            extra["error_code"] = str(information["error_code"])
    if _present(log.get("response_cost")):
        fields["response_cost"] = log["response_cost"]

    team_name = metadata.get("user_api_key_team_alias")
    if isinstance(team_name, str) and not is_utf8(team_name):
        # Rewriting would hide it, but the name is kept in metadata as sent: refuse it here, by name.
        raise LogRejected({"metadata.user_api_key_team_alias": [NOT_UTF8]})
    if isinstance(team_name, str) and team_name.strip():
        # LiteLLM team aliases are display names ("ML Platform"); the logger never retries, so a
        # name our aliases cannot hold becomes one ("ML-Platform") rather than losing the call,
        # and a name with nothing to keep ("日本") leaves the call to the default team.
        alias = team_alias_from_name(team_name)
        if alias:
            fields["team_alias"] = alias
        if alias != team_name:
            extra["litellm_team_alias"] = team_name[:200]
    elif _present(team_name) and not isinstance(team_name, str):
        fields["team_alias"] = team_name  # not text: rejected naming the field
    if _present(metadata.get("user_api_key_user_id")):
        fields["user_id"] = metadata["user_api_key_user_id"]
    end_user = log.get("end_user") or metadata.get("user_api_key_end_user_id")
    if _present(end_user):
        fields["end_user"] = end_user
    tags = log.get("request_tags")
    if isinstance(tags, list):
        # Tags only label an event: keep the usable ones rather than lose the call's cost over one.
        kept = [tag[:MAX_TAG_LENGTH] for tag in tags
                if isinstance(tag, str) and tag.strip() and "\x00" not in tag and is_utf8(tag)]
        if kept:
            fields["tags"] = kept[:MAX_TAGS]

    for key, holder in (("call_type", log), ("model_group", log), ("model_id", log), ("trace_id", log),
                        ("user_api_key_alias", metadata), ("user_api_key_team_id", metadata)):
        if isinstance(holder.get(key), str) and holder[key]:
            extra[key] = holder[key][:200]
    fields["metadata"] = extra

    try:
        return EventIn.model_validate(fields)
    except ValidationError as exc:
        sources = {"cached_tokens": cached_source} if cached_source else {}
        if fields["status"] == "error" and not log.get("error_str"):
            sources["error_message"] = "error_information.error_message"
        if not log.get("model"):
            sources["model"] = "model"
        if not log.get("end_user"):
            sources["end_user"] = "metadata.user_api_key_end_user_id"
        raise LogRejected(source_errors(field_errors(exc), sources)) from None
