"""The reports API: `GET /api/v1/reports/spend`. Parse (the report's FilterSet), call the selector."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from teams.authentication import CanRead

from .report_filters import DEFAULT_RANGE_HOURS, MAX_RANGE_HOURS, SpendReportFilterSet
from .reports import DEFAULT_LIMIT, DIMENSIONS, MAX_LIMIT, spend_report

_TEXT = OpenApiTypes.STR
SPEND_PARAMETERS = [
    OpenApiParameter(
        "group_by", _TEXT, required=True,
        description=f"One or two dimensions, comma-separated: {', '.join(DIMENSIONS)}, metadata.<key>.",
    ),
    OpenApiParameter("start", OpenApiTypes.DATETIME, description="ISO 8601; default end - time_range_hours."),
    OpenApiParameter("end", OpenApiTypes.DATETIME, description="ISO 8601; default now."),
    OpenApiParameter(
        "time_range_hours", OpenApiTypes.INT, description=f"Default {DEFAULT_RANGE_HOURS}, at most {MAX_RANGE_HOURS}."
    ),
    OpenApiParameter("team_alias", _TEXT),
    OpenApiParameter("model_filter", _TEXT, description="A model family: gpt-4 finds gpt-4 and gpt-4o."),
    OpenApiParameter("user_id", _TEXT),
    OpenApiParameter("end_user", _TEXT),
    OpenApiParameter("tag", _TEXT, description="Events carrying this tag."),
    OpenApiParameter("limit", OpenApiTypes.INT, description=f"Rows shown (default {DEFAULT_LIMIT}, at most "
                     f"{MAX_LIMIT}); the rest is summed in one last row marked `other`."),
]


class SpendReportView(APIView):
    """Spend by one or two dimensions, from raw events (within raw retention). `metadata.<key>=<value>`
    parameters (at most 5) filter on metadata."""

    permission_classes = [CanRead]

    @extend_schema(parameters=SPEND_PARAMETERS, responses={200: dict}, summary="Spend by any dimension")
    def get(self, request):
        filterset = SpendReportFilterSet(data=request.query_params)
        if not filterset.is_valid():
            raise ValidationError(filterset.errors)
        query = filterset.spend_query()
        return Response(
            spend_report(scope=request.user.scope, filters=query.filters, group_by=query.group_by, limit=query.limit)
        )
