from django.urls import path

from . import insight_views, price_views, report_views, views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("dashboard.json", views.dashboard_data, name="dashboard-data"),
    path("requests/", views.requests_list, name="requests"),
    path("requests.csv", views.requests_csv, name="requests-csv"),
    path("reports/", report_views.reports, name="reports"),
    path("reports.csv", report_views.reports_csv, name="reports-csv"),
    path("reports/focus.csv", report_views.reports_focus_csv, name="reports-focus-csv"),
    path("insights/", insight_views.insights, name="insights"),
    path("prices/", price_views.prices, name="prices"),
    *[
        route
        for kind in price_views.KINDS
        for route in (
            path(f"prices/{kind}s/new/", price_views.entry_new, {"kind": kind}, name=f"price-{kind}-new"),
            path(f"prices/{kind}s/<int:entry_id>/edit/", price_views.entry_edit, {"kind": kind},
                 name=f"price-{kind}-edit"),
            path(f"prices/{kind}s/<int:entry_id>/end/", price_views.entry_end, {"kind": kind},
                 name=f"price-{kind}-end"),
            path(f"prices/{kind}s/<int:entry_id>/delete/", price_views.entry_delete, {"kind": kind},
                 name=f"price-{kind}-delete"),
        )
    ],
    # request ids are the client's own strings: any character, "/" included
    path("requests/<path:request_id>/", views.request_detail, name="request-detail"),
]
