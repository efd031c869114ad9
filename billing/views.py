"""Pages for billing: the teams with their spend and budgets (readers), the budgets list, and
creating, editing and deleting budgets (owners and admins)."""

from __future__ import annotations

from datetime import UTC, datetime, time
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.contrib import messages
from django.db.models import Count, F, Q
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods

from metrics.selectors import EventFilter, top_usage, usage_by
from teams.access import AccessScope
from teams.models import Organization
from teams.web import org_page

from .forms import BudgetForm, token_label
from .models import Budget, BudgetAlert
from .overview import budget_rows
from .services import budget_create

# --- teams: spend against budgets ------------------------------------------------------------


def month_start(organization: Organization, now: datetime) -> datetime:
    """The first instant of the current calendar month in the organization's time zone."""
    zone = ZoneInfo(organization.time_zone)
    first = now.astimezone(zone).date().replace(day=1)
    return datetime.combine(first, time.min, tzinfo=zone).astimezone(UTC)


def spend_by_team(scope: AccessScope, filters: EventFilter) -> dict[int, dict]:
    """Cost and request count per visible team, from rollups plus the raw tail."""
    return {key[0]: values for key, values in usage_by(scope=scope, filters=filters, fields=("team",)).items()}


@org_page
def teams(request, scope):
    now = datetime.now(UTC)
    start = month_start(scope.organization, now)
    team_list = list(
        scope.teams()
        .annotate(budget_count=Count("budgets", filter=Q(budgets__is_active=True)))
        .order_by("alias")
    )
    spend = spend_by_team(scope, EventFilter(start=start, end=now))
    rows = [{"team": team, **spend.get(team.pk, {"cost": Decimal(0), "requests": 0})} for team in team_list]
    context = {
        "scope": scope, "nav": "teams", "rows": rows, "month_start": start,
        "total": sum((row["cost"] for row in rows), Decimal(0)),
    }
    return render(request, "billing/teams.html", context)


@org_page
def team(request, scope, alias: str):
    team = scope.team(alias)
    organization = scope.organization
    now = datetime.now(UTC)
    start = month_start(organization, now)
    # Organization-wide budgets count every team's spend: shown only to readers who see every team.
    applies = Q(team=team) | Q(team__isnull=True) if scope.team_ids is None else Q(team=team)
    budgets = list(
        Budget.objects.filter(applies, organization=organization, is_active=True)
        .select_related("organization", "team", "token")
        .order_by(F("team_id").asc(nulls_first=True), "user_id", "period", "id")
    )
    month = EventFilter(start=start, end=now, team_alias=team.alias)
    alert_applies = (
        Q(budget__team=team) | Q(budget__team__isnull=True) if scope.team_ids is None else Q(budget__team=team)
    )
    alerts = (
        BudgetAlert.objects.filter(alert_applies, budget__organization=organization)
        .select_related("budget__team", "budget__token")
        .order_by("-created_at", "-id")[:50]
    )
    month_spend = spend_by_team(scope, month).get(team.pk, {})
    context = {
        "scope": scope, "nav": "teams", "team": team, "month_start": start,
        "month_cost": month_spend.get("cost", Decimal(0)), "month_requests": month_spend.get("requests", 0),
        "rows": budget_rows(budgets, now),
        "top_users": top_usage(scope=scope, filters=month, dimension="user_id"),
        "top_models": top_usage(scope=scope, filters=month, dimension="model"),
        "alerts": list(alerts),
        "sees_everything": scope.team_ids is None,
    }
    return render(request, "billing/team.html", context)


# --- budgets ------------------------------------------------------------------------------------


def _budgets(scope: AccessScope):
    """The budgets this manager sees: the organization's (whole-org ones only with every team in view)."""
    return scope.filter(Budget.objects.select_related("organization", "team", "token"))


def _label(budget: Budget) -> str:
    """The budget's name, or what it limits (the scope badge's words, as plain text)."""
    if budget.name:
        return budget.name
    parts = [budget.team.alias] if budget.team is not None else []
    if budget.user_id:
        parts.append(budget.user_id)
    if budget.end_user:
        parts.append(f"end user {budget.end_user}")
    if budget.token is not None:
        parts.append(f"token {token_label(budget.token)}")
    return " · ".join(parts) if parts else "Organization"


@org_page(manage=True)
def budgets(request, scope):
    ordered = _budgets(scope).order_by(
        F("team__alias").asc(nulls_first=True), "user_id", "end_user", F("token__name").asc(nulls_first=True),
        "period", "id",
    )
    rows = budget_rows(list(ordered))
    context = {
        "scope": scope, "nav": "budgets", "rows": rows,
        "active_rows": [row for row in rows if row.budget.is_active],
        "inactive_rows": [row for row in rows if not row.budget.is_active],
    }
    return render(request, "billing/budgets.html", context)


@org_page(manage=True)
@require_http_methods(["GET", "POST"])
def budget_new(request, scope):
    initial = {"team": request.GET["team"]} if request.GET.get("team", "").isdigit() else None
    form = BudgetForm(scope, request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            budget = budget_create(organization=scope.organization, **form.values())
        except ValueError as exc:  # budget_create has the last word on what a budget may be
            form.add_error(None, str(exc))
        else:
            if not form.cleaned_data["is_active"]:
                Budget.objects.filter(pk=budget.pk).update(is_active=False)
            messages.success(request, f"Budget “{_label(budget)}” created.")
            return redirect("budgets", org_slug=scope.organization.slug)
    return render(request, "billing/budget_form.html", {"scope": scope, "nav": "budgets", "form": form})


@org_page(manage=True)
@require_http_methods(["GET", "POST"])
def budget_edit(request, scope, budget_id: int):
    budget = get_object_or_404(_budgets(scope), pk=budget_id)
    form = BudgetForm(scope, request.POST or None, instance=budget)
    if request.method == "POST" and form.is_valid():
        for name, value in form.values().items():
            setattr(budget, name, value)
        budget.is_active = form.cleaned_data["is_active"]
        budget.save()
        messages.success(request, f"Budget “{_label(budget)}” saved.")
        return redirect("budgets", org_slug=scope.organization.slug)
    context = {"scope": scope, "nav": "budgets", "form": form, "budget": budget, "label": _label(budget)}
    return render(request, "billing/budget_form.html", context)


@org_page(manage=True)
@require_http_methods(["GET", "POST"])
def budget_delete(request, scope, budget_id: int):
    budget = get_object_or_404(_budgets(scope), pk=budget_id)
    if request.method == "POST":
        label = _label(budget)
        budget.delete()
        messages.success(request, f"Budget “{label}” deleted, with its alert history.")
        return redirect("budgets", org_slug=scope.organization.slug)
    alerts = budget.alerts.count()
    context = {"scope": scope, "nav": "budgets", "budget": budget, "label": _label(budget), "alerts": alerts}
    return render(request, "billing/budget_delete.html", context)
