"""The integration endpoints: translate the other tool's body, then record like /api/v1/events."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.exceptions import ParseError, UnsupportedMediaType
from rest_framework.exceptions import ValidationError as ApiValidationError
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.response import Response
from rest_framework.views import APIView

from metrics.schemas import EventIn, MalformedBody
from metrics.services import usage_events_record
from teams.authentication import CanIngest

from . import litellm, otlp
from .request_body import read_body


def media_type(request) -> str:
    """The request's media type without parameters (DRF's `content_type` keeps `; charset=…`)."""
    return request.content_type.split(";", 1)[0].strip().lower()


class AnswerInJson(BaseContentNegotiation):
    """Exporters send `Accept: application/x-protobuf` or nothing useful; the view picks the
    answer's format from the request's Content-Type, and errors are always JSON."""

    def select_parser(self, request, parsers):
        return None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class LiteLLMLogsView(APIView):
    """LiteLLM's generic API logger: StandardLoggingPayload objects as usage events."""

    permission_classes = [CanIngest]
    parser_classes: list = []  # the body is read raw: JSON, a JSON array or NDJSON
    content_negotiation_class = AnswerInJson

    @extend_schema(
        request={
            "application/json": {"type": "array", "items": {"type": "object"}},
            "application/x-ndjson": {"type": "string"},
        },
        responses={200: dict, 400: dict},
        summary="Record LiteLLM logs (generic API callback)",
    )
    def post(self, request):
        try:
            logs = litellm.split_logs(read_body(request), content_type=media_type(request))
        except MalformedBody as exc:
            raise ParseError(str(exc)) from None
        if not logs:
            raise ParseError("The body holds no LiteLLM log.")
        if len(logs) > settings.API_MAX_BATCH_EVENTS:
            raise ApiValidationError(
                {"non_field_errors": [f"At most {settings.API_MAX_BATCH_EVENTS} logs per request; "
                                      "lower the callback's batch_size."]}
            )

        valid: list[tuple[int, EventIn]] = []
        rejected: list[dict[str, Any]] = []
        for index, log in enumerate(logs):
            try:
                valid.append((index, litellm.usage_event(log)))
            except litellm.LogRejected as exc:
                rejected.append({"index": index, "errors": exc.errors})
        recorded, unknown_team = usage_events_record(token=request.auth, events=valid) if valid else ([], [])
        rejected.extend({"index": r.index, "errors": litellm.source_errors(r.errors)} for r in unknown_team)
        rejected.sort(key=lambda r: r["index"])

        duplicates = sum(1 for r in recorded if r.duplicate)
        body = {
            "status": "success" if not rejected else ("partial" if recorded else "error"),
            "accepted": len(recorded) - duplicates,
            "duplicates": duplicates,
            "rejected": rejected,
            "results": [
                {"index": r.index, "request_id": r.request_id, "duplicate": r.duplicate, "cost": r.cost}
                for r in recorded
            ],
        }
        if not recorded:
            body["message"] = "No log was valid."
        return Response(body, status=200 if recorded else 400)


class OtlpTracesView(APIView):
    """OTLP/HTTP trace export: spans of LLM calls (GenAI semantic conventions) as usage events."""

    permission_classes = [CanIngest]
    parser_classes: list = []  # JSON or protobuf, decoded with OpenTelemetry's own message classes
    content_negotiation_class = AnswerInJson

    @extend_schema(
        request={
            "application/x-protobuf": {"type": "string", "format": "binary"},
            "application/json": {"type": "object", "properties": {"resourceSpans": {"type": "array", "items": {}}}},
        },
        responses={
            200: OpenApiResponse(description="ExportTraceServiceResponse, in the request's encoding"),
            400: dict, 415: dict,
        },
        summary="Receive OpenTelemetry traces (OTLP/HTTP)",
    )
    def post(self, request):
        encoding = media_type(request)
        if encoding not in otlp.CONTENT_TYPES:
            raise UnsupportedMediaType(
                encoding or "(none)",
                detail=f"Content-Type {encoding or '(none)'!r} is not OTLP/HTTP; "
                       f"send {otlp.PROTOBUF} or {otlp.JSON}.",
            )
        try:
            export = otlp.decode(read_body(request), encoding)
        except MalformedBody as exc:
            raise ParseError(str(exc)) from None

        conversion = otlp.usage_events(export)
        # Collectors batch thousands of spans per export: store them in batches of the size
        # /api/v1/events allows, so no transaction grows with the body (a retry stores each span once).
        unknown_team = []
        step = settings.API_MAX_BATCH_EVENTS
        for start in range(0, len(conversion.events), step):
            unknown_team += usage_events_record(token=request.auth, events=conversion.events[start : start + step])[1]
        reasons = [reason for _, reason in sorted(conversion.rejected)]
        reasons += [
            f"{conversion.labels[r.index]}: "
            + otlp.describe({"llmcost.team_alias" if k == "team_alias" else k: v for k, v in r.errors.items()})
            for r in unknown_team
        ]
        message = ""
        if reasons:
            shown = "; ".join(reasons[: otlp.MAX_REPORTED_REJECTIONS])
            more = len(reasons) - otlp.MAX_REPORTED_REJECTIONS
            message = f"{len(reasons)} GenAI span(s) rejected: {shown}" + (f"; and {more} more" if more > 0 else "")
        answer = otlp.export_response(rejected=len(reasons), message=message)
        if encoding == otlp.PROTOBUF:
            return HttpResponse(answer.SerializeToString(), content_type=otlp.PROTOBUF)
        return Response(otlp.response_json(answer))
