"""The insights API: `GET /api/v1/insights/what-if`, `/savings`, `/forecast` and `/recommendations`.
Parse (the insights' FilterSets), call the selector (`metrics.insights`, `metrics.forecasts`)."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from teams.authentication import CanRead

from .forecasts import month_forecasts
from .insight_filters import ForecastFilterSet, RecommendationsFilterSet, SavingsFilterSet, WhatIfFilterSet
from .insights import UnpricedAlternative, savings, what_if
from .recommendations import recommendations
from .report_filters import DEFAULT_RANGE_HOURS, MAX_RANGE_HOURS

_TEXT = OpenApiTypes.STR
RANGE_PARAMETERS = [
    OpenApiParameter("start", OpenApiTypes.DATETIME, description="ISO 8601; default end - time_range_hours."),
    OpenApiParameter("end", OpenApiTypes.DATETIME, description="ISO 8601; default now."),
    OpenApiParameter(
        "time_range_hours", OpenApiTypes.INT, description=f"Default {DEFAULT_RANGE_HOURS}, at most {MAX_RANGE_HOURS}."
    ),
    OpenApiParameter("team_alias", _TEXT),
]
WHAT_IF_PARAMETERS = [
    OpenApiParameter("model", _TEXT, required=True, description="The calls' model, as stored (normalised name)."),
    OpenApiParameter("alternative", _TEXT, required=True,
                     description="The model to price them at (a name the price table knows, e.g. gpt-4o-mini "
                                 "or openai/gpt-4o-mini)."),
    OpenApiParameter("query_type", _TEXT),
    *RANGE_PARAMETERS,
]


def _parsed(filterset):
    if not filterset.is_valid():
        raise ValidationError(filterset.errors)
    return filterset


class WhatIfView(APIView):
    """The same calls' usage priced at another model by the ledger, per call, with the organization's
    price list; from raw events (within raw retention)."""

    permission_classes = [CanRead]

    @extend_schema(parameters=WHAT_IF_PARAMETERS, responses={200: dict}, summary="What the calls would cost on "
                   "another model")
    def get(self, request):
        filterset = _parsed(WhatIfFilterSet(data=request.query_params))
        data = filterset.form.cleaned_data
        try:
            answer = what_if(scope=request.user.scope, filters=filterset.insight_filters(), model=data["model"],
                             alternative=data["alternative"])  # fmt: skip
        except UnpricedAlternative:
            raise ValidationError(
                {"alternative": ["no price for this model (platform or the organization's own)"]}
            ) from None
        return Response(answer)


class SavingsView(APIView):
    """What prompt caching, the client's response cache and batching saved, and what failed calls cost;
    from raw events (within raw retention). `method` says how each figure is reached."""

    permission_classes = [CanRead]

    @extend_schema(parameters=RANGE_PARAMETERS, responses={200: dict}, summary="Savings so far")
    def get(self, request):
        filterset = _parsed(SavingsFilterSet(data=request.query_params))
        return Response(savings(scope=request.user.scope, filters=filterset.insight_filters()))


class ForecastView(APIView):
    """Each team's spend this calendar month (the organization's time zone) and its projected
    month-end spend with a range, by the method budget forecasts use (metrics.forecasts)."""

    permission_classes = [CanRead]

    @extend_schema(parameters=[OpenApiParameter("team_alias", _TEXT)], responses={200: dict},
                   summary="Month-end spend per team")  # fmt: skip
    def get(self, request):
        filterset = _parsed(ForecastFilterSet(data=request.query_params))
        team_alias = filterset.form.cleaned_data.get("team_alias") or None
        return Response(month_forecasts(scope=request.user.scope, team_alias=team_alias))


class RecommendationsView(APIView):
    """For the costliest groups (team x query type x model) in range, cheaper models to try, each with its
    what-if saving on that group's calls and, for models already used, their latency P95 and error rate;
    from raw events (within raw retention). The method: `metrics.recommendations`."""

    permission_classes = [CanRead]

    @extend_schema(parameters=RANGE_PARAMETERS, responses={200: dict}, summary="Cheaper models to try")
    def get(self, request):
        filterset = _parsed(RecommendationsFilterSet(data=request.query_params))
        return Response(recommendations(scope=request.user.scope, filters=filterset.insight_filters()))
