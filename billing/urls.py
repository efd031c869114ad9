from django.urls import path

from . import api

urlpatterns = [
    path("budget/check", api.BudgetCheckView.as_view(), name="budget-check"),
    path("budget/reserve", api.ReserveView.as_view(), name="budget-reserve"),
    path("budget/release", api.ReleaseView.as_view(), name="budget-release"),
]
