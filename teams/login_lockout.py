"""Login lockout: django-axes' per username + address lockout, plus one per address across usernames.

django-axes compares every lockout parameter group with the one AXES_FAILURE_LIMIT, so adding
`"ip_address"` to AXES_LOCKOUT_PARAMETERS would lock a whole office (one NAT address) out after five
typos. A password spray (a few guesses for each of many usernames) needs a higher, separate limit
per address: LOGIN_IP_FAILURE_LIMIT failures from one address within the cool-off lock that
address out for every username, the right password included, until the failures age out.
"""

from __future__ import annotations

from typing import Any

from axes.attempts import get_cool_off_threshold
from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_client_username
from axes.models import AccessAttempt
from axes.signals import user_locked_out
from django.conf import settings

from llmcost_project.db import Sum


class LoginLockoutHandler(AxesDatabaseHandler):
    """axes' database handler (AXES_HANDLER), with the lockout of an address across usernames."""

    def address_failures(self, request) -> int:
        """Failed logins from the request's address within the cool-off, whatever the username.

        axes keeps one AccessAttempt row per username, address and user agent with its failure count
        (a successful login deletes only that username's rows), so their sum is the address's count.
        """
        attempts = AccessAttempt.objects.filter(ip_address=request.axes_ip_address)
        if settings.AXES_COOLOFF_TIME is not None:
            attempts = attempts.filter(attempt_time__gte=get_cool_off_threshold(request))
        return attempts.aggregate(total=Sum("failures_since_start"))["total"] or 0

    def address_locked(self, request) -> bool:
        return getattr(settings, "AXES_LOCK_OUT_AT_FAILURE", True) and (
            self.address_failures(request) >= settings.LOGIN_IP_FAILURE_LIMIT
        )

    def is_locked(self, request, credentials: dict | None = None) -> bool:
        return super().is_locked(request, credentials) or self.address_locked(request)

    def user_login_failed(self, sender, credentials: dict, request=None, **kwargs: Any) -> None:
        super().user_login_failed(sender, credentials, request, **kwargs)
        if request is None or request.axes_locked_out or not self.address_locked(request):
            return
        # The failure that reaches the address's limit is answered with the lockout page, as axes
        # answers the one that reaches a username's limit.
        request.axes_locked_out = True
        request.axes_credentials = credentials
        user_locked_out.send(
            "axes", request=request, username=get_client_username(request, credentials),
            ip_address=request.axes_ip_address,
        )
