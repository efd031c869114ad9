from django.urls import path

from . import api, export_api, insight_api, report_api

urlpatterns = [
    path("metrics/track", api.TrackView.as_view(), name="metrics-track"),
    path("events", api.EventBatchView.as_view(), name="events"),
    path("metrics/cache", api.CacheStatView.as_view(), name="metrics-cache"),
    path("metrics/batch", api.BatchRunView.as_view(), name="metrics-batch"),
    path("dashboard/metrics", api.DashboardMetricsView.as_view(), name="dashboard-metrics"),
    path("requests/recent", api.RecentRequestsView.as_view(), name="requests-recent"),
    path("reports/spend", report_api.SpendReportView.as_view(), name="reports-spend"),
    path("insights/what-if", insight_api.WhatIfView.as_view(), name="insights-what-if"),
    path("insights/savings", insight_api.SavingsView.as_view(), name="insights-savings"),
    path("insights/forecast", insight_api.ForecastView.as_view(), name="insights-forecast"),
    path("insights/recommendations", insight_api.RecommendationsView.as_view(), name="insights-recommendations"),
    path("exports/focus", export_api.FocusExportView.as_view(), name="exports-focus"),
]
