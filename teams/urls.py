from django.urls import path

from . import api

urlpatterns = [
    path("dimensions", api.DimensionsView.as_view(), name="api-dimensions"),
]
