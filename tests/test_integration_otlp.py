"""POST /v1/traces: OTLP/HTTP trace export; GenAI spans become usage events.

Requests are built with opentelemetry-proto's own message classes (protobuf, and OTLP/JSON as the
specification writes it: hex ids, camelCase). The last tests send spans with the real
OpenTelemetry SDK exporter to a server process. Costs come from the test price (test-model:
input 2, output 8, cache read 0.5 USD per million tokens).
"""

from __future__ import annotations

import base64
import gzip
import json
import secrets
import time
import zlib
from decimal import Decimal

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from metrics.models import UsageEvent
from tests.conftest import api
from tests.live_server import LiveServer

URL = "/v1/traces"
PROTOBUF = "application/x-protobuf"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """The world's four users are created with passwords: hash them cheaply in these tests."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# --- building requests with the real message classes ---------------------------------------------


def any_value(value) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=value)


def attributes(values: dict) -> list[KeyValue]:
    return [KeyValue(key=key, value=any_value(value)) for key, value in values.items()]


def chat(**overrides) -> dict:
    """Attributes of a chat call as the GenAI semantic conventions name them."""
    values = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "test-model",
        "gen_ai.response.model": "test-model-2024-08-06",
        "gen_ai.response.id": "chatcmpl-123",
        "gen_ai.usage.input_tokens": 1000,
        "gen_ai.usage.output_tokens": 500,
    }
    values.update(overrides)
    return {key: value for key, value in values.items() if value is not None}


def span(values: dict, *, name="chat test-model", ago_s=600.0, duration_ms=1250.0, error: str | None = None,
         trace_id: bytes | None = None, span_id: bytes | None = None) -> Span:
    start = time.time_ns() - int(ago_s * 1e9)
    result = Span(
        trace_id=trace_id or secrets.token_bytes(16), span_id=span_id or secrets.token_bytes(8), name=name,
        kind=Span.SPAN_KIND_CLIENT, start_time_unix_nano=start,
        end_time_unix_nano=start + int(duration_ms * 1e6), attributes=attributes(values),
    )
    if error is not None:
        result.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR, message=error))
    return result


def export(*spans: Span, resource: dict | None = None) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        resource=Resource(attributes=attributes({"service.name": "support-bot", **(resource or {})})),
        scope_spans=[ScopeSpans(spans=list(spans))],
    )])


def otlp_json(request: ExportTraceServiceRequest) -> dict:
    """OTLP/JSON: protobuf's JSON mapping, except that trace and span ids are hex."""
    data = json_format.MessageToDict(request)
    for resource_spans in data.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for item in scope_spans.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in item:
                        item[key] = base64.b64decode(item[key]).hex()
    return data


def send(token, request: ExportTraceServiceRequest, *, encoding="protobuf", content_encoding=None):
    if encoding == "protobuf":
        body, content_type = request.SerializeToString(), PROTOBUF
    else:
        body, content_type = json.dumps(otlp_json(request)).encode(), "application/json"
    headers = {}
    if content_encoding == "gzip":
        body, headers["HTTP_CONTENT_ENCODING"] = gzip.compress(body), "gzip"
    elif content_encoding == "deflate":
        body, headers["HTTP_CONTENT_ENCODING"] = zlib.compress(body), "deflate"
    return api(token).generic("POST", URL, body, content_type=content_type, **headers)


def answer(response) -> ExportTraceServiceResponse:
    """The ExportTraceServiceResponse in the response, in whichever encoding it came."""
    if response["Content-Type"] == PROTOBUF:
        return ExportTraceServiceResponse.FromString(response.content)
    return json_format.ParseDict(response.json(), ExportTraceServiceResponse())


def request_id(item: Span) -> str:
    return f"{item.trace_id.hex()}-{item.span_id.hex()}"


