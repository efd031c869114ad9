"""OpenTelemetry traces (OTLP/HTTP, JSON or protobuf) → usage events, from GenAI spans.

A span is an LLM call when its `gen_ai.operation.name` is a model call (`chat`,
`text_completion`, `generate_content`, `embeddings`), or when it names no operation but carries a
model and token usage (instrumentations written before the attribute existed). Agent and tool
spans (`invoke_agent`, `create_agent`, `execute_tool`) and spans without GenAI attributes are
ignored: an agent span's usage repeats that of the model calls inside it.

| event field | from the span (span attributes win over resource attributes) |
|---|---|
| request_id | trace id + span id (hex): a re-sent span counts once |
| model | `gen_ai.response.model`, else `gen_ai.request.model` |
| provider | `gen_ai.provider.name`, else `gen_ai.system` |
| prompt_tokens | `gen_ai.usage.input_tokens` (includes cached tokens), else `gen_ai.usage.prompt_tokens` |
| output_tokens | `gen_ai.usage.output_tokens`, else `gen_ai.usage.completion_tokens` |
| cached_tokens | `gen_ai.usage.cache_read.input_tokens` |
| cache_write_tokens | `gen_ai.usage.cache_creation.input_tokens` |
| usage.input_audio_tokens | `gen_ai.usage.audio.input_tokens` (likewise `image`, `video`) |
| usage.output_audio_tokens | `gen_ai.usage.audio.output_tokens` |
| usage.output_reasoning_tokens | `gen_ai.usage.reasoning.output_tokens` |
| timestamp, latency_ms | span start; end − start |
| status, error_message | span status ERROR (or an `error.type` attribute) → `error`; status message or `error.type` |
| query_type | `gen_ai.operation.name` |
| team_alias | `llmcost.team_alias` |
| user_id | `llmcost.user_id`, else `user.id`, else `enduser.id` |
| end_user | `enduser.id` |
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from pydantic import ValidationError

from metrics.schemas import EventIn, MalformedBody, field_errors

from .usage_parts import usage_parts

JSON = "application/json"
PROTOBUF = "application/x-protobuf"
CONTENT_TYPES = (JSON, PROTOBUF)

MODEL_CALLS = frozenset({"chat", "text_completion", "generate_content", "embeddings"})
NOT_MODEL_CALLS = frozenset({"invoke_agent", "create_agent", "execute_tool"})
# The GenAI conventions' usage breakdowns (each a part of its input or output total) → genai-prices keys.
USAGE_PARTS = (
    ("gen_ai.usage.audio.input_tokens", "input_audio_tokens"),
    ("gen_ai.usage.image.input_tokens", "input_image_tokens"),
    ("gen_ai.usage.video.input_tokens", "input_video_tokens"),
    ("gen_ai.usage.audio.output_tokens", "output_audio_tokens"),
    ("gen_ai.usage.reasoning.output_tokens", "output_reasoning_tokens"),
)
USAGE_KEYS = ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens",
              "gen_ai.usage.prompt_tokens", "gen_ai.usage.completion_tokens")
MAX_ERROR_MESSAGE = 4000
MAX_REPORTED_REJECTIONS = 5  # the partial-success message names the first few; the count names all
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --- decoding -----------------------------------------------------------------------------------


def decode(body: bytes, content_type: str) -> ExportTraceServiceRequest:
    """The export request in `body`, or `MalformedBody` naming what cannot be decoded."""
    if content_type == PROTOBUF:
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except (DecodeError, RecursionError) as exc:
            raise MalformedBody(f"The request body is not an OTLP ExportTraceServiceRequest: {exc}") from None
        return request
    if not body:
        raise MalformedBody("The request body is empty; send an OTLP ExportTraceServiceRequest.")
    try:
        data = json.loads(body)
    except RecursionError:
        raise MalformedBody("The request body nests JSON too deeply.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedBody(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedBody("Send an OTLP ExportTraceServiceRequest: a JSON object with resourceSpans.")
    _hex_ids_to_base64(data)
    request = ExportTraceServiceRequest()
    try:
        # Receivers must ignore fields they do not know (newer senders add some).
        json_format.ParseDict(data, request, ignore_unknown_fields=True)
    except (json_format.ParseError, RecursionError) as exc:
        raise MalformedBody(f"The request body is not an OTLP ExportTraceServiceRequest: {exc}") from None
    return request


def _hex_ids_to_base64(data: dict) -> None:
    """OTLP/JSON writes trace and span ids as hex, where protobuf's JSON mapping expects base64."""

    def convert(holder: Any, path: str, names: tuple[str, ...]) -> None:
        if not isinstance(holder, dict):
            return
        for name in names:
            value = holder.get(name)
            if value in (None, ""):
                continue
            if not isinstance(value, str):
                raise MalformedBody(f"{path}.{name}: must be a hex string")
            try:
                holder[name] = base64.b64encode(bytes.fromhex(value)).decode()
            except ValueError:
                raise MalformedBody(f"{path}.{name}: must be a hex string") from None

    for r, resource_spans in enumerate(_list(data, "resourceSpans", "resource_spans")):
        for s, scope_spans in enumerate(_list(resource_spans, "scopeSpans", "scope_spans")):
            for i, span in enumerate(_list(scope_spans, "spans")):
                path = f"resourceSpans[{r}].scopeSpans[{s}].spans[{i}]"
                convert(span, path, ("traceId", "trace_id", "spanId", "span_id", "parentSpanId", "parent_span_id"))
                for k, link in enumerate(_list(span, "links")):
                    convert(link, f"{path}.links[{k}]", ("traceId", "trace_id", "spanId", "span_id"))


