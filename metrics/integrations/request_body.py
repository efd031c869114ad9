"""Reading an integration's raw request body: size limit and compression (exporters may compress)."""

from __future__ import annotations

import zlib

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from rest_framework.exceptions import ParseError, UnsupportedMediaType

from metrics.api import PayloadTooLarge


def _too_large(what: str) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body{what} is larger than {settings.API_MAX_BODY_BYTES} bytes.")


def read_body(request) -> bytes:
    """The body, inflated when `Content-Encoding` is gzip or deflate; 413 past API_MAX_BODY_BYTES either way."""
    declared = request.META.get("CONTENT_LENGTH") or "0"
    if declared.isdigit() and int(declared) > settings.API_MAX_BODY_BYTES:
        raise _too_large("")
    try:
        body = request.body
    except RequestDataTooBig:
        raise _too_large("") from None
    encoding = request.META.get("HTTP_CONTENT_ENCODING", "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in WBITS:
        raise UnsupportedMediaType(
            encoding, detail=f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or identity."
        )
    return _decompress(body, wbits=WBITS[encoding], limit=settings.API_MAX_BODY_BYTES)


# zlib's window bits for each Content-Encoding: gzip framing, or zlib framing (HTTP's "deflate").
WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _decompress(body: bytes, *, wbits: int, limit: int) -> bytes:
    """Inflate at most `limit` bytes: a small compressed body must not expand without bound."""
    data = b""
    remaining = body
    try:
        while True:  # gzip allows several members one after another
            inflater = zlib.decompressobj(wbits)
            data += inflater.decompress(remaining, limit + 1 - len(data))
            if len(data) > limit:
                raise _too_large(" (uncompressed)")
            if not inflater.eof:
                raise ParseError("The request body is a truncated compressed stream.")
            remaining = inflater.unused_data
            if not remaining.strip(b"\x00"):
                return data
    except zlib.error as exc:
        framing = "gzip" if wbits > zlib.MAX_WBITS else "deflate"
        raise ParseError(f"The request body is not valid {framing}: {exc}") from None