# --- mapping and costs ---------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_it_records_a_genai_chat_span_with_its_price(world, encoding):
    call = span(chat(**{"llmcost.team_alias": "search", "user.id": "alice@acme.test",
                        "enduser.id": "customer-7"}))

    response = send(world.ingest, export(call), encoding=encoding)

    assert response.status_code == 200, response.content
    assert response["Content-Type"] == (PROTOBUF if encoding == "protobuf" else "application/json")
    assert not answer(response).HasField("partial_success")  # full success leaves it unset
    event = UsageEvent.objects.get(request_id=request_id(call))
    assert (event.model, event.model_requested, event.is_priced) == ("test-model", "test-model-2024-08-06", True)
    assert (event.prompt_tokens, event.output_tokens, event.total_tokens) == (1000, 500, 1500)
    assert event.cost == Decimal("0.006")  # 1000 × 2/M + 500 × 8/M
    assert event.latency_ms == pytest.approx(1250.0)
    assert event.timestamp.timestamp() == pytest.approx(call.start_time_unix_nano / 1e9, abs=1e-5)
    assert (event.status, event.query_type) == ("success", "chat")
    assert event.team == world.search
    assert (event.user_id, event.end_user) == ("alice@acme.test", "customer-7")
    assert event.metadata["service_name"] == "support-bot"
    assert event.metadata["response_id"] == "chatcmpl-123"


def test_it_prices_cache_reads_and_records_errors(world):
    cached = span(chat(**{"gen_ai.usage.input_tokens": 2000, "gen_ai.usage.output_tokens": 100,
                          "gen_ai.usage.cache_read.input_tokens": 1500}))
    failed = span(chat(**{"gen_ai.usage.input_tokens": None, "gen_ai.usage.output_tokens": None,
                          "error.type": "timeout"}), error="Request timed out.")

    response = send(world.ingest, export(cached, failed))

    assert response.status_code == 200, response.content
    hit = UsageEvent.objects.get(request_id=request_id(cached))
    assert (hit.prompt_tokens, hit.cached_tokens) == (2000, 1500)
    assert hit.cost == Decimal("0.00255")  # 500 × 2/M + 1500 × 0.5/M + 100 × 8/M
    error = UsageEvent.objects.get(request_id=request_id(failed))
    assert (error.status, error.error_message, error.cost) == ("error", "Request timed out.", Decimal(0))


def test_it_records_the_conventions_usage_breakdowns(world):
    call = span(chat(**{
        "gen_ai.usage.audio.input_tokens": 300, "gen_ai.usage.image.input_tokens": 200,
        "gen_ai.usage.video.input_tokens": 100, "gen_ai.usage.audio.output_tokens": 40,
        "gen_ai.usage.reasoning.output_tokens": 250, "gen_ai.usage.cache_read.input_tokens": 400,
        "gen_ai.usage.cache_creation.input_tokens": 100,
    }))

    response = send(world.ingest, export(call), encoding="json")

    assert response.status_code == 200, response.content
    event = UsageEvent.objects.get(request_id=request_id(call))
    assert (event.cached_tokens, event.cache_write_tokens) == (400, 100)
    assert event.usage == {"input_audio_tokens": 300, "input_image_tokens": 200, "input_video_tokens": 100,
                           "output_audio_tokens": 40, "output_reasoning_tokens": 250}


def test_a_breakdown_larger_than_its_total_is_kept_aside_and_the_span_recorded(world):
    call = span(chat(**{"gen_ai.usage.reasoning.output_tokens": 501, "gen_ai.usage.audio.input_tokens": "many",
                        "gen_ai.usage.audio.output_tokens": 20}))

    response = send(world.ingest, export(call))

    assert response.status_code == 200, response.content
    assert not answer(response).HasField("partial_success")
    event = UsageEvent.objects.get(request_id=request_id(call))
    assert event.usage == {"output_audio_tokens": 20}
    assert event.metadata["usage_ignored"] == {"gen_ai.usage.audio.input_tokens": "many",
                                               "gen_ai.usage.reasoning.output_tokens": 501}
    assert event.cost == Decimal("0.006")  # priced on its totals


