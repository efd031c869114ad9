"""Pages for metrics: the dashboard and the requests table."""

from django.shortcuts import render

from teams.web import org_page


@org_page
def dashboard(request, scope):
    return render(request, "metrics/dashboard.html", {"scope": scope, "nav": "dashboard"})


@org_page
def requests_list(request, scope):
    return render(request, "metrics/dashboard.html", {"scope": scope, "nav": "requests"})
