from django.urls import path

from . import api

urlpatterns = [
    path("budget/check", api.BudgetCheckView.as_view(), name="budget-check"),
]
