"""The budget check a gateway calls before each LLM call, and reservations (reserve, release)."""

from datetime import UTC, datetime
from decimal import Decimal

from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.pricing.book import COST_QUANTUM, price_book
from billing.pricing.calculate import Usage, UsageError, price_event
from llmcost_project.api_errors import QueryParams, error_body
from teams.authentication import CanIngest, CanIngestOrRead
from teams.models import Team

from .reservations import (
    DEFAULT_TTL_SECONDS,
    MAX_TTL_SECONDS,
    reservation_release,
    reservation_reserve,
    reservation_unavailable,
    reserve_answer_for,
)
from .selectors import budget_check, budget_check_for


class BudgetCheckQuery(QueryParams):
    team_alias = serializers.CharField(required=False, max_length=100)
    user_id = serializers.CharField(required=False, max_length=255)
    end_user = serializers.CharField(required=False, max_length=255)


class BudgetCheckView(APIView):
    """Whether the team (and user, end user, this token) may still spend: `allowed` turns false once a
    hard budget that binds them is reached."""

    permission_classes = [CanIngestOrRead]

    @extend_schema(parameters=[BudgetCheckQuery], responses={200: dict}, summary="May this team still spend?")
    def get(self, request):
        query = BudgetCheckQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        scope = request.user.scope
        team = _caller_team(request, query.validated_data.get("team_alias"))
        answer = budget_check(
            organization=scope.organization, team=team, user_id=query.validated_data.get("user_id"),
            end_user=query.validated_data.get("end_user"), token_id=request.auth.pk,
        )  # fmt: skip
        return Response(budget_check_for(scope, answer))


class ReserveBody(serializers.Serializer):
    team_alias = serializers.CharField(required=False, max_length=100)
    user_id = serializers.CharField(required=False, max_length=255)
    end_user = serializers.CharField(required=False, max_length=255)
    request_id = serializers.CharField(required=False, max_length=128)
    amount = serializers.DecimalField(
        required=False, max_digits=22, decimal_places=10, min_value=Decimal(0), max_value=Decimal(1_000_000)
    )
    model = serializers.CharField(required=False, max_length=200)
    provider = serializers.CharField(required=False, max_length=64)
    prompt_tokens = serializers.IntegerField(required=False, min_value=0, max_value=100_000_000)
    max_output_tokens = serializers.IntegerField(required=False, min_value=0, max_value=100_000_000)
    ttl_seconds = serializers.IntegerField(required=False, min_value=1, max_value=MAX_TTL_SECONDS)

    def validate(self, attrs):
        priced = ("model", "prompt_tokens", "max_output_tokens")
        if "amount" in attrs:
            if any(name in attrs for name in priced):
                raise serializers.ValidationError({"amount": ["Give amount or model + tokens, not both."]})
            return attrs
        missing = [name for name in priced if name not in attrs]
        if len(missing) == len(priced):
            raise serializers.ValidationError(
                {"amount": ["Give amount, or model, prompt_tokens and max_output_tokens."]}
            )
        if missing:
            raise serializers.ValidationError({name: ["This field is required with model."] for name in missing})
        return attrs


def _caller_team(request, alias: str | None) -> Team | None:
    """The team a check or reservation is for: a pinned token's own (another alias is a 404), else
    the named one; None for none named or a team with no events yet (organization-wide budgets
    still apply to it)."""
    if not alias:
        return request.auth.team
    team = request.user.scope.find_team(alias)
    if team is None and request.auth.team_id is not None:
        raise Http404("No such team.")
    return team


def _estimate(token, data: dict) -> Decimal:
    if "amount" in data:
        return data["amount"].quantize(COST_QUANTUM)
    try:
        priced = price_event(
            price_book(), organization_id=token.organization_id, model=data["model"], provider=data.get("provider"),
            when=datetime.now(UTC),
            usage=Usage(prompt_tokens=data["prompt_tokens"], output_tokens=data["max_output_tokens"]),
        )  # fmt: skip
    except UsageError as error:
        raise ValidationError({"model": [str(error)]}) from None
    if not priced.is_priced:
        raise ValidationError({"model": [f"No price for {data['model']!r}: send amount instead."]})
    return priced.cost


class ReserveView(APIView):
    """Hold an estimate on every budget that applies; allowed only if every hard budget has room."""

    permission_classes = [CanIngest]
    recognises_tokens_while_database_away = True  # see ApiTokenAuthentication

    @extend_schema(request=ReserveBody, responses={200: dict}, summary="Reserve budget for one LLM call")
    def post(self, request):
        body = ReserveBody(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        token = request.auth
        alias = data.get("team_alias") or (token.team.alias if token.team_id is not None else None)
        if getattr(request, "database_away", False):
            if token.team_id is not None and alias != token.team.alias:
                raise Http404("No such team.")
            answer = reservation_unavailable(
                token=token, team_alias=alias, user_id=data.get("user_id"), end_user=data.get("end_user")
            )
        else:
            answer = reservation_reserve(
                token=token, team=_caller_team(request, data.get("team_alias")), team_alias=alias,
                amount=_estimate(token, data), user_id=data.get("user_id"), end_user=data.get("end_user"),
                request_id=data.get("request_id"), ttl_seconds=data.get("ttl_seconds", DEFAULT_TTL_SECONDS),
            )  # fmt: skip
        return Response(reserve_answer_for(request.user.scope, answer))


class ReleaseBody(serializers.Serializer):
    reservation_id = serializers.UUIDField()


class ReleaseView(APIView):
    """Free a reservation's hold at once (the call was not made)."""

    permission_classes = [CanIngest]

    @extend_schema(request=ReleaseBody, responses={200: dict, 404: dict}, summary="Release a reservation")
    def post(self, request):
        body = ReleaseBody(data=request.data)
        body.is_valid(raise_exception=True)
        answer = reservation_release(token=request.auth, reservation_id=body.validated_data["reservation_id"])
        if answer is None:
            return Response(error_body("No such reservation."), status=404)
        return Response(answer)
