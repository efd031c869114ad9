"""`GET /api/v1/dimensions`: the metadata keys the token's organization declares, for clients that build
reports grouped by them (`reports/spend?group_by=metadata.<key>`)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from .authentication import CanRead
from .selectors import declared_dimension_keys

DIMENSIONS_ANSWER = inline_serializer(
    "Dimensions", {"dimensions": serializers.ListField(child=serializers.CharField())}
)


class DimensionsView(APIView):
    """The organization's declared dimensions, by key. A token pinned to a team sees them too: they are
    the organization's reporting vocabulary, not figures."""

    permission_classes = [CanRead]

    @extend_schema(
        responses={200: DIMENSIONS_ANSWER},
        summary="Declared metadata keys",
    )
    def get(self, request):
        return Response({"dimensions": declared_dimension_keys(organization=request.user.scope.organization)})
