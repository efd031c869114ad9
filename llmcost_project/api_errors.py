"""One JSON shape for every API error: {"status": "error", "message": ..., "errors": {field: [...]}}.

Also the parsers of read parameters (`QueryParams` for the API, `QueryForm` for pages): each
refuses, when its class is defined, a field that would let an unbounded value through, so no
query-string value reaches a query or date arithmetic out of range (a 400 naming the parameter,
never a 500).
"""

import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from django import forms
from django.core.exceptions import ValidationError as FormValidationError
from django.http import HttpResponse, JsonResponse
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.views import exception_handler

from .db import database_unavailable
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


# --- read parameters ------------------------------------------------------------------------------

# The times a read may name: every stored event lies inside (ingest takes 2015 onwards and nothing
# far ahead), and range arithmetic around them (the previous period, buckets, a day's end) stays
# far from datetime's year 1 and year 9999.
EARLIEST_QUERY_TIME = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_QUERY_TIME = datetime(2100, 1, 1, tzinfo=UTC)
OUT_OF_RANGE_TIME = "must be between 2000-01-01 and 2100-01-01 (UTC)"
# The largest cost a filter may name: within the 64-bit column money is stored in (1e-10 USD units).
MAX_QUERY_COST_USD = 100_000_000
QUERY_COST_DIGITS, QUERY_COST_PLACES = 19, 10  # 99,999,999.9999999999


class QueryMoment(serializers.DateTimeField):
    """A DateTimeField limited to the times a read may name."""

    default_error_messages = {"out_of_range": OUT_OF_RANGE_TIME}

    def to_internal_value(self, value):
        moment = super().to_internal_value(value)  # refuses what datetime cannot hold ("overflow")
        if not EARLIEST_QUERY_TIME <= moment <= LATEST_QUERY_TIME:
            self.fail("out_of_range")
        return moment


class MomentField(forms.DateTimeField):
    """A page's DateTimeField limited to the times a read may name."""

    def to_python(self, value):
        moment = super().to_python(value)
        if moment is not None and not EARLIEST_QUERY_TIME <= moment <= LATEST_QUERY_TIME:
            raise FormValidationError(f"The time {OUT_OF_RANGE_TIME}.", code="out_of_range")
        return moment


_BOUNDED_BY_KIND = (serializers.ChoiceField, serializers.BooleanField, forms.ChoiceField, forms.BooleanField,
                    QueryMoment, MomentField)
_NUMBERS = (serializers.IntegerField, serializers.DecimalField, serializers.FloatField, forms.IntegerField)
_TEXT = (serializers.CharField, forms.CharField)


def unbounded_fields(fields: Mapping[str, Any]) -> list[str]:
    """The fields that would let an out-of-range value through: a number without both bounds (or a
    decimal without max_digits: DRF quantizes before it checks bounds, and 10^30 fails there), text
    without a maximum length, a time other than `QueryMoment`/`MomentField`, any other kind."""
    unbounded = []
    for name, field in fields.items():
        if isinstance(field, _BOUNDED_BY_KIND):
            continue
        if isinstance(field, (serializers.DecimalField, forms.DecimalField)) and field.max_digits is None:
            unbounded.append(name)
            continue
        if isinstance(field, _NUMBERS) and field.min_value is not None and field.max_value is not None:
            continue  # forms.DecimalField and FloatField are IntegerFields
        if isinstance(field, _TEXT) and field.max_length is not None:
            continue
        unbounded.append(name)
    return unbounded


def _refuse_unbounded(cls: type, fields: Mapping[str, Any]) -> None:
    unbounded = unbounded_fields(fields)
    if unbounded:
        raise TypeError(f"{cls.__name__}: unbounded query parameters {unbounded}; give numbers min_value and "
                        "max_value, text a max_length, times QueryMoment/MomentField")


# --- the database is away: 503 with Retry-After, never a 500 -------------------------------------

DATABASE_RETRY_AFTER_SECONDS = 5
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
    """Base for the API's query-string serializers: every field bounded, and a parameter sent empty
    is an error, not an omission.

    DRF treats `?team_alias=` as if the parameter were absent; for a filter that would silently
    widen the answer (every team instead of none), so it is refused, naming the parameter.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _refuse_unbounded(cls, cls._declared_fields)  # set by DRF's metaclass before this runs

    def validate(self, attrs):
        names: list[str] = list(self.fields.keys())
        blank = [name for name in names if name in self.initial_data and not self.initial_data[name].strip()]
        if blank:
            raise serializers.ValidationError({name: ["may not be blank"] for name in blank})
        return super().validate(attrs)


class QueryForm(forms.Form):
    """Base for the pages' query-string forms: every field bounded (checked as for `QueryParams`)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # Django's metaclass has put this class's own fields here; inherited ones were checked with their class.
        _refuse_unbounded(cls, cls.declared_fields)
