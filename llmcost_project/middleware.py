"""Middleware of the project's own."""

from __future__ import annotations

from .api_errors import database_unavailable_response
from .db import database_unavailable


class DatabaseUnavailableMiddleware:
    """A view (or DRF's token authentication inside it) that finds the database away answers 503
    with Retry-After instead of a 500, in the API's error shape for /api/ and /v1/.

    Errors raised by other middleware reach the 500 handler instead, which answers the same way
    (api_errors.json_or_html_500). Nothing else is needed to recover: with CONN_HEALTH_CHECKS a
    broken connection is replaced on the next request once the database answers again.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if database_unavailable(exception):
            return database_unavailable_response(request, exception)
        return None
