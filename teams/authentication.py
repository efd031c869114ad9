"""DRF glue for API tokens: authentication, scope permissions and the per-token rate limit.

The decisions themselves live in `teams.access`; these classes only adapt them to DRF.
"""

import hashlib
import time

from django.core.cache import cache
from django.db import DatabaseError
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions, throttling

from llmcost_project.db import database_unavailable
from llmcost_project.degraded import degraded

from .access import authenticate_token, scope_for_token
from .models import ApiToken


class TokenUser:
    """What `request.user` is for a token request: enough for DRF, never a Django user."""

    is_authenticated = True
    is_staff = False

    def __init__(self, token: ApiToken):
        self.token = token
        self.scope = scope_for_token(token)


class ApiTokenAuthentication(authentication.BaseAuthentication):
    """Bearer tokens. A view with `recognises_tokens_while_database_away` (the budget reserve API,
    whose gateways need an answer even then) also recognises, while the database is away, a token
    it authenticated in the last hour, and marks the request `database_away`. Such tokens are kept
    in the cache (with their organization and team, never their secret) under a digest of the
    secret, written at most every few minutes per process. A token revoked within that hour can
    still be recognised while the database is away; what such a view answers then takes no hold
    and stores nothing."""

    keyword = "Bearer"
    REMEMBER_SECONDS = 3600
    REWRITE_SECONDS = 300
    _written: dict[str, float] = {}  # per process: when each remembered token was last written

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        parts = header.split()
        if len(parts) != 2 or parts[0].lower() != self.keyword.lower():
            raise exceptions.AuthenticationFailed("Send the token as 'Authorization: Bearer <token>'.")
        view = (getattr(request, "parser_context", None) or {}).get("view")
        if getattr(view, "recognises_tokens_while_database_away", False):
            token = self._authenticate_or_recall(request, parts[1])
        else:
            token = authenticate_token(parts[1])
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        return TokenUser(token), token

    def _authenticate_or_recall(self, request, raw: str) -> ApiToken | None:
        key = f"known-token:{hashlib.sha256(raw.encode()).hexdigest()}"
        try:
            token = authenticate_token(raw)
        except DatabaseError as error:
            remembered = cache.get(key) if database_unavailable(error) else None
            if not isinstance(remembered, ApiToken):
                raise
            degraded("database", "token recognised from the cache", error)
            request.database_away = True
            return remembered
        now = time.monotonic()
        if token is not None and now - self._written.get(key, -self.REWRITE_SECONDS) >= self.REWRITE_SECONDS:
            cache.set(key, token, self.REMEMBER_SECONDS)
            self._written[key] = now
        return token

    def authenticate_header(self, request) -> str:
        return self.keyword


class _TokenScope(permissions.BasePermission):
    scope_name = ""

    def has_permission(self, request, view) -> bool:
        token = request.auth
        if not isinstance(token, ApiToken):
            raise exceptions.NotAuthenticated("Send an API token as 'Authorization: Bearer <token>'.")
        if self.scope_name not in token.scopes:
            raise exceptions.PermissionDenied(f"This token lacks the '{self.scope_name}' scope.")
        return True


class CanIngest(_TokenScope):
    scope_name = "ingest"


class CanRead(_TokenScope):
    scope_name = "read"


class CanIngestOrRead(permissions.BasePermission):
    def has_permission(self, request, view) -> bool:
        token = request.auth
        if not isinstance(token, ApiToken):
            raise exceptions.NotAuthenticated("Send an API token as 'Authorization: Bearer <token>'.")
        if not token.scopes:
            raise exceptions.PermissionDenied("This token has no scope.")
        return True


class ApiTokenRateThrottle(throttling.SimpleRateThrottle):
    """Requests per token (API_RATE_LIMIT); anonymous requests are limited per address.

    A sliding-window counter: one counter per token and window, plus the previous window's count
    weighted by the share of it still inside the last `duration` seconds. DRF's own throttle keeps
    a timestamp per request in one cache value, so every request reads and writes a list as long as
    the limit; this costs a few small cache operations whatever the limit, and the increments are
    atomic, so processes sharing a cache (Redis) share the count.
    """

    scope = "api_token"
    num_requests: int  # set from the rate by SimpleRateThrottle.__init__
    duration: int

    def get_cache_key(self, request, view):
        if isinstance(request.auth, ApiToken):
            ident = f"token-{request.auth.pk}"
        else:
            ident = self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}

    def allow_request(self, request, view) -> bool:
        if self.rate is None:
            return True
        key = self.get_cache_key(request, view)
        if key is None:
            return True
        position = self.timer() / self.duration
        window = int(position)
        elapsed = position - window  # the share of the current window already gone
        current_key, previous_key = f"{key}:{window}", f"{key}:{window - 1}"
        previous = self.cache.get(previous_key, 0)
        try:
            count = self.cache.incr(current_key)
        except ValueError:  # the window's first request (or the counter expired)
            if self.cache.add(current_key, 1, 2 * self.duration):  # kept while it is the previous window
                count = 1
            else:
                count = self.cache.incr(current_key)
        if previous * (1 - elapsed) + count <= self.num_requests:
            return True
        self.cache.decr(current_key)  # a refused request does not use up the allowance
        self._wait = self._seconds_until_allowed(previous, count - 1, elapsed)
        return False

    def _seconds_until_allowed(self, previous: int, counted: int, elapsed: float) -> float:
        """How long until one more request fits, if no other request arrives meanwhile."""
        limit = self.num_requests
        if limit <= 0:
            return float(self.duration)
        if counted + 1 > limit:  # not in this window: in the next, where `counted` is the previous one
            share = 1 - (limit - 1) / counted
            return ((1 - elapsed) + max(share, 0.0)) * self.duration
        share = 1 - (limit - counted - 1) / previous if previous else 0.0
        return max(share - elapsed, 0.0) * self.duration

    def wait(self) -> float | None:
        return getattr(self, "_wait", None)


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = ApiTokenAuthentication
    name = "ApiToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "An llmcost API token (lc_…)."}
