from django.urls import path

from . import channel_views, views

urlpatterns = [
    path("teams/", views.teams, name="teams"),
    path("teams/<str:alias>/", views.team, name="team"),
    path("budgets/", views.budgets, name="budgets"),
    path("budgets/new/", views.budget_new, name="budget-new"),
    path("budgets/<int:budget_id>/edit/", views.budget_edit, name="budget-edit"),
    path("budgets/<int:budget_id>/delete/", views.budget_delete, name="budget-delete"),
    path("notifications/", channel_views.notifications, name="notifications"),
    path("notifications/<int:channel_id>/toggle/", channel_views.channel_toggle, name="channel-toggle"),
    path("notifications/<int:channel_id>/delete/", channel_views.channel_delete, name="channel-delete"),
    path("notifications/<int:channel_id>/test/", channel_views.channel_send_test, name="channel-test"),
]
