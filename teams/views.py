"""Pages for tenancy: tokens, members and team pages."""

from django.shortcuts import render

from .web import org_page


@org_page(manage=True)
def tokens(request, scope):
    return render(request, "metrics/dashboard.html", {"scope": scope, "nav": "tokens"})


@org_page(manage=True)
def members(request, scope):
    return render(request, "metrics/dashboard.html", {"scope": scope, "nav": "members"})
