"""The budget check a gateway calls before each LLM call."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from llmcost_project.api_errors import QueryParams
from teams.authentication import CanIngestOrRead

from .selectors import budget_check, budget_check_for


class BudgetCheckQuery(QueryParams):
    team_alias = serializers.CharField(required=False, max_length=100)
    user_id = serializers.CharField(required=False, max_length=255)


class BudgetCheckView(APIView):
    """Whether the team (and user) may still spend: `allowed` turns false once a hard budget is reached."""

    permission_classes = [CanIngestOrRead]

    @extend_schema(parameters=[BudgetCheckQuery], responses={200: dict}, summary="May this team still spend?")
    def get(self, request):
        query = BudgetCheckQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        scope = request.user.scope
        alias = query.validated_data.get("team_alias")
        if request.auth.team_id is not None:  # a pinned token asks about its own team only
            team = scope.team(alias) if alias else request.auth.team
        elif alias:  # a team with no events yet has no team budgets; the organization's still apply
            team = scope.teams().filter(alias=alias).first()
        else:
            team = None
        answer = budget_check(organization=scope.organization, team=team, user_id=query.validated_data.get("user_id"))
        return Response(budget_check_for(scope, answer))
