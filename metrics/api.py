"""The ingest and read API. Views parse, call a service or selector, and shape the answer."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from drf_spectacular.utils import extend_schema
from pydantic import ValidationError as PydanticError
from rest_framework import serializers, status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.exceptions import ValidationError as ApiValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from llmcost_project.api_errors import (
    MAX_QUERY_COST_USD,
    QUERY_COST_DIGITS,
    QUERY_COST_PLACES,
    QueryMoment,
    QueryParams,
)
from teams.access import UnknownTeam
from teams.authentication import CanIngest, CanRead

from .ingest_hooks import budget_answer
from .schemas import BatchRunIn, CacheStatIn, EventIn, MalformedBody, field_errors, parse_json_body
from .selectors import EventFilter, dashboard_metrics, recent_requests, scoped_events
from .services import batch_run_record, cache_stat_record, usage_events_record


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."


def read_json(request):
    """The request body as JSON, or a 4xx naming what is wrong with it."""
    declared = request.META.get("CONTENT_LENGTH") or "0"
    if declared.isdigit() and int(declared) > settings.API_MAX_BODY_BYTES:
        raise PayloadTooLarge(f"The request body is larger than {settings.API_MAX_BODY_BYTES} bytes.")
    try:
        body = request.body
    except RequestDataTooBig:
        raise PayloadTooLarge(f"The request body is larger than {settings.API_MAX_BODY_BYTES} bytes.") from None
    try:
        return parse_json_body(body)
    except MalformedBody as exc:
        raise ParseError(str(exc)) from None


def validate(schema, data):
    if not isinstance(data, dict):
        raise ApiValidationError({"non_field_errors": ["Send a JSON object."]})
    try:
        return schema.model_validate(data)
    except PydanticError as exc:
        raise ApiValidationError(field_errors(exc)) from None


@contextmanager
def unknown_team_is_invalid():
    try:
        yield
    except UnknownTeam as exc:
        raise ApiValidationError({"team_alias": [f"no team {exc.args[0]!r} in this organization"]}) from None


class TrackView(APIView):
    """Record one LLM call (the seed's endpoint)."""

    permission_classes = [CanIngest]

    @extend_schema(request=EventIn, responses={200: dict}, summary="Record one usage event")
    def post(self, request):
        event = validate(EventIn, read_json(request))
        recorded, rejected = usage_events_record(token=request.auth, events=[(0, event)])
        if rejected:
            raise ApiValidationError(rejected[0].errors)
        result = recorded[0]
        message = "Duplicate request_id: already recorded" if result.duplicate else "Metrics tracked successfully"
        return Response(
            {
                "status": "success",
                "message": message,
                "request_id": result.request_id,
                "cost": result.cost,
                "tokens": result.tokens,
                "duplicate": result.duplicate,
                "priced": result.is_priced,
                "budget": budget_answer(
                    organization=request.auth.organization, team=result.team, user_id=event.user_id
                ),
            }
        )


class EventBatchView(APIView):
    """Record up to 1,000 LLM calls; valid items are stored even when others are rejected."""

    permission_classes = [CanIngest]

    @extend_schema(
        request={"application/json": {"type": "object", "properties": {"events": {"type": "array", "items": {}}}}},
        responses={200: dict, 400: dict},
        summary="Record a batch of usage events",
    )
    def post(self, request):
        data = read_json(request)
        items = data.get("events") if isinstance(data, dict) else data
        if isinstance(data, dict) and set(data) - {"events"}:
            raise ApiValidationError({key: ["is not a known field"] for key in set(data) - {"events"}})
        if not isinstance(items, list):
            raise ApiValidationError({"events": ["Send a JSON array of events, or {\"events\": [...]}."]})
        if not items:
            raise ApiValidationError({"events": ["Send at least one event."]})
        if len(items) > settings.API_MAX_BATCH_EVENTS:
            raise ApiValidationError({"events": [f"At most {settings.API_MAX_BATCH_EVENTS} events per request."]})

        valid: list[tuple[int, EventIn]] = []
        rejected: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                rejected.append({"index": index, "errors": {"non_field_errors": ["Send a JSON object."]}})
                continue
            try:
                valid.append((index, EventIn.model_validate(item)))
            except PydanticError as exc:
                rejected.append({"index": index, "errors": field_errors(exc)})
        recorded, unknown_team = usage_events_record(token=request.auth, events=valid) if valid else ([], [])
        rejected.extend({"index": r.index, "errors": r.errors} for r in unknown_team)
        rejected.sort(key=lambda r: r["index"])

        duplicates = sum(1 for r in recorded if r.duplicate)
        body: dict[str, Any] = {
            "status": "success" if not rejected else ("partial" if recorded else "error"),
            "accepted": len(recorded) - duplicates,
            "duplicates": duplicates,
            "rejected": rejected,
            # float() here is what the JSON renderer does to a Decimal, without a callback per item.
            "results": [
                {"index": r.index, "request_id": r.request_id, "duplicate": r.duplicate,
                 "cost": None if r.cost is None else float(r.cost)}  # None: another team's event
                for r in recorded
            ],
        }
        if recorded:
            teams = {r.team.pk: r.team for r in recorded}.values()
            body["budgets"] = {
                team.alias: budget_answer(organization=request.auth.organization, team=team, user_id=None)
                for team in teams
            }
        else:
            body["message"] = "No event was valid."
        return Response(body, status=200 if recorded else 400)


class CacheStatView(APIView):
    """Record a client's response-cache statistics (the seed's endpoint)."""

    permission_classes = [CanIngest]

    @extend_schema(request=CacheStatIn, responses={200: dict}, summary="Record cache statistics")
    def post(self, request):
        stat = validate(CacheStatIn, read_json(request))
        with unknown_team_is_invalid():
            record = cache_stat_record(token=request.auth, stat=stat)
        return Response({"status": "success", "message": "Cache metrics tracked successfully", "id": record.pk})


class BatchRunView(APIView):
    """Record one batch run (the seed's endpoint); a repeated batch_id is stored once."""

    permission_classes = [CanIngest]

    @extend_schema(request=BatchRunIn, responses={200: dict}, summary="Record a batch run")
    def post(self, request):
        run = validate(BatchRunIn, read_json(request))
        with unknown_team_is_invalid():
            record, created = batch_run_record(token=request.auth, run=run)
        return Response(
            {
                "status": "success",
                "message": "Batch metrics tracked successfully" if created else "Duplicate batch_id: already recorded",
                "batch_id": record.batch_id,
                "duplicate": not created,
            }
        )


# --- reads ---------------------------------------------------------------------------------------

MAX_RANGE_HOURS = 24 * 366


class RangeQuery(QueryParams):
    time_range_hours = serializers.IntegerField(min_value=1, max_value=MAX_RANGE_HOURS, default=24)
    start = QueryMoment(required=False)
    end = QueryMoment(required=False)
    team_alias = serializers.CharField(required=False, max_length=100)
    model_filter = serializers.CharField(required=False, max_length=200)

    def validate(self, attrs):
        attrs = super().validate(attrs)
        end = attrs.get("end") or datetime.now(UTC)
        start = attrs.get("start") or end - timedelta(hours=attrs["time_range_hours"])
        if start >= end:
            raise serializers.ValidationError({"start": ["must be before end"]})
        if end - start > timedelta(hours=MAX_RANGE_HOURS):
            raise serializers.ValidationError({"start": [f"the range may span at most {MAX_RANGE_HOURS} hours"]})
        attrs["filters"] = EventFilter(
            start=start, end=end, team_alias=attrs.get("team_alias"), model=attrs.get("model_filter")
        )
        return attrs


def _range(request) -> EventFilter:
    query = RangeQuery(data=request.query_params)
    query.is_valid(raise_exception=True)
    return query.validated_data["filters"]


class DashboardMetricsView(APIView):
    permission_classes = [CanRead]

    @extend_schema(parameters=[RangeQuery], responses={200: dict}, summary="Spend, tokens and latency for a range")
    def get(self, request):
        return Response(dashboard_metrics(scope=request.user.scope, filters=_range(request)))


class RecentQuery(RangeQuery):
    time_range_hours = serializers.IntegerField(min_value=1, max_value=MAX_RANGE_HOURS, default=24 * 30)
    limit = serializers.IntegerField(min_value=1, max_value=1000, default=20)
    status = serializers.ChoiceField(choices=["success", "error"], required=False)
    user_id = serializers.CharField(required=False, max_length=255)
    query_type = serializers.CharField(required=False, max_length=100)
    min_cost = serializers.DecimalField(
        required=False, max_digits=QUERY_COST_DIGITS, decimal_places=QUERY_COST_PLACES, min_value=0,
        max_value=MAX_QUERY_COST_USD,
    )


# Each request filter: (query parameter, the event lookup it selects by).
REQUEST_FILTERS = (
    ("status", "status"), ("user_id", "user_id"), ("query_type", "query_type"), ("min_cost", "cost__gte"),
)


class RecentRequestsView(APIView):
    permission_classes = [CanRead]

    @extend_schema(
        parameters=[RecentQuery],
        responses={200: {"type": "array", "items": {"type": "object", "additionalProperties": {}}}},
        summary="The most recent requests, newest first",
    )
    def get(self, request):
        query = RecentQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        events = scoped_events(scope=request.user.scope, filters=data["filters"])
        events = events.filter(**{lookup: data[name] for name, lookup in REQUEST_FILTERS if name in data})
        return Response(recent_requests(events=events, limit=data["limit"]))
