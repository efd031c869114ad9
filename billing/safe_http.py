"""Posting to a channel URL that reaches public addresses only (unless NOTIFICATION_ALLOW_PRIVATE_URLS).

A webhook or Slack URL is typed by an organization's admin, and the worker that delivers to it sits
inside our network: unchecked, `http://169.254.169.254/…` (cloud metadata), `http://10.0.0.5/` or
`http://localhost:6379/` would get a signed POST from us (server-side request forgery). So a URL is
checked twice:

- when a channel is saved (`url_validate`, from the model's `clean`: the Notifications page,
  Django admin and `create_webhook`), for a clear error on the `url` field;
- at every delivery (`post`), on the addresses actually connected to, because a name's DNS answer
  can change after it was saved (DNS rebinding). The name is resolved once per attempt, every
  address it resolves to must be public, and the connection goes to one of those checked addresses
  with the original Host header and TLS server name (SNI, and the certificate is verified for the
  name), so no second lookup can swap in another address. No proxy is used for the same reason.

"Public" is `ipaddress`' `is_global`, minus multicast and reserved ranges, with an IPv4 address
embedded in IPv6 (IPv4-mapped `::ffff:a.b.c.d`, 6to4, NAT64 `64:ff9b::/96`) judged as that IPv4.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator

# What a channel URL must look like (the model's validator); whether it may be reached is below.
HTTP_URL = URLValidator(schemes=["http", "https"], message="Give an http:// or https:// URL.")
DEFAULT_PORTS = {"http": 80, "https": 443}
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class NonPublicAddress(Exception):
    """The URL's host is, or resolves to, an address deliveries may not reach."""


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:  # fe80::1%eth0: link-local however it is written
            return False
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            ip = embedded
    # is_global alone lets multicast (224.0.0.0/4, ff00::/8) and IPv6's reserved ::/8 through.
    return ip.is_global and not ip.is_multicast and not ip.is_reserved


def checked_addresses(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (an IP literal: itself), in the resolver's order.

    Raises NonPublicAddress if any of them is not public (one bad answer is enough: which one a
    client connects to is not ours to choose), and OSError if the name does not resolve."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if settings.NOTIFICATION_ALLOW_PRIVATE_URLS:
        return addresses
    refused = [address for address in addresses if not is_public(address)]
    if refused:
        target = host if refused == [host] else f"{host} resolves to {', '.join(refused)}, which"
        raise NonPublicAddress(
            f"Refused: {target} is not a public address (loopback, private, link-local or reserved); "
            "notifications go to public addresses only."
        )
    return addresses


def _host_and_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError("not an http(s) URL with a host")
    return parts.hostname, parts.port or DEFAULT_PORTS[parts.scheme]  # .port raises ValueError if malformed


def url_validate(url: str) -> None:
    """Raise ValidationError on `url` if its host is or resolves to a non-public address.

    A URL that is not http(s) is left to the field's own validator, so it is reported once."""
    if settings.NOTIFICATION_ALLOW_PRIVATE_URLS or not url:
        return
    try:
        HTTP_URL(url)
        host, port = _host_and_port(url)
    except (ValidationError, ValueError):
        return
    try:
        checked_addresses(host, port)
    except NonPublicAddress as exc:
        raise ValidationError({"url": str(exc)}) from None
    except OSError:
        # Refused rather than saved blind: a name that resolves later is checked then, but a typo
        # is better caught now, and an unresolvable name cannot be judged public.
        raise ValidationError({"url": f"{host} could not be resolved: give a public host name or address."}) from None


def _connect(addresses: list[str], port: int, timeout: float | None) -> socket.socket:
    """Connect to the first of the checked addresses that answers (as socket.create_connection
    does for a name, but never resolving it again)."""
    error: OSError | None = None
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout)
        except OSError as exc:
            error = exc
    raise error or OSError("no address to connect to")


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to checked addresses; the Host header still names the URL's host."""

    def __init__(self, host: str, port: int, *, addresses: list[str], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.addresses = addresses

    def connect(self) -> None:
        self.sock = _connect(self.addresses, self.port, self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to checked addresses; SNI, certificate verification and Host use the URL's host."""

    def __init__(self, host: str, port: int, *, addresses: list[str], timeout: float) -> None:
        self.tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self.tls)
        self.addresses = addresses

    def connect(self) -> None:
        sock = _connect(self.addresses, self.port, self.timeout)
        self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)


@dataclass
class Answer:
    status: int
    body: bytes  # the first bytes only
    retry_after: str | None


def post(url: str, *, body: bytes, headers: dict[str, str], timeout: float, read_bytes: int = 1024) -> Answer:
    """POST `body` to `url`, connecting only to checked addresses; redirects are not followed.

    Raises NonPublicAddress (refused, nothing sent), OSError (unresolvable name, refused or dropped
    connection, timeout, TLS failure) or http.client.HTTPException (a malformed answer)."""
    host, port = _host_and_port(url)
    addresses = checked_addresses(host, port)
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    pinned = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
    connection = pinned(host, port, addresses=addresses, timeout=timeout)
    try:
        connection.request("POST", target, body=body, headers=headers)
        response = connection.getresponse()
        return Answer(response.status, body=response.read(read_bytes), retry_after=response.getheader("Retry-After"))
    finally:
        connection.close()