def _list(holder: Any, *names: str) -> list:
    if not isinstance(holder, dict):
        return []
    for name in names:
        value = holder.get(name)
        if isinstance(value, list):
            return value
    return []


# --- spans → events -----------------------------------------------------------------------------


@dataclass(slots=True)
class Conversion:
    events: list[tuple[int, EventIn]]  # (span number in the request, event)
    rejected: list[tuple[int, str]]  # (span number, why)
    ignored: int  # spans that are not LLM calls
    labels: dict[int, str]  # span number → how to name the span in a message


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind in ("string_value", "bool_value", "int_value", "double_value"):
        return getattr(value, kind)
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return None  # kvlist and bytes carry nothing an event uses


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _first(attributes: dict[str, Any], *keys: str) -> tuple[Any, str | None]:
    for key in keys:
        if attributes.get(key) not in (None, ""):
            return attributes[key], key
    return None, None


def _moment(nanos: int) -> datetime:
    return EPOCH + timedelta(microseconds=nanos // 1000)


def _is_llm_call(attributes: dict[str, Any]) -> bool:
    operation = attributes.get("gen_ai.operation.name")
    if operation in MODEL_CALLS:
        return True
    if operation in NOT_MODEL_CALLS:
        return False
    has_model = _first(attributes, "gen_ai.response.model", "gen_ai.request.model")[0] is not None
    return has_model and any(key in attributes for key in USAGE_KEYS)


def usage_events(request: ExportTraceServiceRequest) -> Conversion:
    conversion = Conversion(events=[], rejected=[], ignored=0, labels={})
    number = 0
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                attributes = {**resource, **_attributes(span.attributes)}
                if not _is_llm_call(attributes):
                    conversion.ignored += 1
                else:
                    label = f"span {span.trace_id.hex()}/{span.span_id.hex()} ({span.name!r})"
                    conversion.labels[number] = label
                    try:
                        conversion.events.append((number, _event(span, attributes, resource)))
                    except SpanRejected as exc:
                        conversion.rejected.append((number, f"{label}: {exc}"))
                number += 1
    return conversion


class SpanRejected(ValueError):
    pass


def describe(errors: dict[str, list[str]]) -> str:
    return "; ".join(f"{field}: {', '.join(messages)}" for field, messages in errors.items())


def _event(span: Span, attributes: dict[str, Any], resource: dict[str, Any]) -> EventIn:
    if len(span.trace_id) != 16 or len(span.span_id) != 8 or not any(span.trace_id) or not any(span.span_id):
        raise SpanRejected("trace_id and span_id: must be 16 and 8 non-zero bytes")
    if not span.start_time_unix_nano:
        raise SpanRejected("start_time_unix_nano: is required")
    if span.end_time_unix_nano and span.end_time_unix_nano < span.start_time_unix_nano:
        raise SpanRejected("end_time_unix_nano: must not be before start_time_unix_nano")

    sources: dict[str, str] = {}
    fields: dict[str, Any] = {
        "request_id": f"{span.trace_id.hex()}-{span.span_id.hex()}",
        "timestamp": _moment(span.start_time_unix_nano),
    }
    sources["timestamp"] = "start_time_unix_nano"
    if span.end_time_unix_nano:
        fields["latency_ms"] = (span.end_time_unix_nano - span.start_time_unix_nano) / 1_000_000
        sources["latency_ms"] = "end_time_unix_nano"

    for field, keys in (
        ("model", ("gen_ai.response.model", "gen_ai.request.model")),
        ("provider", ("gen_ai.provider.name", "gen_ai.system")),
        ("prompt_tokens", ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")),
        ("output_tokens", ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")),
        ("cached_tokens", ("gen_ai.usage.cache_read.input_tokens",)),
        ("cache_write_tokens", ("gen_ai.usage.cache_creation.input_tokens",)),
        ("query_type", ("gen_ai.operation.name",)),
        ("team_alias", ("llmcost.team_alias",)),
        ("user_id", ("llmcost.user_id", "user.id", "enduser.id")),
        ("end_user", ("enduser.id",)),
    ):
        value, key = _first(attributes, *keys)
        sources[field] = key or keys[0]
        if value is not None:
            fields[field] = value
    if "model" not in fields:
        raise SpanRejected("gen_ai.request.model: is required (or gen_ai.response.model)")
    parts, ignored = usage_parts(fields, {key: attributes.get(attribute) for attribute, key in USAGE_PARTS})
    if parts:
        fields["usage"] = parts

    error_type = attributes.get("error.type")
    if span.status.code == Status.STATUS_CODE_ERROR or error_type not in (None, ""):
        fields["status"] = "error"
        message = span.status.message or (str(error_type) if error_type not in (None, "") else "")
        if message:
            fields["error_message"] = message[:MAX_ERROR_MESSAGE]

    extra: dict[str, Any] = {"source": "otlp", "span_name": span.name[:200]}
    for key, name in (("service.name", "service_name"),):
        if isinstance(resource.get(key), str):
            extra[name] = resource[key][:200]
    for key, name in (("gen_ai.response.id", "response_id"),
                      ("gen_ai.usage.cache_creation.input_tokens", "cache_creation_input_tokens")):
        if isinstance(attributes.get(key), (str, int)) and not isinstance(attributes.get(key), bool):
            extra[name] = attributes[key] if isinstance(attributes[key], int) else attributes[key][:200]
    if ignored:
        # A breakdown larger than its total (or not a count) cannot be priced: kept as sent.
        extra["usage_ignored"] = {
            attribute: ignored[key] for attribute, key in USAGE_PARTS if key in ignored
        }
    fields["metadata"] = extra

    try:
        return EventIn.model_validate(fields)
    except ValidationError as exc:
        errors: dict[str, list[str]] = {}
        for location, messages in field_errors(exc).items():
            head, _, rest = location.partition(".")
            errors.setdefault(sources.get(head, location) + (f".{rest}" if rest and head in sources else ""),
                              []).extend(messages)
        raise SpanRejected(describe(errors)) from None


# --- the answer ---------------------------------------------------------------------------------


def export_response(*, rejected: int, message: str) -> ExportTraceServiceResponse:
    """Full success leaves partial_success unset, as the OTLP specification asks."""
    response = ExportTraceServiceResponse()
    if rejected or message:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    return response


def response_json(response: ExportTraceServiceResponse) -> dict:
    return json_format.MessageToDict(response)
