"""The management commands an operator uses to set up tenants, teams, tokens and people."""

from __future__ import annotations

import re
import stat
from io import StringIO

import pytest
from django.contrib.auth import authenticate as _authenticate
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import RequestFactory

from metrics.models import UsageEvent
from teams.models import ApiToken, Membership, Organization, Team
from tests.conftest import api, event

TOKEN_LINE = re.compile(r"^lc_[0-9a-f]{8}_[A-Za-z0-9_-]{20,}$")


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def authenticate(**credentials):
    """Log in as the login page does (django-axes needs the request)."""
    return _authenticate(RequestFactory().post("/accounts/login/"), **credentials)


def run(*args, **options) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


def new_token(*args) -> str:
    output = run("create_token", *args)
    last = output.rstrip("\n").splitlines()[-1]
    assert TOKEN_LINE.match(last), f"last line is not a bare token: {last!r}"
    return last


def post_event(token: str, **overrides):
    return api(token).post("/api/v1/metrics/track", event(**overrides), format="json")


# --- create_org / create_team ------------------------------------------------------------------------------


def test_it_creates_an_organization_with_its_default_team(db):
    output = run("create_org", "initech", "--name", "Initech Corp")
    organization = Organization.objects.get(slug="initech")
    assert organization.name == "Initech Corp"
    assert "initech" in output
    assert Team.objects.filter(organization=organization, is_default=True).count() == 1


def test_it_names_an_organization_after_its_slug_when_no_name_is_given(db):
    run("create_org", "hooli")
    assert Organization.objects.get(slug="hooli").name == "hooli"


def test_it_refuses_a_duplicate_organization(db):
    run("create_org", "initech")
    with pytest.raises(CommandError, match=r"initech.*already exists"):
        run("create_org", "initech")
    assert Organization.objects.filter(slug="initech").count() == 1


def test_it_refuses_an_organization_slug_that_is_not_a_slug(db):
    # The slug names the tenant in URLs; spaces or slashes would make it unreachable.
    with pytest.raises(CommandError):
        run("create_org", "not a/slug")
    assert not Organization.objects.filter(slug="not a/slug").exists()


def test_it_creates_a_team_in_an_organization(db):
    run("create_org", "initech")
    output = run("create_team", "initech", "tps-reports", "--name", "TPS Reports")
    team = Team.objects.get(organization__slug="initech", alias="tps-reports")
    assert team.name == "TPS Reports"
    assert "tps-reports" in output


def test_it_refuses_a_team_for_an_unknown_organization(db):
    with pytest.raises(CommandError, match="nowhere"):
        run("create_team", "nowhere", "chatbot")
    assert not Team.objects.filter(alias="chatbot").exists()


def test_it_refuses_a_duplicate_team_and_an_invalid_alias(world):
    with pytest.raises(CommandError, match=r"chatbot.*already exists"):
        run("create_team", "acme", "chatbot")
    with pytest.raises(CommandError, match="letters, digits"):
        run("create_team", "acme", "bad alias!")
    assert not Team.objects.filter(alias="bad alias!").exists()


# --- create_token -----------------------------------------------------------------------------------------


def test_it_prints_the_token_alone_on_the_last_line(world):
    output = run("create_token", "acme", "--scopes", "ingest")
    lines = output.rstrip("\n").splitlines()
    assert TOKEN_LINE.match(lines[-1])
    token = ApiToken.objects.get(digest=ApiToken.hash_secret(lines[-1]))
    assert token.organization == world.acme
    assert token.display_prefix in output  # the first line says which token was made
    assert lines[-1] not in "\n".join(lines[:-1])  # the secret is printed once


def test_it_creates_an_ingest_only_token_that_cannot_read(world):
    token = new_token("acme", "--scopes", "ingest")
    assert post_event(token).status_code == 200
    assert api(token).get("/api/v1/dashboard/metrics").status_code == 403
    assert api(token).get("/api/v1/requests/recent").status_code == 403


def test_it_creates_an_ingest_token_when_no_scope_is_given(world):
    token = new_token("acme")
    assert post_event(token).status_code == 200
    assert api(token).get("/api/v1/dashboard/metrics").status_code == 403


