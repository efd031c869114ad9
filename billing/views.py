"""Pages for billing: budgets."""

from django.shortcuts import render

from teams.web import org_page


@org_page(manage=True)
def budgets(request, scope):
    return render(request, "metrics/dashboard.html", {"scope": scope, "nav": "budgets"})
