"""API tokens and the access scope: secrets are never stored, scopes and tenants are enforced."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import AnonymousUser
from django.db import connection
from django.http import Http404
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from metrics.models import UsageEvent
from teams.access import AccessScope, authenticate_token, scope_for_token, scope_for_user
from teams.models import ApiToken, Membership
from teams.services import member_add, token_revoke
from tests.conftest import api, event


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def post_event(token: str, **overrides):
    return api(token).post("/api/v1/metrics/track", event(**overrides), format="json")


def dashboard(token: str, **params):
    return api(token).get("/api/v1/dashboard/metrics", params)


# --- storage ---------------------------------------------------------------------------------------------


def test_it_stores_tokens_hashed_and_never_the_secret(world):
    for name, token in world.tokens.items():
        raw = getattr(world, name)
        secret = raw.split("_", 2)[2]
        row = ApiToken.objects.filter(pk=token.pk).values()[0]
        for column, value in row.items():
            assert raw not in str(value), f"raw token found in ApiToken.{column}"
            assert secret not in str(value), f"token secret found in ApiToken.{column}"
        assert row["digest"] == ApiToken.hash_secret(raw)
        assert len(row["digest"]) == 64


def test_it_shows_a_display_prefix_that_identifies_a_token_without_the_secret(world):
    token = world.tokens["ingest"]
    assert world.ingest.startswith(token.display_prefix)
    assert token.display_prefix.startswith("lc_")
    assert len(token.display_prefix) < len(world.ingest) // 2
    assert token.display_prefix in str(token)
    assert world.ingest not in str(token)


def test_it_rejects_a_token_with_the_right_prefix_but_a_wrong_secret(world):
    forged = world.tokens["both"].display_prefix + "_" + "A" * 32
    assert authenticate_token(forged) is None
    assert post_event(forged).status_code == 401


@pytest.mark.parametrize("header", ["", "Bearer", "Token lc_x_y", "Bearer lc_nope_nope", "Bearer a b"])
def test_it_answers_401_without_a_valid_token(world, header):
    client = api()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)
    assert client.post("/api/v1/metrics/track", event(), format="json").status_code == 401
    assert client.get("/api/v1/dashboard/metrics").status_code == 401
    assert UsageEvent.objects.count() == 0


# --- revocation and scopes ----------------------------------------------------------------------------------


def test_it_answers_401_to_a_revoked_token(world):
    assert post_event(world.both).status_code == 200
    token_revoke(token=world.tokens["both"])
    assert post_event(world.both).status_code == 401
    assert dashboard(world.both).status_code == 401
    assert UsageEvent.objects.count() == 1


def test_it_answers_403_to_a_token_without_the_scope(world):
    assert dashboard(world.ingest).status_code == 403
    assert api(world.ingest).get("/api/v1/requests/recent").status_code == 403
    response = post_event(world.read)
    assert response.status_code == 403
    assert "ingest" in response.json()["message"]
    assert UsageEvent.objects.count() == 0


def test_it_lets_a_token_use_the_scopes_it_has(world):
    assert post_event(world.ingest).status_code == 200
    assert dashboard(world.read).status_code == 200
    assert post_event(world.both).status_code == 200
    assert dashboard(world.both).status_code == 200


# --- last_used_at ----------------------------------------------------------------------------------------


def test_it_records_when_a_token_was_last_used(world):
    token = world.tokens["ingest"]
    assert token.last_used_at is None
    before = timezone.now()
    assert post_event(world.ingest).status_code == 200
    token.refresh_from_db()
    assert token.last_used_at is not None
    assert before <= token.last_used_at <= timezone.now()


def test_it_does_not_rewrite_last_used_at_on_every_request(world):
    token = world.tokens["ingest"]
    post_event(world.ingest)
    token.refresh_from_db()
    first = token.last_used_at
    with CaptureQueriesContext(connection) as queries:
        for _ in range(3):
            assert post_event(world.ingest).status_code == 200
    token.refresh_from_db()
    assert token.last_used_at == first
    token_updates = [q["sql"] for q in queries if q["sql"].startswith("UPDATE") and "apitoken" in q["sql"].lower()]
    assert token_updates == []


def test_it_stamps_last_used_at_again_after_a_minute(world):
    token = world.tokens["ingest"]
    old = timezone.now() - timedelta(seconds=61)
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=old)
    assert post_event(world.ingest).status_code == 200
    token.refresh_from_db()
    assert token.last_used_at > old + timedelta(seconds=60)


# --- tenants ---------------------------------------------------------------------------------------------


def test_it_never_shows_one_organizations_events_to_another(world):
    for alias in ("chatbot", "search"):
        assert post_event(world.both, team_alias=alias).status_code == 200
    assert post_event(world.globex_token, team_alias="chatbot", model="totally-made-up-model").status_code == 200

    globex = dashboard(world.globex_token).json()
    assert globex["total_requests"] == 1
    assert set(globex["model_usage"]) == {"totally-made-up-model"}
    recent = api(world.globex_token).get("/api/v1/requests/recent").json()
    assert [row["model"] for row in recent] == ["totally-made-up-model"]
    # Naming acme's team alias does not reach across: globex's own "chatbot" is meant.
    assert dashboard(world.globex_token, team_alias="chatbot").json()["total_requests"] == 1
    assert dashboard(world.globex_token, team_alias="search").status_code == 404

    acme = dashboard(world.both).json()
    assert acme["total_requests"] == 2


def test_it_writes_a_globex_tokens_events_to_globex_only(world):
    response = post_event(world.globex_token, team_alias="search")  # "search" exists only in acme
    assert response.status_code == 200
    stored = UsageEvent.objects.get(request_id=response.json()["request_id"])
    assert stored.organization == world.globex
    assert stored.team.organization == world.globex
    assert stored.team_id != world.search.pk


def test_it_keeps_request_ids_apart_between_organizations(world):
    assert post_event(world.both, request_id="shared-id").json()["duplicate"] is False
    assert post_event(world.globex_token, request_id="shared-id").json()["duplicate"] is False
    assert UsageEvent.objects.filter(request_id="shared-id").count() == 2


def test_it_filters_any_query_to_the_tokens_organization(world):
    post_event(world.both)
    post_event(world.globex_token)
    scope = scope_for_token(world.tokens["globex_token"])
    events = scope.filter(UsageEvent.objects.all())
    assert [e.organization_id for e in events] == [world.globex.pk]
    assert set(scope.teams()) == set(world.globex.teams.all())


def test_it_answers_404_for_another_organizations_team(world):
    scope = scope_for_token(world.tokens["globex_token"])
    with pytest.raises(Http404):
        scope.team("search")  # acme's
    assert scope.team("chatbot") == world.globex_chatbot  # globex's own, never acme's


def test_it_limits_a_pinned_token_to_its_team(world):
    post_event(world.both, team_alias="search")
    assert post_event(world.pinned, team_alias="search").status_code == 200  # recorded under chatbot
    scope = scope_for_token(world.tokens["pinned"])
    assert scope.team_ids == frozenset([world.chatbot.pk])
    with pytest.raises(Http404):
        scope.team("search")
    assert {e.team_id for e in scope.filter(UsageEvent.objects.all())} == {world.chatbot.pk}
    assert dashboard(world.pinned).json()["total_requests"] == 1
    assert dashboard(world.pinned, team_alias="search").status_code == 404


# --- people ------------------------------------------------------------------------------------------------


def test_it_gives_a_member_a_scope_of_their_organization(world):
    scope = scope_for_user(world.member, "acme")
    assert isinstance(scope, AccessScope)
    assert scope.organization == world.acme
    assert scope.team_ids is None
    assert scope.role == "member" and scope.can_manage is False
    assert scope_for_user(world.owner, "acme").can_manage is True


@pytest.mark.parametrize("who", ["outsider", "anonymous"])
def test_it_answers_404_to_someone_outside_the_organization(world, who):
    user = world.outsider if who == "outsider" else AnonymousUser()
    with pytest.raises(Http404):
        scope_for_user(user, "acme")
    with pytest.raises(Http404):
        scope_for_user(world.member, "no-such-org")  # not existing looks the same as not yours


def test_it_shows_a_team_limited_member_only_their_teams(world):
    post_event(world.both, team_alias="chatbot")
    post_event(world.both, team_alias="search")
    scope = scope_for_user(world.viewer, "acme")  # viewer is limited to chatbot
    assert scope.team_ids == frozenset([world.chatbot.pk])
    assert list(scope.teams()) == [world.chatbot]
    with pytest.raises(Http404):
        scope.team("search")
    assert [e.team_id for e in scope.filter(UsageEvent.objects.all())] == [world.chatbot.pk]


def test_it_widens_a_member_to_every_team_when_the_limit_is_removed(world):
    member_add(organization=world.acme, email="viewer@acme.test", role="viewer", teams=[])
    assert scope_for_user(world.viewer, "acme").team_ids is None
    assert Membership.objects.filter(user=world.viewer).count() == 1
