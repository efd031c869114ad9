"""The Notifications page, the channel admins and `create_webhook`: owners and admins manage channels,
members are refused, outsiders cannot tell another organization's channels exist; secrets are shown
once and never again."""

from __future__ import annotations

import hashlib
import hmac
import json
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client

from billing.models import NotificationChannel, NotificationDelivery
from billing.notifications import channel_create
from teams.services import member_add
from tests.http_receiver import http_receiver
from tests.web_support import client_for, page_settings, users_by_role

PAGE = "/o/acme/notifications/"


@pytest.fixture(autouse=True)
def _page_settings(settings):
    page_settings(settings)


@pytest.fixture
def channel(world):
    channel, _ = channel_create(organization=world.acme, kind="webhook", url="https://hooks.acme.test/llmcost")
    return channel


@pytest.mark.parametrize(
    ("role", "status"),
    [("owner", 200), ("admin", 200), ("member", 403), ("viewer", 403), ("outsider", 404), ("anonymous", 302)],
)
def test_the_page_is_for_owners_and_admins(world, channel, role, status):
    response = client_for(users_by_role(world)[role]).get(PAGE)
    assert response.status_code == status
    body = response.content.decode()
    if status == 200:
        assert (
            "https://hooks.acme.test/llmcost" in body
            and "Send test" in body
            and 'href="/o/acme/notifications/"' in body
        )
    else:
        assert "hooks.acme.test" not in body


def test_a_manager_of_some_teams_only_is_refused(world):
    limited = member_add(organization=world.acme, email="lead@acme.test", role="admin", teams=[world.chatbot]).user
    assert client_for(limited).get(PAGE).status_code == 403
    assert 'href="/o/acme/notifications/"' not in client_for(limited).get("/o/acme/teams/").content.decode()


def test_members_see_no_nav_link(world):
    assert 'href="/o/acme/notifications/"' not in client_for(world.member).get("/o/acme/teams/").content.decode()


def test_an_outsider_sees_only_their_own_channels_and_cannot_touch_ours(world, channel):
    channel_create(organization=world.globex, kind="webhook", url="https://hooks.globex.test/x")
    outsider = client_for(world.outsider)
    body = outsider.get("/o/globex/notifications/").content.decode()
    assert "hooks.globex.test" in body and "hooks.acme.test" not in body
    for action in ("toggle", "delete", "test"):
        assert outsider.post(f"/o/acme/notifications/{channel.pk}/{action}/").status_code == 404
        assert outsider.post(f"/o/globex/notifications/{channel.pk}/{action}/").status_code == 404
    member = client_for(world.member)
    assert member.post(f"/o/acme/notifications/{channel.pk}/delete/").status_code == 403
    channel.refresh_from_db()
    assert channel.is_active


def test_an_owner_adds_a_webhook_sees_its_secret_once_and_sends_a_test(world):
    owner = client_for(world.owner)
    with http_receiver(500) as receiver:
        response = owner.post(
            PAGE,
            {
                "kind": "webhook",
                "name": "ops",
                "url": receiver.url,
                "teams": [world.chatbot.pk],
                "event_types": ["budget.threshold", "budget.forecast"],
            },
        )
        assert response.status_code == 200
        assert response["Cache-Control"] == "no-store"
        channel = NotificationChannel.objects.get(name="ops")
        assert channel.secret in response.content.decode()
        assert list(channel.teams.all()) == [world.chatbot]
        assert channel.event_types == ["budget.threshold", "budget.forecast"]
        assert channel.secret not in owner.get(PAGE).content.decode()  # never again

        response = owner.post(f"/o/acme/notifications/{channel.pk}/test/", follow=True)  # 500: failed, not retried
        assert "Test to “ops” failed: HTTP 500" in response.content.decode()
        response = owner.post(f"/o/acme/notifications/{channel.pk}/test/", follow=True)
        (_, second) = receiver.wait_for(2)
    assert "Test delivered" in response.content.decode()
    expected = "sha256=" + hmac.new(channel.secret.encode(), second.body, hashlib.sha256).hexdigest()
    assert second.headers["x-llmcost-signature"] == expected
    assert json.loads(second.body)["test"] is True
    body = response.content.decode()
    assert body.count('data-delivery="') == 2
    assert "delivered" in body and "failed" in body and "HTTP 500" in body
    assert list(NotificationDelivery.objects.order_by("id").values_list("status", flat=True)) == ["failed", "delivered"]
    assert channel.secret not in body