def test_it_creates_a_read_and_ingest_token_that_can_do_both(world):
    token = new_token("acme", "--scopes", "read,ingest")
    assert post_event(token, prompt_tokens=1000, output_tokens=0).status_code == 200
    response = api(token).get("/api/v1/dashboard/metrics")
    assert response.status_code == 200, response.content
    assert response.json()["total_requests"] == 1


def test_it_creates_a_read_only_token_that_cannot_ingest(world):
    token = new_token("acme", "--scopes", "read")
    assert post_event(token).status_code == 403
    assert api(token).get("/api/v1/dashboard/metrics").status_code == 200


def test_it_pins_a_token_to_a_team(world):
    token = new_token("acme", "--team", "search", "--scopes", "ingest, read")
    response = post_event(token, team_alias="chatbot")
    assert response.status_code == 200, response.content
    stored = UsageEvent.objects.get(request_id=response.json()["request_id"])
    assert stored.team == world.search  # the pinned team wins over what the event says
    post_event(world.ingest, team_alias="chatbot")  # another team's event, via an unpinned token
    dashboard = api(token).get("/api/v1/dashboard/metrics").json()
    assert dashboard["total_requests"] == 1  # a pinned token reads its team only


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nowhere",), "nowhere"),
        (("acme", "--team", "no-such-team"), "no-such-team"),
        (("acme", "--scopes", "ingest,write"), "scopes"),
        (("acme", "--scopes", "admin"), "scopes"),
        (("acme", "--scopes", ","), "scopes"),
    ],
)
def test_it_refuses_a_token_it_cannot_make(world, args, message):
    before = ApiToken.objects.count()
    with pytest.raises(CommandError, match=message):
        run("create_token", *args)
    assert ApiToken.objects.count() == before


def test_it_does_not_pin_a_token_to_another_organizations_team(world):
    Team.objects.create(organization=world.globex, alias="globex-only")
    with pytest.raises(CommandError, match="globex-only"):
        run("create_token", "acme", "--team", "globex-only")


# --- add_member ---------------------------------------------------------------------------------------------


def test_it_adds_a_new_user_as_a_member_with_a_working_password(world):
    output = run("add_member", "acme", "new@acme.test", "--role", "admin", "--password", "s3cret-pass")
    user = get_user_model().objects.get(email="new@acme.test")
    membership = Membership.objects.get(user=user, organization=world.acme)
    assert membership.role == "admin"
    assert membership.teams.count() == 0  # sees every team
    assert authenticate(username="new@acme.test", password="s3cret-pass") == user
    assert authenticate(username="new@acme.test", password="wrong") is None
    assert "new@acme.test" in output and "admin" in output


def test_it_updates_the_role_of_an_existing_member(world):
    users_before = get_user_model().objects.count()
    run("add_member", "acme", "member@acme.test", "--role", "owner")
    assert get_user_model().objects.count() == users_before
    memberships = Membership.objects.filter(user=world.member, organization=world.acme)
    assert [m.role for m in memberships] == ["owner"]


def test_it_finds_an_existing_user_whatever_the_case_of_the_email(world):
    run("add_member", "acme", "Member@ACME.test", "--role", "viewer")
    assert Membership.objects.get(user=world.member, organization=world.acme).role == "viewer"
    assert get_user_model().objects.filter(email__iexact="member@acme.test").count() == 1


def test_it_sets_a_new_password_for_an_existing_user(world):
    run("add_member", "acme", "member@acme.test", "--role", "member", "--password", "brand-new-pw")
    assert authenticate(username="member@acme.test", password="brand-new-pw") == world.member
    assert authenticate(username="member@acme.test", password="pw-member-1") is None


def test_it_keeps_the_password_of_an_existing_user_when_none_is_given(world):
    run("add_member", "acme", "member@acme.test", "--role", "admin")
    assert authenticate(username="member@acme.test", password="pw-member-1") == world.member


def test_it_adds_an_existing_user_to_a_second_organization(world):
    run("add_member", "globex", "member@acme.test", "--role", "viewer")
    roles = dict(Membership.objects.filter(user=world.member).values_list("organization__slug", "role"))
    assert roles == {"acme": "member", "globex": "viewer"}


@pytest.mark.parametrize("role", ["owner", "admin", "member", "viewer"])
def test_it_accepts_every_role(world, role):
    run("add_member", "acme", f"{role}-x@acme.test", "--role", role)
    assert Membership.objects.get(user__email=f"{role}-x@acme.test").role == role


