"""The exports API: `GET /api/v1/exports/focus`, a streamed FOCUS 1.2 CSV of the caller's spend.

Parse (the export's FilterSet), resolve the team through the scope (a 404 before anything is
streamed), then stream the selector's rows through the csv module a block at a time.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.views import APIView

from teams.access import AccessScope
from teams.authentication import CanRead

from .focus import focus_rows
from .focus_filters import MAX_RANGE_DAYS, FocusExportFilterSet, FocusQuery

FLUSH_BYTES = 64 * 1024  # send the CSV in blocks of about this size, not a write per row

FOCUS_PARAMETERS = [
    OpenApiParameter("start", OpenApiTypes.DATETIME, required=True,
                     description="ISO 8601 date (midnight UTC) or date and time; inclusive."),
    OpenApiParameter("end", OpenApiTypes.DATETIME, required=True,
                     description=f"ISO 8601; exclusive; after start, at most {MAX_RANGE_DAYS} days later."),
    OpenApiParameter("team_alias", OpenApiTypes.STR, description="One team the caller may see."),
]


class _Line:
    """A file-like object that hands back what the csv writer writes (Django's streaming CSV recipe)."""

    def write(self, value: str) -> str:
        return value


def csv_blocks(rows: Iterable[list[str]]) -> Iterator[str]:
    writer = csv.writer(_Line(), lineterminator="\r\n")  # RFC 4180 line ends
    block: list[str] = []
    size = 0
    for row in rows:
        line = writer.writerow(row)
        block.append(line)
        size += len(line)
        if size >= FLUSH_BYTES:
            yield "".join(block)
            block, size = [], 0
    if block:
        yield "".join(block)


class FocusExportView(APIView):
    """Spend as FOCUS 1.2 rows (one per UTC day × team × provider × model), from raw events (within raw
    retention), streamed as CSV."""

    permission_classes = [CanRead]

    @extend_schema(parameters=FOCUS_PARAMETERS, summary="FOCUS 1.2 cost and usage export (CSV)",
                   responses={(200, "text/csv"): OpenApiResponse(OpenApiTypes.STR)})
    def get(self, request):
        filterset = FocusExportFilterSet(data=request.query_params)
        if not filterset.is_valid():
            raise ValidationError(filterset.errors)
        return focus_csv_response(scope=request.user.scope, query=filterset.focus_query())


def focus_csv_response(*, scope: AccessScope, query: FocusQuery) -> StreamingHttpResponse:
    """The export as a streamed attachment (the API's and the Reports page's button alike)."""
    rows = focus_rows(scope=scope, start=query.start, end=query.end, team_alias=query.team_alias)
    response = StreamingHttpResponse(csv_blocks(rows), content_type="text/csv; charset=utf-8")
    name = f"focus-{scope.organization.slug}-{query.start:%Y%m%d}-{query.end:%Y%m%d}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    response["Cache-Control"] = "no-store"
    return response
