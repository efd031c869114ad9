"""Logging in and out, changing and resetting passwords, the lockout after repeated failures, and
that no organization page opens without a login."""

from __future__ import annotations

import re

import pytest
from django.conf import settings
from django.core import mail
from django.test import Client

from billing.services import budget_create
from teams.models import Membership
from tests.budget_support import private_cache
from tests.web_support import client_for, page_settings

LOGIN = "/accounts/login/"


@pytest.fixture(autouse=True)
def _page_settings(settings):
    page_settings(settings)
    private_cache(settings)  # password reset counters live in the cache (Redis keeps them between runs)


def log_in(client: Client, username: str, password: str, **extra):
    return client.post(LOGIN, {"username": username, "password": password, **extra})


def logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


# --- logging in and out ---------------------------------------------------------------------------


def test_it_shows_the_login_page_with_labelled_fields(db):
    body = Client().get(LOGIN).content.decode()
    assert '<label for="id_username">' in body and '<label for="id_password">' in body
    assert 'href="/accounts/password_reset/"' in body


def test_it_logs_in_with_the_right_password_and_goes_to_the_organization(world):
    client = Client()
    response = log_in(client, "owner@acme.test", "pw-owner-1")
    assert response.status_code == 302 and response["Location"] == "/"
    assert logged_in(client)
    assert client.get("/", follow=True).redirect_chain[-1][0] == "/o/acme/"


def test_it_follows_next_after_login(world):
    client = Client()
    response = log_in(client, "member@acme.test", "pw-member-1", next="/o/acme/teams/")
    assert response["Location"] == "/o/acme/teams/"


def test_it_refuses_a_wrong_password(world):
    client = Client()
    response = log_in(client, "owner@acme.test", "wrong")
    assert response.status_code == 200
    assert "didn't match" in response.content.decode()
    assert not logged_in(client)


def test_it_still_logs_in_after_four_failures(world):
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert log_in(client, "owner@acme.test", "wrong").status_code == 200
    assert log_in(client, "owner@acme.test", "pw-owner-1").status_code == 302
    assert logged_in(client)


def test_it_locks_the_account_out_after_five_failures_even_with_the_right_password(world):
    assert settings.AXES_FAILURE_LIMIT == 5
    client = Client()
    for _ in range(5):
        log_in(client, "owner@acme.test", "wrong")
    response = log_in(client, "owner@acme.test", "pw-owner-1")  # the 6th attempt
    assert response.status_code == 429
    assert "Too many failed logins" in response.content.decode()
    assert not logged_in(client)
    # Another user from the same address is not locked out by someone else's failures.
    other = Client()
    assert log_in(other, "member@acme.test", "pw-member-1").status_code == 302


def test_it_logs_out_by_post_only(world):
    client = client_for(world.owner)
    assert client.get("/accounts/logout/").status_code == 405
    assert logged_in(client)
    response = client.post("/accounts/logout/")
    assert response.status_code == 302 and response["Location"] == LOGIN
    assert not logged_in(client)
    assert client.get("/o/acme/teams/").status_code == 302


def test_it_offers_logout_as_a_form_button(world):
    body = client_for(world.owner).get("/o/acme/teams/").content.decode()
    form = r'<form method="post" action="/accounts/logout/"[^>]*>\s*<input type="hidden" name="csrfmiddlewaretoken"'
    assert re.search(form, body)


# --- cookies --------------------------------------------------------------------------------------


def test_it_marks_session_and_csrf_cookies_secure_when_debug_is_off(world):
    assert settings.DEBUG is False  # tests run as production does (tests/env_defaults.py)
    assert settings.SESSION_COOKIE_SECURE and settings.CSRF_COOKIE_SECURE
    assert settings.SESSION_COOKIE_HTTPONLY
    client = Client()
    response = client.get(LOGIN)
    assert response.cookies["csrftoken"]["secure"]
    response = log_in(client, "owner@acme.test", "pw-owner-1")
    assert response.cookies["sessionid"]["secure"]
    assert response.cookies["sessionid"]["httponly"]
    assert response.cookies["sessionid"]["samesite"] == "Lax"


# --- every organization page needs a login --------------------------------------------------------


ORG_PAGES = [
    ("get", "/o/acme/"),
    ("get", "/o/acme/requests/"),
    ("get", "/o/acme/teams/"),
    ("get", "/o/acme/teams/chatbot/"),
    ("get", "/o/acme/tokens/"),
    ("post", "/o/acme/tokens/"),
    ("post", "/o/acme/tokens/{token}/revoke/"),
    ("get", "/o/acme/budgets/"),
    ("get", "/o/acme/budgets/new/"),
    ("post", "/o/acme/budgets/new/"),
    ("get", "/o/acme/budgets/{budget}/edit/"),
    ("post", "/o/acme/budgets/{budget}/delete/"),
    ("get", "/o/acme/members/"),
    ("post", "/o/acme/members/"),
    ("get", "/o/acme/members/{member}/"),
    ("post", "/o/acme/members/{member}/remove/"),
    ("post", "/o/acme/members/{member}/invite/"),
    ("get", "/o/nosuchorg/teams/"),
]


