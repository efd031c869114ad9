"""Integration endpoints; included at the site root because OTLP's path (/v1/traces) is fixed."""

from django.urls import path

from . import views

urlpatterns = [
    path("api/v1/integrations/litellm", views.LiteLLMLogsView.as_view(), name="integrations-litellm"),
    path("v1/traces", views.OtlpTracesView.as_view(), name="otlp-traces"),
]
