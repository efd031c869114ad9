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


# Gzip allows several members one after another (and we allow several zlib streams the same way);
# no exporter sends more than a few, and each costs a fresh inflater: a body of thousands of tiny
# members is refused rather than worked through.
MAX_COMPRESSED_MEMBERS = 1000

# Input is handed to the inflater in slices of this size: when a member ends, zlib copies the input
# it did not use into `unused_data`, so a slice bounds that copy (the whole remaining body otherwise,
# which made many small members cost quadratic time).
INPUT_CHUNK_BYTES = 64 * 1024


def _decompress(body: bytes, *, wbits: int, limit: int) -> bytes:
    """Inflate at most `limit` bytes in one pass over `body`: a small compressed body must not expand
    without bound, nor cost more than linear time however it is split into members."""
    framing = "gzip" if wbits > zlib.MAX_WBITS else "deflate"
    view = memoryview(body)
    output = bytearray()
    position = 0  # start of the input no inflater has consumed yet
    members = 0
    try:
        while True:
            if members and (position == len(body) or (body[position] == 0 and _only_zeros(body, position))):
                return bytes(output)  # the end, or only the zero padding some writers add after it
            members += 1
            if members > MAX_COMPRESSED_MEMBERS:
                raise ParseError(
                    f"The request body has more than {MAX_COMPRESSED_MEMBERS} compressed members; "
                    f"send one {framing} stream."
                )
            inflater = zlib.decompressobj(wbits)
            while not inflater.eof and position < len(body):
                chunk = view[position : position + INPUT_CHUNK_BYTES]
                output += inflater.decompress(chunk, limit + 1 - len(output))
                if len(output) > limit:
                    raise _too_large(" (uncompressed)")
                position += len(chunk) - len(inflater.unused_data)
            if not inflater.eof:
                raise ParseError("The request body is a truncated compressed stream.")
    except zlib.error as exc:
        raise ParseError(f"The request body is not valid {framing}: {exc}") from None


def _only_zeros(body: bytes, start: int) -> bool:
    """Whether `body` holds only NUL bytes from `start` on (checked once: a NUL never starts a member)."""
    return body.count(b"\x00", start) == len(body) - start
