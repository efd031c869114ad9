"""The password reset page, throttled: a reset form must not be a way to mail-bomb someone.

At most PASSWORD_RESET_MAILS_PER_ADDRESS reset mails go to one address per hour, and one client
address may ask for at most PASSWORD_RESET_REQUESTS_PER_IP resets per hour. Past either limit the
page answers exactly as it always does ("check your email"), so it tells nobody whether an address
has an account or is being throttled; only no mail is sent. The counters live in Django's cache
(shared by every web process through Redis in production), each an atomic increment in a window
that starts with its first request.
"""

from __future__ import annotations

import hashlib
import logging

from axes.helpers import get_client_ip_address
from django.conf import settings
from django.contrib.auth.views import PasswordResetView
from django.core.cache import cache
from django.http import HttpResponseRedirect

from .forms import InvitablePasswordResetForm

log = logging.getLogger(__name__)

WINDOW_SECONDS = 3600


def _count(key: str) -> int:
    """This window's count for `key`, the current request included (an atomic increment)."""
    cache.add(key, 0, timeout=WINDOW_SECONDS)  # starts the window; a no-op when it is running
    try:
        return cache.incr(key)
    except ValueError:  # the window ended between the two calls
        cache.add(key, 1, timeout=WINDOW_SECONDS)
        return 1


def reset_mail_allowed(*, email: str, client_ip: str) -> bool:
    """Count a reset request from `client_ip` for `email`; whether its mail may be sent.

    The address is hashed for the key: the cache holds no email addresses. A client over its own
    limit does not count against the address, so it cannot keep the owner's own resets blocked.
    """
    if _count(f"password-reset:ip:{client_ip}") > settings.PASSWORD_RESET_REQUESTS_PER_IP:
        log.warning("Password reset throttled: more than %s requests this hour from %s",
                    settings.PASSWORD_RESET_REQUESTS_PER_IP, client_ip)
        return False
    digest = hashlib.sha256(email.strip().casefold().encode()).hexdigest()
    if _count(f"password-reset:address:{digest}") > settings.PASSWORD_RESET_MAILS_PER_ADDRESS:
        log.warning("Password reset throttled: more than %s mails this hour to one address (asked from %s)",
                    settings.PASSWORD_RESET_MAILS_PER_ADDRESS, client_ip)
        return False
    return True


class ThrottledPasswordResetView(PasswordResetView):
    """Django's reset page with our form (it reaches members who have no password yet), throttled."""

    form_class = InvitablePasswordResetForm

    def form_valid(self, form):
        client_ip = get_client_ip_address(self.request)
        try:
            allowed = reset_mail_allowed(email=form.cleaned_data["email"], client_ip=client_ip)
        except Exception:  # the cache (Redis) is down: people can still reset; say so loudly
            log.exception("Password reset not throttled: the cache is unavailable")
            allowed = True
        if allowed:
            return super().form_valid(form)  # sends the mail, then redirects to the "done" page
        return HttpResponseRedirect(self.get_success_url())
