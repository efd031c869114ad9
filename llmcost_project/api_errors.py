"""One JSON shape for every API error: {"status": "error", "message": ..., "errors": {field: [...]}}."""

from django.http import JsonResponse
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.views import exception_handler


def error_body(message: str, errors: dict | None = None) -> dict:
    body: dict = {"status": "error", "message": message}
    if errors:
        body["errors"] = errors
    return body


def api_exception_handler(exc, context):
    response = exception_handler(exc, context)
    if response is None:
        return None  # unexpected: Django's 500 handler answers (in JSON for /api/)
    if isinstance(exc, ValidationError):
        detail = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        response.data = error_body("Invalid request.", detail)
    else:
        detail = response.data.get("detail", response.data) if isinstance(response.data, dict) else response.data
        response.data = error_body(str(detail))
    return response


def _wants_json(request) -> bool:
    return request.path.startswith("/api/") or request.path.startswith("/v1/")


def json_or_html_404(request, exception=None):
    from django.views.defaults import page_not_found

    if _wants_json(request):
        return JsonResponse(error_body("Not found."), status=404)
    return page_not_found(request, exception)


def json_or_html_500(request):
    from django.views.defaults import server_error

    if _wants_json(request):
        return JsonResponse(error_body("Internal server error."), status=500)
    return server_error(request)


def json_or_html_400(request, exception=None):
    from django.views.defaults import bad_request

    if _wants_json(request):
        return JsonResponse(error_body("Bad request."), status=400)
    return bad_request(request, exception)


class QueryParams(serializers.Serializer):
    """Base for query-string serializers: a parameter sent empty is an error, not an omission.

    DRF treats `?team_alias=` as if the parameter were absent; for a filter that would silently
    widen the answer (every team instead of none), so it is refused, naming the parameter.
    """

    # Parameters read by something else (a FilterSet) that must not be blank either.
    other_params: tuple[str, ...] = ()

    def validate(self, attrs):
        names = [*self.fields, *self.other_params]
        blank = [key for key in names if key in self.initial_data and not self.initial_data[key].strip()]
        if blank:
            raise serializers.ValidationError({key: ["may not be blank"] for key in blank})
        return super().validate(attrs)
