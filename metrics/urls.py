from django.urls import path

from . import api, export_api, report_api

urlpatterns = [
    path("metrics/track", api.TrackView.as_view(), name="metrics-track"),
    path("events", api.EventBatchView.as_view(), name="events"),
    path("metrics/cache", api.CacheStatView.as_view(), name="metrics-cache"),
    path("metrics/batch", api.BatchRunView.as_view(), name="metrics-batch"),
    path("dashboard/metrics", api.DashboardMetricsView.as_view(), name="dashboard-metrics"),
    path("requests/recent", api.RecentRequestsView.as_view(), name="requests-recent"),
    path("reports/spend", report_api.SpendReportView.as_view(), name="reports-spend"),
    path("exports/focus", export_api.FocusExportView.as_view(), name="exports-focus"),
]
