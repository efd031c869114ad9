"""Compressed bodies on the integration receivers: decompression is linear and bounded.

Gzip (and HTTP's deflate) allow several compressed members one after another. A body of a hundred
thousand empty members used to cost quadratic time (seconds per request on one core); now the
members are counted and the body is inflated in one pass, so such a body is refused at once.
"""

from __future__ import annotations

import gzip
import json
import time
import zlib

import pytest

from metrics.integrations.request_body import MAX_COMPRESSED_MEMBERS
from metrics.models import UsageEvent
from tests.conftest import api
from tests.test_integration_litellm import log
from tests.test_integration_otlp import chat, export, span

LITELLM = "/api/v1/integrations/litellm"
OTLP = "/v1/traces"
PROTOBUF = "application/x-protobuf"
EMPTY_GZIP_MEMBER = gzip.compress(b"")  # 20 bytes
EMPTY_ZLIB_STREAM = zlib.compress(b"")  # 8 bytes


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def post(token, url, body: bytes, *, content_type: str, encoding: str):
    return api(token).generic("POST", url, body, content_type=content_type, HTTP_CONTENT_ENCODING=encoding)


def timed_post(*args, **kwargs):
    started = time.perf_counter()
    response = post(*args, **kwargs)
    return response, time.perf_counter() - started


def gzip_members(*parts: bytes) -> bytes:
    return b"".join(gzip.compress(part) for part in parts)


# --- many empty members: answered at once, refused ----------------------------------------------


@pytest.mark.parametrize(
    ("url", "content_type", "megabytes"),
    [(LITELLM, "application/json", 4), (OTLP, PROTOBUF, 2), (OTLP, "application/json", 4)],
)
def test_a_body_of_many_empty_gzip_members_is_refused_at_once(world, url, content_type, megabytes):
    body = EMPTY_GZIP_MEMBER * (megabytes * 1024 * 1024 // len(EMPTY_GZIP_MEMBER))

    response, seconds = timed_post(world.ingest, url, body, content_type=content_type, encoding="gzip")

    assert seconds < 2, f"{len(body)} bytes of empty gzip members took {seconds:.1f} s"
    assert (response.status_code, response.json()["status"]) == (400, "error")
    assert f"more than {MAX_COMPRESSED_MEMBERS} compressed members" in response.json()["message"]
    assert UsageEvent.objects.count() == 0


def test_a_body_of_many_empty_deflate_streams_is_refused_at_once(world):
    body = EMPTY_ZLIB_STREAM * (4 * 1024 * 1024 // len(EMPTY_ZLIB_STREAM))

    response, seconds = timed_post(world.ingest, LITELLM, body, content_type="application/json",
                                   encoding="deflate")

    assert seconds < 2, f"{len(body)} bytes of empty deflate streams took {seconds:.1f} s"
    assert response.status_code == 400
    assert f"more than {MAX_COMPRESSED_MEMBERS} compressed members" in response.json()["message"]


def test_the_member_limit_counts_members_not_bytes(world):
    exactly = gzip_members(*([b""] * (MAX_COMPRESSED_MEMBERS - 1)), json.dumps([log("success")]).encode())
    one_more = EMPTY_GZIP_MEMBER + exactly

    accepted = post(world.ingest, LITELLM, exactly, content_type="application/json", encoding="gzip")
    refused = post(world.ingest, LITELLM, one_more, content_type="application/json", encoding="gzip")

    assert accepted.status_code == 200, accepted.content
    assert accepted.json()["accepted"] == 1
    assert refused.status_code == 400
    assert UsageEvent.objects.count() == 1


# --- legitimate compressed bodies still work ----------------------------------------------------


def test_a_log_split_over_several_gzip_members_is_read_whole(world):
    text = json.dumps([log("success"), log("success", id="second-call")]).encode()
    third = len(text) // 3
    body = gzip_members(text[:third], text[third : 2 * third], text[2 * third :])

    response = post(world.ingest, LITELLM, body, content_type="application/json", encoding="gzip")

    assert response.status_code == 200, response.content
    assert response.json()["accepted"] == 2


def test_a_large_single_member_body_is_read_whole(world):
    """One member larger than the inflater's input chunks: more than 64 KiB of compressed input."""
    logs = [log("success", id=f"call-{i}", metadata={"noise": f"{i:06d}" * 40}) for i in range(300)]
    text = json.dumps(logs).encode()
    body = gzip.compress(text, compresslevel=0)  # stored blocks: compressed size ≈ text size
    assert len(body) > 64 * 1024

    response = post(world.ingest, LITELLM, body, content_type="application/json", encoding="gzip")

    assert response.status_code == 200, response.content
    assert response.json()["accepted"] == 300


def test_ndjson_in_several_deflate_streams_is_read_whole(world):
    lines = [json.dumps(log("success", id=f"line-{i}")).encode() + b"\n" for i in range(3)]
    body = b"".join(zlib.compress(line) for line in lines)

    response = post(world.ingest, LITELLM, body, content_type="application/x-ndjson", encoding="deflate")

    assert response.status_code == 200, response.content
    assert response.json()["accepted"] == 3


def test_trailing_zero_padding_after_the_last_member_is_ignored(world):
    body = gzip.compress(json.dumps([log("success")]).encode()) + b"\x00" * 512

    response = post(world.ingest, LITELLM, body, content_type="application/json", encoding="gzip")

    assert response.status_code == 200, response.content


def test_otlp_spans_in_two_gzip_members_are_read_whole(world):
    request = export(span(chat()), span(chat()))
    raw = request.SerializeToString()
    body = gzip_members(raw[: len(raw) // 2], raw[len(raw) // 2 :])

    response = post(world.ingest, OTLP, body, content_type=PROTOBUF, encoding="gzip")

    assert response.status_code == 200, response.content
    assert UsageEvent.objects.count() == 2


# --- the existing limits hold -------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_truncated_stream_is_400(world, encoding):
    whole = gzip.compress(b"[]" * 1000) if encoding == "gzip" else zlib.compress(b"[]" * 1000)

    response = post(world.ingest, LITELLM, whole[: len(whole) // 2], content_type="application/json",
                    encoding=encoding)

    assert (response.status_code, response.json()["status"]) == (400, "error")
    assert "truncated" in response.json()["message"]


def test_garbage_after_a_member_is_400(world):
    body = gzip.compress(json.dumps([log("success")]).encode()) + b"not gzip"

    response = post(world.ingest, LITELLM, body, content_type="application/json", encoding="gzip")

    assert (response.status_code, response.json()["status"]) == (400, "error")
    assert "not valid gzip" in response.json()["message"]
    assert UsageEvent.objects.count() == 0


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_many_members_may_not_expand_past_the_size_limit_together(world, settings, encoding):
    settings.API_MAX_BODY_BYTES = 4096
    compress = gzip.compress if encoding == "gzip" else zlib.compress
    body = b"".join(compress(b" " * 1000) for _ in range(5))  # 5,000 bytes in all, each member small

    response = post(world.ingest, LITELLM, body, content_type="application/json", encoding=encoding)

    assert (response.status_code, response.json()["status"]) == (413, "error")
    assert "uncompressed" in response.json()["message"]
