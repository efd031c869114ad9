"""The tokens page: owners and admins create, list and revoke their organization's API tokens."""

from __future__ import annotations

import pytest
from django.test import Client

from teams.access import authenticate_token
from teams.models import ApiToken
from teams.services import member_add, token_create
from tests.conftest import api
from tests.web_support import client_for, counting, page_settings, users_by_role

URL = "/o/acme/tokens/"


@pytest.fixture(autouse=True)
def _page_settings(settings):
    page_settings(settings)


@pytest.fixture
def users(world):
    return users_by_role(world)


def revoke_url(token: ApiToken, org: str = "acme") -> str:
    return f"/o/{org}/tokens/{token.pk}/revoke/"


def snapshot() -> list[tuple]:
    return list(ApiToken.objects.order_by("pk").values_list("pk", "name", "revoked_at", "team_id", "digest"))


@pytest.mark.parametrize(
    ("role", "status"),
    [("owner", 200), ("admin", 200), ("member", 403), ("viewer", 403), ("outsider", 404), ("anonymous", 302)],
)
def test_it_shows_the_page_to_owners_and_admins_only(world, users, role, status):
    response = client_for(users[role]).get(URL)
    assert response.status_code == status
    if role == "anonymous":
        assert response["Location"] == f"/accounts/login/?next={URL}"


def test_it_lists_this_organizations_tokens_with_prefix_name_scopes_team_and_state(world, users):
    token_revoke_target = world.tokens["read"]
    client = client_for(world.owner)
    client.post(revoke_url(token_revoke_target))
    body = client.get(URL).content.decode()
    for name in ("ingest", "read", "both", "pinned"):
        assert world.tokens[name].display_prefix in body
    assert world.tokens["globex_token"].display_prefix not in body
    assert "chatbot" in body  # the pinned token's team
    assert "revoked" in body
    for name in ("ingest", "read", "both", "pinned"):  # the secrets are nowhere
        assert getattr(world, name) not in body
        assert world.tokens[name].digest not in body


def test_it_creates_a_token_and_shows_its_secret_once(world, users):
    client = client_for(users["admin"])
    response = client.post(URL, {"name": "ci runner", "can_ingest": "on", "can_read": "on", "team": ""})
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    token = ApiToken.objects.get(name="ci runner")
    body = response.content.decode()
    secret = body.split('id="new-token"')[1].split('value="')[1].split('"')[0]
    assert secret.startswith(f"lc_{token.lookup}_")
    assert token.digest == ApiToken.hash_secret(secret)
    assert secret not in str(list(ApiToken.objects.filter(pk=token.pk).values()))  # only the digest is kept
    assert token.organization == world.acme and token.team is None
    assert token.can_ingest and token.can_read
    assert token.created_by == users["admin"]
    assert authenticate_token(secret) == token
    assert f"Bearer {secret}" in body  # the curl line to send a first event

    again = client.get(URL).content.decode()
    assert secret not in again
    assert token.display_prefix in again


def test_it_pins_a_token_to_a_team_of_this_organization(world):
    client = client_for(world.owner)
    client.post(URL, {"name": "chatbot only", "can_ingest": "on", "team": world.chatbot.pk})
    token = ApiToken.objects.get(name="chatbot only")
    assert token.team == world.chatbot
    assert token.scopes == ["ingest"]


def test_it_refuses_a_team_of_another_organization(world):
    before = snapshot()
    data = {"name": "sneaky", "can_ingest": "on", "team": world.globex_chatbot.pk}
    response = client_for(world.owner).post(URL, data)
    assert response.status_code == 200
    assert 'id="id_team_error"' in response.content.decode()
    assert snapshot() == before


def test_it_needs_a_name_and_a_scope(world):
    before = snapshot()
    response = client_for(world.owner).post(URL, {"name": "", "team": ""})
    body = response.content.decode()
    assert 'id="id_name_error"' in body and 'aria-describedby="id_name_helptext id_name_error"' in body
    assert "Give the token at least one scope." in body
    assert 'role="alert"' in body
    assert snapshot() == before


