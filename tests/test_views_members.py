"""The members pages: owners and admins add people, change roles and team limits, and remove them.

Only owners touch the owner role, and the last owner can be neither demoted nor removed.
"""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client

from teams.models import Membership
from teams.services import member_add
from tests.web_support import client_for, counting, page_settings, users_by_role

LIST = "/o/acme/members/"


@pytest.fixture(autouse=True)
def _page_settings(settings):
    page_settings(settings)


@pytest.fixture
def users(world):
    return users_by_role(world)


def membership(user, org=None) -> Membership:
    return Membership.objects.get(user=user, **({"organization": org} if org else {}))


def edit_url(m: Membership, org: str = "acme") -> str:
    return f"/o/{org}/members/{m.pk}/"


def remove_url(m: Membership, org: str = "acme") -> str:
    return f"/o/{org}/members/{m.pk}/remove/"


def snapshot() -> list[tuple]:
    rows = Membership.objects.order_by("pk").prefetch_related("teams")
    return [(m.pk, m.user_id, m.organization_id, m.role, sorted(t.pk for t in m.teams.all())) for m in rows]


# --- who gets in ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "status"),
    [("owner", 200), ("admin", 200), ("member", 403), ("viewer", 403), ("outsider", 404), ("anonymous", 302)],
)
def test_it_shows_the_pages_to_owners_and_admins_only(world, users, role, status):
    client = client_for(users[role])
    for url in (LIST, edit_url(membership(world.member))):
        response = client.get(url)
        assert response.status_code == status, url
        if role == "anonymous":
            assert response["Location"] == f"/accounts/login/?next={url}"


@pytest.mark.parametrize(("role", "status"), [("member", 403), ("viewer", 403), ("outsider", 404)])
def test_it_refuses_writes_from_readers_and_outsiders(world, users, role, status):
    before = snapshot()
    client = client_for(users[role])
    target = membership(world.viewer)
    assert client.post(LIST, {"email": "new@acme.test", "role": "member"}).status_code == status
    assert client.post(edit_url(target), {"role": "admin"}).status_code == status
    assert client.post(remove_url(target)).status_code == status
    assert snapshot() == before
    assert not get_user_model().objects.filter(email="new@acme.test").exists()


def test_it_does_not_reach_another_organizations_members(world):
    before = snapshot()
    globex_owner = membership(world.outsider)
    client = client_for(world.owner)
    assert client.get(edit_url(globex_owner)).status_code == 404
    assert client.post(edit_url(globex_owner), {"role": "viewer"}).status_code == 404
    assert client.post(remove_url(globex_owner)).status_code == 404
    assert client_for(world.outsider).post(remove_url(membership(world.member), "globex")).status_code == 404
    assert snapshot() == before


# --- the list -------------------------------------------------------------------------------------


def test_it_lists_members_with_role_and_team_limits(world, users):
    body = client_for(users["admin"]).get(LIST).content.decode()
    for email in ("owner@acme.test", "admin@acme.test", "member@acme.test", "viewer@acme.test"):
        assert email in body
    assert "boss@globex.test" not in body
    rows = {m.group(1): m.group(0) for m in re.finditer(r'<th scope="row">([^<\s]+).*?</tr>', body, re.S)}
    viewer_row = rows["viewer@acme.test"]
    assert "Viewer" in viewer_row and "chatbot" in viewer_row
    assert "Only owners can change or remove an owner." in rows["owner@acme.test"]  # no link for an admin
    assert "invited, no password yet" in rows["admin@acme.test"]


def test_it_lists_many_members_in_a_bounded_number_of_queries(world):
    client = client_for(world.owner)
    client.get(LIST)
    with counting() as few:
        assert client.get(LIST).status_code == 200
    for i in range(15):
        member_add(organization=world.acme, email=f"p{i}@acme.test", role=["member", "viewer", "admin"][i % 3],
                   teams=[world.chatbot, world.search][: i % 3])
    with counting() as many:
        body = client.get(LIST).content.decode()
    assert "p14@acme.test" in body
    assert len(many) == len(few) <= 12


