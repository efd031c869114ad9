"""Throttling through the real pages: password reset mails per address and per client address, and
the lockout of one address that sprays passwords across many usernames.

Mails are counted in Django's test outbox (the locmem backend pytest-django installs); client
addresses are set with REMOTE_ADDR, which is what django-axes and the reset throttle read.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.core import mail
from django.test import Client

from tests.budget_support import private_cache
from tests.smtp_sink import free_port
from tests.web_support import page_settings

LOGIN = "/accounts/login/"
RESET = "/accounts/password_reset/"
DONE = "/accounts/password_reset/done/"
SPRAYER = "203.0.113.7"
NEIGHBOUR = "198.51.100.20"


@pytest.fixture(autouse=True)
def _settings(settings):
    page_settings(settings)
    private_cache(settings)  # the reset counters live in the cache: start each test from zero


def ask_reset(email: str, *, ip: str = SPRAYER, follow: bool = False):
    return Client().post(RESET, {"email": email}, REMOTE_ADDR=ip, follow=follow)


def log_in(client: Client, username: str, password: str, *, ip: str = SPRAYER):
    return client.post(LOGIN, {"username": username, "password": password}, REMOTE_ADDR=ip)


def logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


# --- password reset -----------------------------------------------------------------------------


def test_it_sends_at_most_three_reset_mails_to_one_address_per_hour(world, settings):
    assert settings.PASSWORD_RESET_MAILS_PER_ADDRESS == 3
    answers = [ask_reset(email, ip=f"192.0.2.{i}") for i, email in
               enumerate(["member@acme.test", "MEMBER@acme.test", " member@acme.test", "Member@Acme.test"])]

    assert [a.status_code for a in answers] == [302] * 4
    assert {a["Location"] for a in answers} == {DONE}
    assert [m.to for m in mail.outbox] == [["member@acme.test"]] * 3
    # Another address is not held back by it.
    ask_reset("owner@acme.test", ip="192.0.2.99")
    assert mail.outbox[-1].to == ["owner@acme.test"] and len(mail.outbox) == 4


def test_a_throttled_reset_answers_exactly_like_any_other(world):
    for _ in range(3):
        ask_reset("member@acme.test")
    throttled = ask_reset("member@acme.test", follow=True)
    unknown = ask_reset("nobody@nowhere.test", ip=NEIGHBOUR, follow=True)

    assert throttled.redirect_chain == unknown.redirect_chain == [(DONE, 302)]
    assert "Check your email" in throttled.content.decode()
    assert throttled.content == unknown.content
    assert len(mail.outbox) == 3


def test_one_client_address_may_ask_for_twenty_resets_per_hour(world, settings):
    assert settings.PASSWORD_RESET_REQUESTS_PER_IP == 20
    for i in range(20):
        assert ask_reset(f"nobody-{i}@nowhere.test")["Location"] == DONE

    throttled = ask_reset("member@acme.test")  # the 21st request from that address

    assert throttled["Location"] == DONE
    assert mail.outbox == []
    # The same person, asking from elsewhere, gets the mail: the address's own count was not spent.
    ask_reset("member@acme.test", ip=NEIGHBOUR)
    assert [m.to for m in mail.outbox] == [["member@acme.test"]]


def test_the_limits_are_settings(world, settings):
    settings.PASSWORD_RESET_MAILS_PER_ADDRESS = 1
    ask_reset("member@acme.test", ip="192.0.2.1")
    ask_reset("member@acme.test", ip="192.0.2.2")
    assert len(mail.outbox) == 1

    settings.PASSWORD_RESET_REQUESTS_PER_IP = 1
    ask_reset("owner@acme.test", ip="192.0.2.3")
    ask_reset("viewer@acme.test", ip="192.0.2.3")
    assert [m.to for m in mail.outbox[1:]] == [["owner@acme.test"]]


def test_an_invalid_form_counts_nothing(world, settings):
    settings.PASSWORD_RESET_REQUESTS_PER_IP = 1
    page = Client().post(RESET, {"email": "not-an-email"}, REMOTE_ADDR=SPRAYER)
    assert page.status_code == 200 and 'id="id_email_error"' in page.content.decode()

    ask_reset("member@acme.test")
    assert len(mail.outbox) == 1


def test_resets_still_work_when_the_cache_is_down(world, settings):
    """A Redis that refuses connections: the reset is not throttled, but it is not refused either."""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": f"redis://127.0.0.1:{free_port()}/0"}}

    response = ask_reset("member@acme.test")

    assert response["Location"] == DONE
    assert [m.to for m in mail.outbox] == [["member@acme.test"]]


# --- password spraying --------------------------------------------------------------------------


def spray(count: int, *, ip: str = SPRAYER) -> list[int]:
    """`count` failed logins from `ip`, each for another username (one real, most not)."""
    names = ["member@acme.test"] + [f"guess-{i}@acme.test" for i in range(count - 1)]
    return [log_in(Client(), name, "Winter2026!", ip=ip).status_code for name in names]


def test_a_spray_across_usernames_locks_the_address_out(world, settings):
    assert settings.LOGIN_IP_FAILURE_LIMIT == 20 and settings.AXES_FAILURE_LIMIT == 5
    answers = spray(20)

    assert answers[:19] == [200] * 19  # each username failed once only: no per-username lockout
    assert answers[19] == 429  # the 20th failure from the address
    client = Client()
    refused = log_in(client, "owner@acme.test", "pw-owner-1")  # the right password, another user
    assert refused.status_code == 429
    assert "Too many failed logins" in refused.content.decode()
    assert not logged_in(client)
    # Other addresses are not affected.
    elsewhere = Client()
    assert log_in(elsewhere, "owner@acme.test", "pw-owner-1", ip=NEIGHBOUR).status_code == 302
    assert logged_in(elsewhere)


def test_nineteen_failures_from_one_address_still_let_a_right_password_in(world):
    assert spray(19) == [200] * 19
    client = Client()
    assert log_in(client, "owner@acme.test", "pw-owner-1").status_code == 302
    assert logged_in(client)


def test_a_successful_login_does_not_wipe_the_address_count(world, settings):
    """Logging in to one's own account forgets that username's failures only, not the spray's."""
    settings.LOGIN_IP_FAILURE_LIMIT = 6
    assert spray(5) == [200] * 5
    assert log_in(Client(), "owner@acme.test", "pw-owner-1").status_code == 302

    assert log_in(Client(), "guess-x@acme.test", "nope").status_code == 429


def test_the_address_lockout_ends_after_the_cool_off(world, settings):
    settings.AXES_COOLOFF_TIME = timedelta(seconds=1)
    settings.LOGIN_IP_FAILURE_LIMIT = 3
    assert spray(3) == [200, 200, 429]
    assert log_in(Client(), "owner@acme.test", "pw-owner-1").status_code == 429

    time.sleep(1.2)

    client = Client()
    assert log_in(client, "owner@acme.test", "pw-owner-1").status_code == 302
    assert logged_in(client)
