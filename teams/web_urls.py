from django.urls import path

from . import views

urlpatterns = [
    path("tokens/", views.tokens, name="tokens"),
    path("tokens/<int:token_id>/revoke/", views.token_revoke_view, name="token-revoke"),
    path("members/", views.members, name="members"),
    path("members/<int:member_id>/", views.member_edit, name="member-edit"),
    path("members/<int:member_id>/remove/", views.member_remove, name="member-remove"),
    path("members/<int:member_id>/invite/", views.member_invite, name="member-invite"),
    path("dimensions/", views.dimensions, name="dimensions"),
    path("dimensions/add/", views.dimension_add, name="dimension-add"),
    path("dimensions/<str:key>/remove/", views.dimension_remove_view, name="dimension-remove"),
]