# --- adding -----------------------------------------------------------------------------------------


def test_it_adds_a_new_person_without_a_password_and_emails_them_a_link_to_choose_one(world):
    client = client_for(world.owner)
    response = client.post(LIST, {"email": "New.Person@acme.test", "role": "member", "teams": [world.search.pk]},
                           follow=True)
    assert response.redirect_chain == [(LIST, 302)]
    user = get_user_model().objects.get(email="New.Person@acme.test")
    assert not user.has_usable_password()
    m = membership(user)
    assert m.organization == world.acme and m.role == "member"
    assert list(m.teams.all()) == [world.search]
    assert "no password yet" in response.content.decode()

    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["New.Person@acme.test"] and "Acme" in message.subject
    assert not message.alternatives  # plain text
    link = re.search(r"http://testserver(/accounts/reset/\S+)", message.body).group(1)
    visitor = Client()
    response = visitor.get(link, follow=True)
    assert "Choose a new password" in response.content.decode()
    new_password = {"new_password1": "a-long-pass-29", "new_password2": "a-long-pass-29"}
    response = visitor.post(response.redirect_chain[-1][0], new_password)
    assert response.status_code == 302
    user.refresh_from_db()
    assert user.check_password("a-long-pass-29")


def test_it_adds_someone_who_already_has_an_account_without_touching_their_password(world):
    response = client_for(world.owner).post(LIST, {"email": "boss@globex.test", "role": "viewer"}, follow=True)
    assert "existing password" in response.content.decode()
    assert membership(world.outsider, world.acme).role == "viewer"
    world.outsider.refresh_from_db()
    assert world.outsider.check_password("pw-out-1")
    assert mail.outbox == []


def test_it_refuses_to_add_someone_twice(world):
    before = snapshot()
    response = client_for(world.owner).post(LIST, {"email": "MEMBER@acme.test", "role": "owner"})
    assert "Already a member" in response.content.decode().split('id="id_email_error">')[1]
    assert snapshot() == before


def test_it_shows_errors_next_to_the_fields(world):
    before = snapshot()
    body = client_for(world.owner).post(LIST, {"email": "not-an-email", "role": "boss"}).content.decode()
    assert "valid email" in body.split('id="id_email_error">')[1]
    assert "valid choice" in body.split('id="id_role_error">')[1]
    assert snapshot() == before


def test_it_lets_only_owners_grant_the_owner_role(world, users):
    before = snapshot()
    body = client_for(users["admin"]).get(LIST).content.decode()
    assert '<option value="owner"' not in body
    response = client_for(users["admin"]).post(LIST, {"email": "wannabe@acme.test", "role": "owner"})
    assert "valid choice" in response.content.decode().split('id="id_role_error">')[1]
    assert snapshot() == before
    client_for(world.owner).post(LIST, {"email": "co-owner@acme.test", "role": "owner"})
    assert Membership.objects.get(user__email="co-owner@acme.test").role == "owner"


# --- changing ---------------------------------------------------------------------------------------


def test_it_changes_role_and_team_limits(world, users):
    target = membership(world.viewer)
    response = client_for(users["admin"]).post(edit_url(target), {"role": "admin", "teams": [world.search.pk]})
    assert response.status_code == 302
    target.refresh_from_db()
    assert target.role == "admin" and list(target.teams.all()) == [world.search]
    client_for(users["admin"]).post(edit_url(target), {"role": "member"})
    target.refresh_from_db()
    assert target.role == "member" and list(target.teams.all()) == []


def test_it_lets_only_owners_change_or_remove_an_owner(world, users):
    owner = membership(world.owner)
    before = snapshot()
    admin = client_for(users["admin"])
    assert admin.get(edit_url(owner)).status_code == 403
    assert admin.post(edit_url(owner), {"role": "viewer"}).status_code == 403
    assert admin.post(remove_url(owner)).status_code == 403
    # nor make anyone an owner by editing
    response = admin.post(edit_url(membership(world.member)), {"role": "owner"})
    assert "valid choice" in response.content.decode()
    assert snapshot() == before


