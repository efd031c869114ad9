from django.urls import path

from . import views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("dashboard.json", views.dashboard_data, name="dashboard-data"),
    path("requests/", views.requests_list, name="requests"),
    path("requests.csv", views.requests_csv, name="requests-csv"),
    # request ids are the client's own strings: any character, "/" included
    path("requests/<path:request_id>/", views.request_detail, name="request-detail"),
]