def test_it_takes_team_and_user_from_resource_attributes(world):
    call = span(chat())

    send(world.ingest, export(call, resource={"llmcost.team_alias": "search", "enduser.id": "customer-9"}))

    event = UsageEvent.objects.get()
    assert event.team == world.search
    assert (event.user_id, event.end_user) == ("customer-9", "customer-9")


def test_it_reads_older_instrumentations_that_name_no_operation(world):
    legacy = span({"gen_ai.system": "openai", "gen_ai.request.model": "test-model",
                   "gen_ai.usage.prompt_tokens": 100, "gen_ai.usage.completion_tokens": 10})

    send(world.ingest, export(legacy))

    event = UsageEvent.objects.get()
    assert (event.prompt_tokens, event.output_tokens, event.cost) == (100, 10, Decimal("0.00028"))


def test_it_ignores_spans_that_are_not_llm_calls(world):
    http = span({"http.request.method": "POST", "url.full": "https://api.example.com/"}, name="POST")
    agent = span(chat(**{"gen_ai.operation.name": "invoke_agent"}), name="invoke_agent support")
    tool = span({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}, name="execute_tool")
    call = span(chat())

    response = send(world.ingest, export(http, agent, tool, call), encoding="json")

    assert response.status_code == 200, response.content
    assert response.json() == {}
    assert list(UsageEvent.objects.values_list("request_id", flat=True)) == [request_id(call)]


@pytest.mark.parametrize("content_encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_it_accepts_compressed_bodies(world, encoding, content_encoding):
    response = send(world.ingest, export(span(chat())), encoding=encoding, content_encoding=content_encoding)

    assert response.status_code == 200, response.content
    assert UsageEvent.objects.count() == 1


def test_a_resent_export_counts_once(world):
    request = export(span(chat()), span(chat()))
    assert send(world.ingest, request).status_code == 200

    again = send(world.ingest, request, encoding="json")

    assert again.status_code == 200
    assert UsageEvent.objects.count() == 2
    assert sum(e.cost for e in UsageEvent.objects.all()) == Decimal("0.012")


def test_a_large_export_is_stored_whole_in_batches(world, settings):
    settings.API_MAX_BATCH_EVENTS = 3
    request = export(*(span(chat()) for _ in range(8)))

    response = send(world.ingest, request)

    assert response.status_code == 200
    assert not answer(response).HasField("partial_success")
    assert UsageEvent.objects.count() == 8


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/x-protobuf; proto=x"])
def test_it_accepts_media_type_parameters(world, content_type):
    call = span(chat())
    request = export(call)
    body = request.SerializeToString() if "protobuf" in content_type else json.dumps(otlp_json(request)).encode()

    response = api(world.ingest).generic("POST", URL, body, content_type=content_type)

    assert response.status_code == 200, response.content
    assert UsageEvent.objects.get().request_id == request_id(call)


def test_it_reads_otlp_json_as_the_specification_writes_it(world):
    # Hex ids, int64 values as strings, enums as numbers, and a field this receiver does not know.
    start = time.time_ns() - 60 * 10**9
    body = {
        "resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "rag"}}]},
            "scopeSpans": [{
                "scope": {"name": "opentelemetry.instrumentation.openai_v2"},
                "spans": [{
                    "traceId": "5B8EFFF798038103D269B633813FC60C",
                    "spanId": "EEE19B7EC3C1B174",
                    "name": "chat test-model",
                    "kind": 3,
                    "startTimeUnixNano": str(start),
                    "endTimeUnixNano": str(start + 800_000_000),
                    "attributes": [
                        {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
                        {"key": "gen_ai.request.model", "value": {"stringValue": "test-model"}},
                        {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "300"}},
                        {"key": "gen_ai.usage.output_tokens", "value": {"intValue": 40}},
                    ],
                    "status": {"code": 1},
                    "someFutureField": {"x": 1},
                }],
            }],
        }],
    }

    response = api(world.ingest).post(URL, body, format="json")

    assert response.status_code == 200, response.content
    event = UsageEvent.objects.get()
    assert event.request_id == "5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174"
    assert (event.prompt_tokens, event.output_tokens, event.latency_ms) == (300, 40, pytest.approx(800.0))