def test_it_never_demotes_or_removes_the_last_owner(world):
    owner = membership(world.owner)
    before = snapshot()
    client = client_for(world.owner)
    response = client.post(edit_url(owner), {"role": "admin"})
    assert "at least one owner" in response.content.decode().split('id="id_role_error">')[1]
    response = client.post(remove_url(owner), follow=True)
    assert "at least one owner" in response.content.decode()
    assert snapshot() == before


def test_it_lets_an_owner_step_down_once_there_is_another_owner(world):
    client = client_for(world.owner)
    client.post(edit_url(membership(world.member)), {"role": "owner"})
    assert membership(world.member).role == "owner"
    assert client.post(edit_url(membership(world.owner)), {"role": "admin"}).status_code == 302
    assert membership(world.owner).role == "admin"
    # now an admin, they may no longer touch the remaining owner
    assert client.post(remove_url(membership(world.member))).status_code == 403


def test_it_removes_a_member_who_then_loses_access(world, users):
    target = membership(world.member)
    response = client_for(users["admin"]).post(remove_url(target))
    assert response.status_code == 302 and response["Location"] == LIST
    assert not Membership.objects.filter(pk=target.pk).exists()
    assert get_user_model().objects.filter(pk=world.member.pk).exists()  # the account stays
    assert client_for(world.member).get("/o/acme/teams/").status_code == 404


def test_it_lets_a_manager_leave(world, users):
    response = client_for(users["admin"]).post(remove_url(membership(users["admin"])))
    assert response.status_code == 302 and response["Location"] == "/"
    assert not Membership.objects.filter(user=users["admin"]).exists()


def test_it_removes_by_post_with_the_csrf_token_only(world):
    target = membership(world.member)
    assert client_for(world.owner).get(remove_url(target)).status_code == 405
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.owner)
    assert client.post(remove_url(target)).status_code == 403
    assert Membership.objects.filter(pk=target.pk).exists()


def test_it_keeps_an_admin_who_sees_some_teams_within_them(world):
    limited = member_add(organization=world.acme, email="lim@acme.test", role="admin", teams=[world.search]).user
    client = client_for(limited)
    body = client.get(LIST).content.decode()
    assert f'value="{world.search.pk}"' in body and f'value="{world.chatbot.pk}"' not in body
    before = snapshot()
    # may not hand out every team, nor a team they do not see
    response = client.post(LIST, {"email": "wide@acme.test", "role": "member"})
    assert "Pick at least one team" in response.content.decode()
    client.post(LIST, {"email": "other@acme.test", "role": "member", "teams": [world.chatbot.pk]})
    # may not change someone who sees more than they do
    assert client.post(edit_url(membership(world.member)), {"role": "viewer"}).status_code == 403
    assert client.post(remove_url(membership(world.viewer)), {}).status_code == 403  # viewer sees chatbot
    assert snapshot() == before
    client.post(LIST, {"email": "narrow@acme.test", "role": "viewer", "teams": [world.search.pk]})
    narrow = Membership.objects.get(user__email="narrow@acme.test")
    assert client.post(edit_url(narrow), {"role": "member", "teams": [world.search.pk]}).status_code == 302


def test_it_sends_a_new_link_to_someone_without_a_password(world):
    invited = member_add(organization=world.acme, email="late@acme.test", role="member")
    client = client_for(world.owner)
    assert "No password yet" in client.get(edit_url(invited)).content.decode()
    response = client.post(f"/o/acme/members/{invited.pk}/invite/", follow=True)
    assert "new link" in response.content.decode()
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["late@acme.test"]
    # someone with a password gets none
    client.post(f"/o/acme/members/{membership(world.member).pk}/invite/")
    assert len(mail.outbox) == 1
