"""Pages for billing: the budgets list, and creating, editing and deleting budgets (owners and admins)."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import F
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods

from teams.access import AccessScope
from teams.web import org_page

from .forms import BudgetForm
from .models import Budget
from .overview import budget_rows
from .services import budget_create


def _budgets(scope: AccessScope):
    """The budgets this manager sees: the organization's (whole-org ones only with every team in view)."""
    return scope.filter(Budget.objects.select_related("organization", "team"))


def _label(budget: Budget) -> str:
    return budget.name or (
        "Organization" if budget.team is None
        else f"{budget.team.alias} · {budget.user_id}" if budget.user_id else budget.team.alias
    )


@org_page(manage=True)
def budgets(request, scope):
    ordered = _budgets(scope).order_by(
        F("team__alias").asc(nulls_first=True), "user_id", "period", "id"
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
