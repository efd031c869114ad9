from django.urls import path

from . import views

urlpatterns = [
    path("teams/", views.teams, name="teams"),
    path("teams/<str:alias>/", views.team, name="team"),
    path("budgets/", views.budgets, name="budgets"),
    path("budgets/new/", views.budget_new, name="budget-new"),
    path("budgets/<int:budget_id>/edit/", views.budget_edit, name="budget-edit"),
    path("budgets/<int:budget_id>/delete/", views.budget_delete, name="budget-delete"),
]
