"""One JSON shape for every API error: {"status": "error", "message": ..., "errors": {field: [...]}}."""

import sys

from django.db import InterfaceError, OperationalError
from django.http import HttpResponse, JsonResponse
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.views import exception_handler

from .degraded import degraded


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

    # An error raised in a middleware (not a view) reaches only this handler, inside Django's
    # `except` block: a database that is away is still a 503 there.
    error = sys.exc_info()[1]
    if error is not None and database_unavailable(error):
        return database_unavailable_response(request, error)
    if _wants_json(request):
        return JsonResponse(error_body("Internal server error."), status=500)
    return server_error(request)


def json_or_html_400(request, exception=None):
    from django.views.defaults import bad_request

    if _wants_json(request):
        return JsonResponse(error_body("Bad request."), status=400)
    return bad_request(request, exception)


# --- the database is away: 503 with Retry-After, never a 500 -------------------------------------

DATABASE_RETRY_AFTER_SECONDS = 5
# SQLSTATE classes that mean the server is unreachable or refusing work for now: connection
# exception, insufficient resources (too many connections, disk full), operator intervention
# (shutting down, starting up, a cancelled statement).
_PG_UNAVAILABLE_CLASSES = ("08", "53", "57")
# SQLite result codes (and their extended forms) with the same meaning: busy past the timeout,
# locked, the file cannot be opened or read.
_SQLITE_UNAVAILABLE = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_CANTOPEN", "SQLITE_IOERR")


def database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot be reached now (retry later), not that a query is wrong.

    InterfaceError is a closed or broken connection. An OperationalError counts only for the causes
    above: SQLite's "integer overflow" or "no such table" are OperationalErrors too, and are bugs.
    """
    if isinstance(exc, InterfaceError):
        return True
    if not isinstance(exc, OperationalError):
        return False
    cause = exc.__cause__
    if hasattr(cause, "pgcode"):  # psycopg: no SQLSTATE at all means no answer from the server
        code = getattr(cause, "pgcode", None)
        return code is None or code[:2] in _PG_UNAVAILABLE_CLASSES
    name = getattr(cause, "sqlite_errorname", None)
    if name is not None:
        return name.startswith(_SQLITE_UNAVAILABLE)
    return False


def database_unavailable_response(request, error: BaseException) -> HttpResponse:
    """503 + Retry-After: the error shape for the APIs, a plain page (no template: templates query the
    database through context processors) elsewhere. Counted and logged (rate-limited)."""
    degraded("database", "request", error)
    message = "The database is temporarily unavailable; try again shortly."
    if _wants_json(request):
        response: HttpResponse = JsonResponse(error_body(message), status=503)
    else:
        response = HttpResponse(
            f"<!doctype html><title>Service unavailable</title><h1>Service unavailable</h1><p>{message}</p>",
            status=503, content_type="text/html; charset=utf-8",
        )
    response["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
    return response


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