# --- partial success and bad input ---------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_it_answers_partial_success_naming_the_rejected_spans(world, encoding):
    good = span(chat())
    no_model = span(chat(**{"gen_ai.request.model": None, "gen_ai.response.model": None}), name="chat ?")
    bad_tokens = span(chat(**{"gen_ai.usage.input_tokens": "lots"}), name="chat bad")
    too_old = span(chat(), ago_s=200 * 86400, name="chat old")
    bad_team = span(chat(**{"llmcost.team_alias": "no spaces allowed"}), name="chat team")

    response = send(world.ingest, export(good, no_model, bad_tokens, too_old, bad_team), encoding=encoding)

    assert response.status_code == 200, response.content
    partial = answer(response).partial_success
    assert partial.rejected_spans == 4
    message = partial.error_message
    assert "4 GenAI span(s) rejected" in message
    assert f"{no_model.trace_id.hex()}/{no_model.span_id.hex()}" in message
    assert "gen_ai.request.model" in message
    assert "gen_ai.usage.input_tokens" in message
    assert "start_time_unix_nano" in message
    assert "llmcost.team_alias" in message
    assert list(UsageEvent.objects.values_list("request_id", flat=True)) == [request_id(good)]


def test_an_unknown_team_is_a_rejected_span_when_auto_create_is_off(world):
    world.acme.auto_create_teams = False
    world.acme.save()

    response = send(world.ingest, export(span(chat(**{"llmcost.team_alias": "growth"}))), encoding="json")

    assert response.status_code == 200
    partial = response.json()["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 1
    assert "llmcost.team_alias" in partial["errorMessage"]
    assert not UsageEvent.objects.exists()


@pytest.mark.parametrize(
    ("body", "content_type", "needle"),
    [
        (b"\xff\xff\xff\xff", PROTOBUF, "ExportTraceServiceRequest"),
        (b"{not json", "application/json", "not valid JSON"),
        (b"[]", "application/json", "resourceSpans"),
        (b'{"resourceSpans": 5}', "application/json", "ExportTraceServiceRequest"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}', "application/json",
         "resourceSpans[0].scopeSpans[0].spans[0].traceId"),
        (b"", "application/json", "empty"),
    ],
)
def test_it_answers_400_for_an_undecodable_body(world, body, content_type, needle):
    response = api(world.ingest).generic("POST", URL, body, content_type=content_type)

    assert response.status_code == 400
    assert response.json()["status"] == "error"
    assert needle in response.json()["message"]
    assert not UsageEvent.objects.exists()


def test_it_answers_400_for_bad_gzip(world):
    response = api(world.ingest).generic("POST", URL, b"not gzip", content_type=PROTOBUF,
                                         HTTP_CONTENT_ENCODING="gzip")

    assert response.status_code == 400
    assert "gzip" in response.json()["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/grpc", "application/x-www-form-urlencoded"])
def test_it_answers_415_for_other_content_types(world, content_type):
    response = api(world.ingest).generic("POST", URL, b"resourceSpans", content_type=content_type)

    assert response.status_code == 415
    assert response.json()["status"] == "error"
    assert PROTOBUF in response.json()["message"]


def test_an_empty_export_is_a_success(world):
    response = send(world.ingest, ExportTraceServiceRequest())

    assert response.status_code == 200
    assert response.content == b""  # an empty ExportTraceServiceResponse


# --- who may send --------------------------------------------------------------------------------


