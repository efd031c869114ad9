"""Channel URLs reach public addresses only (NOTIFICATION_ALLOW_PRIVATE_URLS off, the production default):
a URL whose host is or resolves to a loopback, private, link-local, multicast or reserved address is
refused when saved (the Notifications page, `create_webhook`, Django admin, the service), and again
at delivery on the address actually connected to, with nothing sent; deliveries connect to the
checked address while the Host header and TLS server name stay the URL's host.

The rest of the suite runs with the setting on (tests/env_defaults.py), for its receiver on 127.0.0.1.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.test import Client

from billing.models import NotificationChannel, NotificationDelivery
from billing.notifications import channel_create, channel_test, deliveries_send, notify
from billing.safe_http import is_public
from tests.http_receiver import http_receiver
from tests.private_services import unavailable
from tests.web_support import client_for, page_settings

PAGE = "/o/acme/notifications/"
Status = NotificationDelivery.Status

PRIVATE_URLS = {
    "loopback": "http://127.0.0.1:8080/hook",
    "loopback-other": "http://127.8.9.10/hook",
    "private-10": "http://10.1.2.3/hook",
    "private-172": "http://172.16.0.1/hook",
    "private-192": "http://192.168.1.20:9000/hook",
    "metadata": "http://169.254.169.254/latest/meta-data/",
    "shared-cgnat": "http://100.64.0.1/hook",
    "unspecified": "http://0.0.0.0/hook",
    "multicast": "http://224.0.0.1/hook",
    "ipv6-loopback": "http://[::1]:8080/hook",
    "ipv6-unspecified": "http://[::]/hook",
    "ipv6-link-local": "http://[fe80::1]/hook",
    "ipv6-unique-local": "https://[fd12:3456::1]/hook",
    "ipv4-mapped-loopback": "http://[::ffff:127.0.0.1]/hook",
    "ipv4-mapped-metadata": "http://[::ffff:169.254.169.254]/hook",
    "name-of-loopback": "https://localhost/hook",
}
PUBLIC_URL = "https://8.8.8.8/llmcost"  # an IP literal: saved without asking any resolver


@pytest.fixture(autouse=True)
def _private_urls_refused(settings):
    page_settings(settings)
    settings.NOTIFICATION_ALLOW_PRIVATE_URLS = False


# --- what counts as public ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.0.0.1", "172.31.255.255", "192.168.0.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
     "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255", "198.18.0.1", "::1", "::", "fe80::1",
     "fe80::1%1", "fd00::1", "ff02::1", "::7f00:1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:1::1",
     "64:ff9b::a9fe:a9fe", "2001:db8::1"],
)  # fmt: skip
def test_it_judges_non_public_addresses(address):
    assert not is_public(address)


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "::ffff:8.8.8.8", "2002:808:808::1", "64:ff9b::808:808"]
)
def test_it_judges_public_addresses(address):
    assert is_public(address)


# --- refused on save ---------------------------------------------------------------------------------


@pytest.mark.parametrize("url", PRIVATE_URLS.values(), ids=PRIVATE_URLS.keys())
def test_the_service_refuses_a_private_url_on_the_url_field(world, url):
    with pytest.raises(ValidationError) as error:
        channel_create(organization=world.acme, kind="webhook", url=url)
    assert list(error.value.message_dict) == ["url"]
    assert "not a public address" in error.value.message_dict["url"][0]
    assert not NotificationChannel.objects.exists()


@pytest.mark.parametrize("url", PRIVATE_URLS.values(), ids=PRIVATE_URLS.keys())
def test_the_page_refuses_a_private_url_with_a_field_error(world, url):
    response = client_for(world.owner).post(PAGE, {"kind": "slack", "url": url})
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert list(errors) == ["url"] and "not a public address" in errors["url"][0]
    assert not NotificationChannel.objects.exists()


@pytest.mark.parametrize("url", PRIVATE_URLS.values(), ids=PRIVATE_URLS.keys())
def test_create_webhook_refuses_a_private_url(world, url):
    with pytest.raises(CommandError, match=r"^url: Refused: .* not a public address"):
        call_command("create_webhook", "acme", url, stdout=StringIO())
    assert not NotificationChannel.objects.exists()


@pytest.fixture
def superuser_client(db) -> Client:
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("root", "root@example.com", "root-pw"))
    return client


def admin_add(client: Client, world, url: str):
    data = {"organization": world.acme.pk, "kind": "webhook", "url": url, "emails": "[]", "event_types": "[]",
            "is_active": "on"}  # fmt: skip
    return client.post("/admin/billing/notificationchannel/add/", data)


@pytest.mark.parametrize("url", PRIVATE_URLS.values(), ids=PRIVATE_URLS.keys())
def test_the_admin_refuses_a_private_url(world, superuser_client, url):
    response = admin_add(superuser_client, world, url)
    assert response.status_code == 200
    assert list(response.context["adminform"].form.errors) == ["url"]
    assert "not a public address" in response.content.decode()
    assert not NotificationChannel.objects.exists()


def test_the_admin_refuses_to_change_a_channel_to_a_private_url(world, superuser_client):
    channel, _ = channel_create(organization=world.acme, kind="webhook", url=PUBLIC_URL)
    data = {"organization": world.acme.pk, "kind": "webhook", "url": "http://10.0.0.7/", "emails": "[]",
            "event_types": "[]", "is_active": "on"}  # fmt: skip
    response = superuser_client.post(f"/admin/billing/notificationchannel/{channel.pk}/change/", data)
    assert response.status_code == 200 and "not a public address" in response.content.decode()
    channel.refresh_from_db()
    assert channel.url == PUBLIC_URL


def test_a_public_address_is_accepted_everywhere(world, superuser_client):
    channel, _ = channel_create(organization=world.acme, kind="webhook", url=PUBLIC_URL, name="service")
    assert channel.url == PUBLIC_URL
    response = client_for(world.owner).post(PAGE, {"kind": "webhook", "url": PUBLIC_URL, "name": "page"})
    assert response.status_code == 200 and not response.context["form"].errors
    call_command("create_webhook", "acme", PUBLIC_URL, "--name", "command", stdout=StringIO())
    assert admin_add(superuser_client, world, PUBLIC_URL).status_code == 302
    assert NotificationChannel.objects.filter(url=PUBLIC_URL).count() == 4


def test_a_host_that_does_not_resolve_is_refused_on_save(world):
    with pytest.raises(ValidationError) as error:
        channel_create(organization=world.acme, kind="webhook", url="https://no-such-host.invalid/hook")
    assert "could not be resolved" in error.value.message_dict["url"][0]


def test_with_private_urls_allowed_a_private_url_is_saved(world, settings):
    settings.NOTIFICATION_ALLOW_PRIVATE_URLS = True
    channel, _ = channel_create(organization=world.acme, kind="webhook", url=PRIVATE_URLS["metadata"])
    assert channel.url == PRIVATE_URLS["metadata"]


# --- refused at delivery -----------------------------------------------------------------------------


def stored_channel(world, url: str) -> NotificationChannel:
    """A channel row as an older version, a data migration or a changed DNS answer could leave it:
    never checked on save."""
    return NotificationChannel.objects.create(organization=world.acme, kind="webhook", url=url, secret="s" * 43)


def offer(world, key: str = "k", now: datetime | None = None) -> int:
    return notify(organization=world.acme, team=None, event_type="budget.threshold", key=key,
                  payload={"summary": "80 % reached"}, now=now)  # fmt: skip


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_delivery_to_a_private_target_fails_at_once_and_sends_nothing(world, host):
    now = datetime.now(UTC)
    with http_receiver() as receiver:
        stored_channel(world, f"http://{host}:{receiver.port}/hook")
        assert offer(world, now=now) == 1
        assert deliveries_send(now=now) == 0
        deliveries_send(now=now + timedelta(hours=1))  # a failed delivery is not tried again
        assert receiver.requests == []
    delivery = NotificationDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == (Status.FAILED, 1, None)
    assert delivery.last_error.startswith("Refused: ") and "not a public address" in delivery.last_error
    assert "Gave up" not in delivery.last_error  # refused, not retried until the window closed


def test_a_test_send_to_a_private_target_is_refused_and_says_why(world):
    with http_receiver() as receiver:
        delivery = channel_test(stored_channel(world, receiver.url))
        assert receiver.requests == []
    assert delivery.status == Status.FAILED and "127.0.0.1 is not a public address" in delivery.last_error


def test_the_same_channel_is_delivered_to_once_private_urls_are_allowed(world, settings):
    # The refusal above is the check, not a broken sender: with the setting on, the same row delivers.
    settings.NOTIFICATION_ALLOW_PRIVATE_URLS = True
    with http_receiver() as receiver:
        stored_channel(world, f"http://localhost:{receiver.port}/hook")
        offer(world)
        assert deliveries_send() == 1
        (request,) = receiver.requests
    # Connected to a resolved address of "localhost", but the Host header names the URL's host.
    assert request.headers["host"] == f"localhost:{receiver.port}"
    assert request.path == "/hook"


# --- HTTPS: connected by address, verified and addressed by name ------------------------------------------


@pytest.fixture(scope="module")
def localhost_certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for the name "localhost" only (no IP address in it)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        unavailable("the openssl program")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_an_https_delivery_sends_the_host_name_as_sni_and_verifies_the_certificate_for_it(
    world, settings, monkeypatch, localhost_certificate
):
    settings.NOTIFICATION_ALLOW_PRIVATE_URLS = True
    cert, key = localhost_certificate
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trusted by the sender's default TLS context
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    with http_receiver(tls=server_tls) as receiver:
        channel = stored_channel(world, f"https://localhost:{receiver.port}/hook")
        delivery = channel_test(channel)
        assert delivery.status == Status.DELIVERED, delivery.last_error
        (request,) = receiver.requests
        assert request.headers["host"] == f"localhost:{receiver.port}"
        assert "localhost" in receiver.server_names
        # The certificate names only "localhost": the same server at its address fails verification,
        # so the delivery above was verified against the name, not the address connected to.
        by_address = channel_test(stored_channel(world, f"https://127.0.0.1:{receiver.port}/hook"))
    assert by_address.status == Status.FAILED and "certificate" in by_address.last_error.lower(), by_address.last_error