def test_it_revokes_a_token(world):
    target = world.tokens["both"]
    response = client_for(world.owner).post(revoke_url(target), follow=True)
    assert response.redirect_chain == [(URL, 302)]
    target.refresh_from_db()
    assert target.revoked_at is not None
    assert "revoked" in response.content.decode()
    assert api(world.both).get("/api/v1/budget/check").status_code == 401


def test_it_revokes_by_post_only(world):
    response = client_for(world.owner).get(revoke_url(world.tokens["both"]))
    assert response.status_code == 405
    assert ApiToken.objects.get(pk=world.tokens["both"].pk).revoked_at is None


def test_it_needs_the_csrf_token_to_revoke(world):
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.owner)
    assert client.post(revoke_url(world.tokens["both"])).status_code == 403
    assert ApiToken.objects.get(pk=world.tokens["both"].pk).revoked_at is None


def test_it_does_not_revoke_another_organizations_token(world, users):
    before = snapshot()
    # acme's owner naming globex's token under acme: not found.
    assert client_for(world.owner).post(revoke_url(world.tokens["globex_token"])).status_code == 404
    # globex's owner naming acme's token under their own organization: not found either.
    assert client_for(world.outsider).post(revoke_url(world.tokens["both"], "globex")).status_code == 404
    assert snapshot() == before


@pytest.mark.parametrize(("role", "status"), [("member", 403), ("viewer", 403), ("outsider", 404)])
def test_it_refuses_writes_from_readers_and_outsiders(world, users, role, status):
    before = snapshot()
    client = client_for(users[role])
    assert client.post(URL, {"name": "x", "can_ingest": "on"}).status_code == status
    assert client.post(revoke_url(world.tokens["both"])).status_code == status
    assert snapshot() == before


def test_it_sends_anonymous_writers_to_log_in(world):
    before = snapshot()
    response = Client().post(revoke_url(world.tokens["both"]))
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert snapshot() == before


def test_it_limits_an_admin_who_sees_some_teams_to_tokens_of_those_teams(world):
    limited = member_add(organization=world.acme, email="lim@acme.test", role="admin", teams=[world.search]).user
    search_token, _ = token_create(organization=world.acme, team=world.search, name="search-token")
    client = client_for(limited)
    body = client.get(URL).content.decode()
    assert search_token.display_prefix in body
    assert world.tokens["pinned"].display_prefix not in body  # pinned to chatbot
    assert world.tokens["both"].display_prefix not in body  # every team
    assert client.post(revoke_url(world.tokens["both"])).status_code == 404
    # Their tokens are pinned to a team they see.
    response = client.post(URL, {"name": "wide", "can_ingest": "on", "team": ""})
    assert 'id="id_team_error"' in response.content.decode()
    response = client.post(URL, {"name": "chatbot", "can_ingest": "on", "team": world.chatbot.pk})
    assert 'id="id_team_error"' in response.content.decode()
    assert not ApiToken.objects.filter(name__in=["wide", "chatbot"]).exists()
    client.post(URL, {"name": "mine", "can_ingest": "on", "team": world.search.pk})
    assert ApiToken.objects.get(name="mine").team == world.search


def test_it_explains_how_to_start_when_there_are_no_tokens(world):
    ApiToken.objects.filter(organization=world.acme).delete()
    body = client_for(world.owner).get(URL).content.decode()
    assert "No tokens yet" in body
    assert "curl -s -X POST http://testserver/api/v1/metrics/track" in body


def test_it_lists_many_tokens_in_a_bounded_number_of_queries(world):
    client = client_for(world.owner)
    client.get(URL)  # warm up (session, content types)
    with counting() as few:
        assert client.get(URL).status_code == 200
    for i in range(15):
        token_create(organization=world.acme, team=[world.chatbot, world.search, None][i % 3], name=f"t{i}",
                     created_by=world.owner)
    with counting() as many:
        body = client.get(URL).content.decode()
    assert body.count("<tr") == ApiToken.objects.filter(organization=world.acme).count() + 1
    assert len(many) == len(few) <= 10