def test_an_admin_adds_a_slack_channel_and_sees_its_url_masked(world):
    admin = client_for(users_by_role(world)["admin"])
    url = "https://hooks.slack.com/services/T000/B000/abcdefsecretpart9xyz"
    response = admin.post(PAGE, {"kind": "slack", "url": url})
    assert response.status_code == 200
    assert NotificationChannel.objects.get().kind == "slack"
    body = admin.get(PAGE).content.decode()
    assert "hooks.slack.com/…9xyz" in body and "secretpart" not in body


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"kind": "webhook", "url": "ftp://example.com/x"}, "url"),
        ({"kind": "webhook", "url": "file:///etc/passwd"}, "url"),
        ({"kind": "slack", "url": "not a url"}, "url"),
        ({"kind": "webhook", "url": ""}, "url"),
        ({"kind": "email", "emails": "not-an-address"}, "emails"),
        ({"kind": "email", "emails": ""}, "emails"),
        ({"kind": "pigeon", "url": "https://x.test/"}, "kind"),
        ({"kind": "webhook", "url": "https://x.test/", "event_types": ["budget.nonsense"]}, "event_types"),
    ],
)
def test_it_refuses_a_bad_channel_with_a_field_error(world, data, field):
    response = client_for(world.owner).post(PAGE, data)
    assert response.status_code == 400
    assert field in response.context["form"].errors
    assert not NotificationChannel.objects.exists()


def test_it_refuses_another_organizations_team(world):
    response = client_for(world.owner).post(
        PAGE, {"kind": "webhook", "url": "https://x.test/", "teams": [world.globex_chatbot.pk]}
    )
    assert response.status_code == 400 and "teams" in response.context["form"].errors


def test_an_owner_pauses_and_deletes_a_channel(world, channel):
    owner = client_for(world.owner)
    assert owner.post(f"/o/acme/notifications/{channel.pk}/toggle/").status_code == 302
    channel.refresh_from_db()
    assert not channel.is_active
    response = owner.post(f"/o/acme/notifications/{channel.pk}/test/", follow=True)
    assert "is paused" in response.content.decode() and not NotificationDelivery.objects.exists()
    assert owner.get(f"/o/acme/notifications/{channel.pk}/delete/").status_code == 405
    assert owner.post(f"/o/acme/notifications/{channel.pk}/delete/").status_code == 302
    assert not NotificationChannel.objects.exists()


# --- create_webhook ---------------------------------------------------------------------------------


def run(*args) -> list[str]:
    out = StringIO()
    call_command("create_webhook", *args, stdout=out)
    return out.getvalue().splitlines()


def test_create_webhook_prints_the_secret_alone_on_its_last_line(world):
    lines = run("acme", "https://hooks.acme.test/in", "--team", "chatbot", "search",
                "--events", "budget.threshold,spend.anomaly")  # fmt: skip
    channel = NotificationChannel.objects.get()
    assert lines[-1] == channel.secret
    assert channel.kind == "webhook" and channel.url == "https://hooks.acme.test/in"
    assert sorted(t.alias for t in channel.teams.all()) == ["chatbot", "search"]
    assert channel.event_types == ["budget.threshold", "spend.anomaly"]


def test_create_webhook_makes_slack_channels_for_every_team_and_event(world):
    lines = run("acme", "https://hooks.slack.com/services/T/B/x", "--kind", "slack")
    channel = NotificationChannel.objects.get()
    assert channel.kind == "slack" and not channel.teams.exists() and channel.event_types == []
    assert lines[-1] == channel.secret


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope", "https://x.test/"], "No organization"),
        (["acme", "ftp://x.test/"], "url"),
        (["acme", "https://x.test/", "--team", "ghost"], "No team 'ghost'"),
        (["globex", "https://x.test/", "--team", "search"], "No team 'search'"),
        (["acme", "https://x.test/", "--events", "budget.nonsense"], "unknown budget.nonsense"),
    ],
)
def test_create_webhook_refuses_bad_input(world, args, message):
    with pytest.raises(CommandError, match=message):
        run(*args)
    assert not NotificationChannel.objects.exists()


# --- Django admin -----------------------------------------------------------------------------------


@pytest.fixture
def superuser_client(db) -> Client:
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("root", "root@example.com", "root-pw"))
    return client


def test_the_admin_lists_channels_and_deliveries_without_showing_secrets(world, channel, superuser_client):
    with http_receiver(404) as receiver:
        hook, secret = channel_create(organization=world.acme, kind="webhook", url=receiver.url)
        from billing.notifications import channel_test

        delivery = channel_test(hook)
    for url in (
        "/admin/billing/notificationchannel/",
        f"/admin/billing/notificationchannel/{hook.pk}/change/",
        "/admin/billing/notificationdelivery/",
        f"/admin/billing/notificationdelivery/{delivery.pk}/change/",
    ):
        response = superuser_client.get(url)
        assert response.status_code == 200, url
        assert secret not in response.content.decode()
    assert superuser_client.get("/admin/billing/notificationdelivery/add/").status_code == 403


def test_the_admin_adds_a_channel_with_a_secret_and_refuses_a_bad_url(world, superuser_client):
    data = {"organization": world.acme.pk, "name": "from admin", "kind": "webhook", "emails": "[]",
            "event_types": "[]", "is_active": "on"}  # fmt: skip
    response = superuser_client.post("/admin/billing/notificationchannel/add/", {**data, "url": "ftp://x.test/"})
    assert response.status_code == 200 and "http:// or https://" in response.content.decode()
    response = superuser_client.post("/admin/billing/notificationchannel/add/", {**data, "url": "https://x.test/"})
    assert response.status_code == 302, response.content.decode()[:3000]
    assert len(NotificationChannel.objects.get().secret) >= 40
    assert not NotificationDelivery.objects.exists()