@pytest.mark.parametrize(("method", "pattern"), ORG_PAGES)
def test_it_sends_anonymous_visitors_to_log_in_from_every_organization_page(world, method, pattern):
    budget = budget_create(organization=world.acme, amount_usd=1, period="monthly")
    url = pattern.format(
        token=world.tokens["both"].pk, budget=budget.pk, member=Membership.objects.get(user=world.member).pk
    )
    response = getattr(Client(), method)(url)
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={url}"


# --- changing and resetting passwords -------------------------------------------------------------


def test_it_changes_the_password(world):
    client = client_for(world.member)
    body = client.get("/accounts/password_change/").content.decode()
    assert '<label for="id_old_password">' in body and '<label for="id_new_password1">' in body
    response = client.post("/accounts/password_change/", {
        "old_password": "wrong", "new_password1": "n3w-secret-pw", "new_password2": "n3w-secret-pw"})
    assert 'id="id_old_password_error"' in response.content.decode()
    response = client.post("/accounts/password_change/", {
        "old_password": "pw-member-1", "new_password1": "n3w-secret-pw", "new_password2": "n3w-secret-pw"},
        follow=True)
    assert response.redirect_chain[-1][0] == "/accounts/password_change/done/"
    assert "Password changed" in response.content.decode()
    assert logged_in(client)  # the session that changed it stays signed in
    assert log_in(Client(), "member@acme.test", "n3w-secret-pw").status_code == 302


def test_it_needs_a_login_to_change_the_password(db):
    response = Client().get("/accounts/password_change/")
    assert response["Location"] == "/accounts/login/?next=/accounts/password_change/"


def test_it_resets_a_forgotten_password_by_email(world):
    client = Client()
    assert "Reset your password" in client.get("/accounts/password_reset/").content.decode()
    response = client.post("/accounts/password_reset/", {"email": "member@acme.test"}, follow=True)
    assert response.redirect_chain[-1][0] == "/accounts/password_reset/done/"
    assert "Check your email" in response.content.decode()
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["member@acme.test"] and message.subject == "Choose a new llmcost password"
    assert not message.alternatives and "<" not in message.body  # a plain text email
    link = re.search(r"http://testserver(/accounts/reset/\S+/)", message.body).group(1)

    response = client.get(link, follow=True)
    set_password_url = response.redirect_chain[-1][0]
    assert "Choose a new password" in response.content.decode()
    response = client.post(set_password_url, {"new_password1": "fresh-pw-42", "new_password2": "fresh-pw-42"},
                           follow=True)
    assert response.redirect_chain[-1][0] == "/accounts/reset/done/"
    assert "Your password is set" in response.content.decode()
    assert log_in(Client(), "member@acme.test", "fresh-pw-42").status_code == 302
    # The link works once.
    assert "This link has expired" in Client().get(link, follow=True).content.decode()


def test_it_does_not_tell_whether_an_address_has_an_account(world):
    response = Client().post("/accounts/password_reset/", {"email": "nobody@nowhere.test"})
    assert response["Location"] == "/accounts/password_reset/done/"
    assert mail.outbox == []


def test_it_shows_reset_form_errors_next_to_the_field(db):
    body = Client().post("/accounts/password_reset/", {"email": "not-an-email"}).content.decode()
    assert 'id="id_email_error"' in body and 'aria-invalid="true"' in body


def test_it_can_reach_people_who_have_no_password_yet_with_the_invitable_reset_form(world):
    """Django's reset form skips users without a usable password (people added from the members
    page); `InvitablePasswordResetForm` reaches them, for wiring at /accounts/password_reset/."""
    from django.contrib.auth.forms import PasswordResetForm

    from teams.forms import InvitablePasswordResetForm
    from teams.services import member_add

    member_add(organization=world.acme, email="Invited@acme.test", role="member")
    stock = PasswordResetForm({"email": "invited@acme.test"})
    assert stock.is_valid()
    stock.save(domain_override="testserver")
    assert mail.outbox == []
    ours = InvitablePasswordResetForm({"email": "invited@acme.test"})
    assert ours.is_valid()
    ours.save(domain_override="testserver", email_template_name="registration/password_reset_email.html",
              subject_template_name="registration/password_reset_subject.txt")
    assert [m.to for m in mail.outbox] == [["Invited@acme.test"]]
    ours = InvitablePasswordResetForm({"email": "nobody@acme.test"})
    assert ours.is_valid()
    ours.save(domain_override="testserver")
    assert len(mail.outbox) == 1
