"""DRF glue for API tokens: authentication, scope permissions and the per-token rate limit.

The decisions themselves live in `teams.access`; these classes only adapt them to DRF.
"""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions, throttling

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
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        parts = header.split()
        if len(parts) != 2 or parts[0].lower() != self.keyword.lower():
            raise exceptions.AuthenticationFailed("Send the token as 'Authorization: Bearer <token>'.")
        token = authenticate_token(parts[1])
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        return TokenUser(token), token

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
    """Requests per token (API_RATE_LIMIT); anonymous requests are limited per address."""

    scope = "api_token"

    def get_cache_key(self, request, view):
        if isinstance(request.auth, ApiToken):
            ident = f"token-{request.auth.pk}"
        else:
            ident = self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = ApiTokenAuthentication
    name = "ApiToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "An llmcost API token (lc_…)."}