def test_it_limits_a_member_to_the_teams_named(world):
    run("add_member", "acme", "limited@acme.test", "--role", "viewer", "--team", "chatbot", "--team", "search")
    membership = Membership.objects.get(user__email="limited@acme.test")
    assert set(membership.teams.values_list("alias", flat=True)) == {"chatbot", "search"}
    # Named again with one team: now limited to that one.
    run("add_member", "acme", "limited@acme.test", "--role", "viewer", "--team", "search")
    assert list(membership.teams.values_list("alias", flat=True)) == ["search"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nowhere", "x@example.test", "--role", "member"), "nowhere"),
        (("acme", "x@example.test", "--role", "member", "--team", "no-such-team"), "no-such-team"),
        (("globex", "x@example.test", "--role", "member", "--team", "search"), "search"),  # acme's team
        (("acme", "x@example.test", "--role", "emperor"), "emperor"),
        (("acme", "x@example.test"), "role"),
    ],
)
def test_it_refuses_a_member_it_cannot_add(world, args, message):
    with pytest.raises(CommandError, match=message):
        run("add_member", *args)
    assert not get_user_model().objects.filter(email="x@example.test").exists()


# --- bootstrap_demo -----------------------------------------------------------------------------------------


def parse_demo(output: str) -> dict[str, str]:
    login = re.search(r"Admin login:\s+(\S+)\s+user (\S+)\s+password (\S+)", output)
    token = re.search(r"Ingest token: (\S+)", output)
    assert login and token, output
    return {"url": login.group(1), "user": login.group(2), "password": login.group(3), "token": token.group(1)}


def test_it_bootstraps_a_demo_once_and_repeats_it_on_later_runs(db, settings, tmp_path):
    settings.VAR_DIR = tmp_path / "var"
    first_output = run("bootstrap_demo", "--base-url", "http://127.0.0.1:9999")
    first = parse_demo(first_output)

    organization = Organization.objects.get(slug="demo")
    admin = get_user_model().objects.get(username=first["user"])
    assert admin.is_superuser and admin.is_staff
    assert authenticate(username=first["user"], password=first["password"]) == admin
    assert TOKEN_LINE.match(first["token"])
    assert ApiToken.objects.get(digest=ApiToken.hash_secret(first["token"])).organization == organization
    assert first["url"] == "http://127.0.0.1:9999/admin/"
    assert "curl -s -X POST http://127.0.0.1:9999/api/v1/metrics/track" in first_output
    assert f"Bearer {first['token']}" in first_output

    credentials = tmp_path / "var" / "demo-credentials.txt"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600  # a password file only its owner can read

    counts = (Organization.objects.count(), ApiToken.objects.count(), get_user_model().objects.count())
    second_output = run("bootstrap_demo", "--base-url", "http://127.0.0.1:9999")
    assert parse_demo(second_output) == first  # the same login and token, shown again
    assert "curl -s -X POST http://127.0.0.1:9999/api/v1/metrics/track" in second_output
    assert (Organization.objects.count(), ApiToken.objects.count(), get_user_model().objects.count()) == counts
    assert authenticate(username=first["user"], password=first["password"]) == admin


def test_it_bootstraps_a_demo_token_that_works_with_the_printed_curl_event(db, settings, tmp_path):
    settings.VAR_DIR = tmp_path
    output = run("bootstrap_demo")
    token = parse_demo(output)["token"]
    body = re.search(r"-d '(\{.*\})'", output).group(1)
    response = api(token).post("/api/v1/metrics/track", data=body, content_type="application/json")
    assert response.status_code == 200, response.content
    assert api(token).get("/api/v1/dashboard/metrics").json()["total_requests"] == 1


def test_it_says_so_when_the_demo_credentials_file_is_gone(db, settings, tmp_path):
    settings.VAR_DIR = tmp_path
    run("bootstrap_demo")
    (tmp_path / "demo-credentials.txt").unlink()
    tokens = ApiToken.objects.count()
    output = run("bootstrap_demo")
    assert "credentials file is gone" in output
    assert ApiToken.objects.count() == tokens
    assert Organization.objects.filter(slug="demo").count() == 1
