from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.templatetags.static import static
from django.urls import include, path
from django.utils.cache import patch_cache_control
from django.views.decorators.http import require_safe
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from metrics.prometheus import metrics_view
from teams.password_reset import ThrottledPasswordResetView
from teams.web import home

from .health import healthz, readyz


@require_safe
def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask for /favicon.ico whatever the page links (and for the JSON API too): send them to
    the icon in our static files, under its collected (hashed) name. Not permanent, as that name
    changes with the icon; cached for a day."""
    response = redirect(static("favicon.ico"))
    patch_cache_control(response, max_age=24 * 3600)
    return response

urlpatterns = [
    path("", home, name="home"),
    # Members added by an admin have no password yet: reset must reach them too (and is throttled).
    path("accounts/password_reset/", ThrottledPasswordResetView.as_view(), name="password_reset"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("o/<slug:org_slug>/", include("metrics.web_urls")),
    path("o/<slug:org_slug>/", include("teams.web_urls")),
    path("o/<slug:org_slug>/", include("billing.web_urls")),
    path("admin/", admin.site.urls),
    path("api/v1/", include("metrics.urls")),
    path("api/v1/", include("billing.urls")),
    path("api/v1/", include("teams.urls")),
    path("", include("metrics.integrations.urls")),  # LiteLLM logs; OTLP traces at /v1/traces
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("favicon.ico", favicon, name="favicon"),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics_view, name="prometheus-metrics"),
]

handler400 = "llmcost_project.api_errors.json_or_html_400"
handler404 = "llmcost_project.api_errors.json_or_html_404"
handler500 = "llmcost_project.api_errors.json_or_html_500"