def test_a_read_only_token_gets_403(world):
    response = send(world.read, export(span(chat())))

    assert response.status_code == 403
    assert response.json()["status"] == "error"
    assert not UsageEvent.objects.exists()


@pytest.mark.parametrize("header", [None, "Bearer lc_not_a_real_token"])
def test_it_answers_401_without_a_valid_token(world, header):
    client = api()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)

    response = client.generic("POST", URL, export(span(chat())).SerializeToString(), content_type=PROTOBUF)

    assert response.status_code == 401
    assert response.json()["status"] == "error"
    assert not UsageEvent.objects.exists()


def test_a_pinned_token_records_into_its_team_and_another_org_into_its_own(world):
    call = span(chat(**{"llmcost.team_alias": "search"}))

    send(world.pinned, export(call))
    send(world.globex_token, export(call))

    assert UsageEvent.objects.get(organization=world.acme).team == world.chatbot
    globex = UsageEvent.objects.get(organization=world.globex)
    assert globex.team.organization == world.globex
    assert globex.team.alias == "search"  # created in globex; acme's "search" team is not touched


# --- the real OpenTelemetry exporter against a server process ------------------------------------


@pytest.fixture
def server_url(transactional_db):
    """gunicorn serving the project on a free port, on this test run's database."""
    with LiveServer() as server:
        yield server.url


def sdk_spans(resource_attributes: dict):
    """Spans made by the OpenTelemetry SDK's tracer, kept in memory until exported."""
    from opentelemetry.sdk.resources import Resource as SdkResource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import Status as SdkStatus
    from opentelemetry.trace import StatusCode

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=SdkResource.create({"service.name": "support-bot", **resource_attributes}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests.otlp")
    with tracer.start_as_current_span("handle request"):  # an ordinary span: ignored
        with tracer.start_as_current_span("chat test-model", attributes=chat()):
            time.sleep(0.01)
        with tracer.start_as_current_span(
            "chat test-model", attributes=chat(**{"gen_ai.usage.cache_read.input_tokens": 600})
        ) as failed:
            failed.set_status(SdkStatus(StatusCode.ERROR, "rate limited"))
    provider.shutdown()
    return memory.get_finished_spans()


@pytest.mark.django_db(transaction=True)
def test_the_sdk_exporter_delivers_genai_spans_to_a_live_server(world, server_url):
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    spans = sdk_spans({"llmcost.team_alias": "search"})
    exporter = OTLPSpanExporter(endpoint=f"{server_url}/v1/traces", compression=Compression.Gzip,
                                headers={"Authorization": f"Bearer {world.ingest}"})

    assert exporter.export(spans) == SpanExportResult.SUCCESS
    assert exporter.export(spans) == SpanExportResult.SUCCESS  # a retried export counts once
    exporter.shutdown()

    events = {e.status: e for e in UsageEvent.objects.all()}
    assert set(events) == {"success", "error"}
    assert events["success"].cost == Decimal("0.006")
    assert events["error"].cost == Decimal("0.0051")  # 400 × 2/M + 600 × 0.5/M + 500 × 8/M
    assert events["error"].error_message == "rate limited"
    assert {e.team for e in events.values()} == {world.search}
    assert all(e.metadata["service_name"] == "support-bot" for e in events.values())


@pytest.mark.django_db(transaction=True)
def test_the_sdk_exporter_configured_from_the_documented_environment(world, server_url, monkeypatch):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{server_url}/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"Authorization=Bearer%20{world.ingest}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    good = OTLPSpanExporter()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"Authorization=Bearer%20{world.read}")
    read_only = OTLPSpanExporter()
    spans = sdk_spans({})

    assert read_only.export(spans) == SpanExportResult.FAILURE  # 403: not retried, nothing stored
    assert not UsageEvent.objects.exists()
    assert good.export(spans) == SpanExportResult.SUCCESS
    assert UsageEvent.objects.count() == 2
    assert {e.team.is_default for e in UsageEvent.objects.all()} == {True}
