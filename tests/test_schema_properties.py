"""Properties of the ingest schema, checked with Hypothesis through the HTTP API.

1. Whatever JSON a client sends in any field of /api/v1/metrics/track or /api/v1/events (any
   type, huge or tiny numbers, number literals no float holds, lone surrogates, NUL, times
   outside datetime's years), the answer is 200 or 400, never a 500; a 400 names a field. The
   same for any value in the time fields of a LiteLLM log or an OTLP span.
2. An event the API accepts reads back from the database equal to what was sent.

Examples are bounded (`max_examples`, `deadline`) so the file runs in seconds; all examples of a
test share one database transaction, so every generated event has its own request id.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metrics.models import UsageEvent
from metrics.schemas import EventIn
from tests.conftest import api
from tests.test_integration_litellm import log as litellm_log

TRACK, EVENTS = "/api/v1/metrics/track", "/api/v1/events"
EVENT_FIELDS = sorted(EventIn.model_fields)
BOUNDED = settings(
    max_examples=150,
    deadline=timedelta(seconds=5),  # one request; generous for a loaded two-core CI machine
    database=None,  # no example files left in the checkout
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


class Raw(str):
    """A JSON number literal written as it is (json.dumps cannot write 1e999999999 or exact decimals)."""


def encode(value: Any) -> str:
    """JSON text; lone surrogates become "\\ud800" escapes, as a client's JSON library writes them."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(key)}:{encode(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(encode(item) for item in value) + "]"
    return json.dumps(value)


def post(token: str, url: str, body: Any):
    client = api(token)
    client.raise_request_exception = False  # a crash must show as the 500 a client would get
    return client.post(url, encode(body).encode(), content_type="application/json")


# --- arbitrary JSON -----------------------------------------------------------------------------------

POISON_CHARACTERS = ["\ud800", "\udfff", "\ud83d", "\x00", "\u2028", "\ufeff", "\U0001f680"]
any_text = st.one_of(
    st.text(max_size=30),
    st.builds(lambda head, bad, tail: head + bad + tail, st.text(max_size=5), st.sampled_from(POISON_CHARACTERS),
              st.text(max_size=5)),
    st.sampled_from(["", " ", "success", "error", "chatbot", "test-model", "null", "NaN", "1e400"]),
)
offsets = st.sampled_from(["", "Z", "+00:00", "+14:00", "-01:00", "-23:59", "+05:30"])
any_time_text = st.builds(lambda moment, offset: moment.isoformat() + offset, st.datetimes(), offsets)
recent_time_text = st.builds(
    lambda seconds, offset: (datetime.now(UTC) - timedelta(seconds=seconds)).replace(tzinfo=None).isoformat() + offset,
    st.integers(0, 80 * 86400), offsets,
)
number_literals = st.sampled_from(["1e999999999", "-1e999999999", "1e-999999999", "1E+400", "-0", "0.0",
                                   "123456789012345678901234567890.123456789", "1.7976931348623157e308",
                                   "100000000", "100000001", "10000.0000000001", "4.9e-324"]).map(Raw)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(10**30), 10**30),
    st.floats(allow_nan=False, allow_infinity=False), number_literals, any_text, any_time_text, recent_time_text,
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=12,
)
# Values known to have broken something once, drawn as often as everything else together.
edge_values = st.sampled_from([
    "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-01:00", "9999-12-31T23:59:59.999999-23:59",
    "0001-01-01", "9999-12-31T23:59:59Z", 253402300800, -62135596801, 10**20, -(10**20), 1.5e300, -1.5e300,
    "\ud800", "x\udfff", {"k": "\ud800"}, {"\ud800": 1}, {"a": [{"b": "\udc00"}]}, ["\ud800"], "a\x00b",
    10_000, 10_001, 100_000_000, 100_000_001, [], {}, "", True,
]) | number_literals
field_values = edge_values | json_values


def base_event() -> dict:
    return {"model": "test-model", "prompt_tokens": 100, "output_tokens": 50, "request_id": str(uuid.uuid4())}


@st.composite
def poisoned_events(draw) -> Any:
    """A valid event with arbitrary JSON in some of its fields (any field, or an unknown one)."""
    if draw(st.integers(0, 19)) == 0:
        return draw(json_values)  # now and then not an object at all
    data = base_event()
    names = draw(st.lists(st.sampled_from([*EVENT_FIELDS, "unknown_field"]), min_size=1, max_size=4, unique=True))
    for name in names:
        data[name] = draw(field_values)
    return data


def assert_not_a_server_error(response):
    assert response.status_code in (200, 400), (response.status_code, response.content[:500])
    if response.status_code == 400:
        body = response.json()
        assert body["status"] == "error"
        assert body.get("errors") or body.get("rejected"), body


@pytest.mark.django_db
@BOUNDED
@given(data=poisoned_events())
def test_arbitrary_json_in_any_field_of_track_is_a_200_or_a_400(world, data):
    assert_not_a_server_error(post(world.ingest, TRACK, data))


@pytest.mark.django_db
@BOUNDED
@given(events=st.lists(poisoned_events(), min_size=1, max_size=8), good=st.integers(0, 3))
def test_arbitrary_json_in_a_batch_is_a_200_or_a_400_and_the_good_events_are_stored(world, events, good):
    good_events = [base_event() for _ in range(good)]

    response = post(world.ingest, EVENTS, {"events": events + good_events})

    assert_not_a_server_error(response)
    if good_events:
        assert response.status_code == 200
        stored = set(UsageEvent.objects.filter(request_id__in=[e["request_id"] for e in good_events])
                     .values_list("request_id", flat=True))
        assert stored == {e["request_id"] for e in good_events}


LITELLM_TIMES = ("startTime", "endTime", "completionStartTime")


@pytest.mark.django_db
@settings(BOUNDED, max_examples=100)
@given(times=st.fixed_dictionaries({}, optional=dict.fromkeys(LITELLM_TIMES, field_values)))
def test_any_time_values_in_a_litellm_log_are_a_200_or_a_400(world, times):
    payload = litellm_log("success", id=str(uuid.uuid4()), **times)

    response = post(world.ingest, "/api/v1/integrations/litellm", [payload])

    assert response.status_code in (200, 400), (response.status_code, response.content[:500])


@pytest.mark.django_db
@settings(BOUNDED, max_examples=100)
@given(times=st.fixed_dictionaries({}, optional={"startTimeUnixNano": field_values, "endTimeUnixNano": field_values}))
def test_any_time_values_in_an_otlp_span_are_a_200_or_a_400(world, times):
    attributes = [{"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
                  {"key": "gen_ai.request.model", "value": {"stringValue": "test-model"}}]
    item = {"traceId": uuid.uuid4().hex, "spanId": uuid.uuid4().hex[:16], "name": "chat", "attributes": attributes,
            **times}
    body = {"resourceSpans": [{"scopeSpans": [{"spans": [item]}]}]}

    response = post(world.ingest, "/v1/traces", body)

    assert response.status_code in (200, 400), (response.status_code, response.content[:500])


# --- valid events read back as sent ---------------------------------------------------------------

storable_characters = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
stored_text = st.text(storable_characters, max_size=40).filter(lambda text: text == text.strip())


def texts(max_size: int, min_size: int = 0):
    return st.text(storable_characters, min_size=min_size, max_size=max_size).filter(
        lambda text: text == text.strip() and len(text) >= min_size
    )


money = st.integers(0, 10_000 * 10**10).map(lambda units: Decimal(units).scaleb(-10))  # 1e-10 USD steps
millis = st.floats(0, 86_400_000, allow_nan=False, allow_infinity=False)
metadata_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**15), 10**15), stored_text,
    st.floats(-1e14, 1e14, allow_nan=False, allow_infinity=False),
)
metadata_values = st.recursive(
    metadata_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(stored_text, children, max_size=3),
    max_leaves=10,
)


@st.composite
def valid_events(draw) -> dict:
    prompt = draw(st.integers(0, 100_000_000))
    output = draw(st.integers(0, 100_000_000))
    moment = datetime.now(UTC) - timedelta(seconds=draw(st.integers(60, 80 * 86400)),
                                           microseconds=draw(st.integers(0, 999_999)))
    offset = timezone(timedelta(minutes=draw(st.integers(-23 * 60, 23 * 60))))
    data: dict[str, Any] = {
        "model": "unpriced-" + draw(texts(100, 1)),  # no price: the client's costs are stored as sent
        "request_id": str(uuid.uuid4()),
        "timestamp": moment.astimezone(offset).isoformat(),
        "prompt_tokens": prompt,
        "output_tokens": output,
        "cached_tokens": draw(st.integers(0, prompt)),
        "latency_ms": draw(millis),
        "cache_hit": draw(st.booleans()),
        "is_batched": draw(st.booleans()),
        "status": draw(st.sampled_from(["success", "error"])),
        "team_alias": draw(st.sampled_from(["chatbot", "search"])),
    }
    optional = {
        "time_to_first_token_ms": millis,
        "cache_similarity_score": st.floats(0, 1, allow_nan=False),
        "batch_id": texts(128),
        "batch_size": st.integers(1, 1_000_000),
        "user_id": texts(255),
        "end_user": texts(255),
        "query_type": texts(100),
        "error_message": texts(400),
        "provider": texts(64),
        "prompt_cost": money,
        "output_cost": money,
        "metadata": st.dictionaries(stored_text, metadata_values, max_size=5),
        "tags": st.lists(texts(100), max_size=5),
    }
    for name in draw(st.lists(st.sampled_from(sorted(optional)), unique=True)):
        data[name] = draw(optional[name])
    total = prompt + output + draw(st.integers(0, 1000))  # a larger total is kept as sent
    if draw(st.booleans()) and total <= 100_000_000:  # each count, the total too, is at most 10^8
        data["total_tokens"] = total
    return data


def assert_stored_as_sent(sent: dict):
    event = UsageEvent.objects.select_related("team").get(request_id=sent["request_id"])
    assert event.timestamp == datetime.fromisoformat(sent["timestamp"])
    assert event.model_requested == sent["model"]
    assert event.team.alias == sent["team_alias"]
    for name in ("prompt_tokens", "output_tokens", "cached_tokens", "latency_ms", "cache_hit", "is_batched",
                 "status"):
        assert getattr(event, name) == sent[name], name
    assert event.total_tokens == sent.get("total_tokens", sent["prompt_tokens"] + sent["output_tokens"])
    for name in ("time_to_first_token_ms", "cache_similarity_score", "batch_size"):
        assert getattr(event, name) == sent.get(name), name
    for name in ("batch_id", "user_id", "end_user", "query_type", "error_message"):
        if name in sent:
            assert getattr(event, name) == sent[name], name
    if "provider" in sent:  # `provider` is the price's (none here: the model is unpriced); as sent:
        assert event.provider_requested == sent["provider"]
    assert event.metadata == sent.get("metadata", {})
    assert event.tags == sent.get("tags", [])
    prompt_cost, output_cost = sent.get("prompt_cost"), sent.get("output_cost")
    assert (event.prompt_cost, event.output_cost) == (prompt_cost or 0, output_cost or 0)
    if prompt_cost is None and output_cost is None:
        assert event.client_cost is None
    else:
        assert event.cost == event.client_cost == (prompt_cost or 0) + (output_cost or 0)


@pytest.mark.django_db
@BOUNDED
@given(sent=valid_events())
def test_an_event_stored_through_track_reads_back_as_sent(world, sent):
    response = post(world.ingest, TRACK, sent)

    assert response.status_code == 200, response.content[:500]
    assert_stored_as_sent(sent)


@pytest.mark.django_db
@settings(BOUNDED, max_examples=40)
@given(batch=st.lists(valid_events(), min_size=1, max_size=10))
def test_events_stored_through_a_batch_read_back_as_sent(world, batch):
    response = post(world.ingest, EVENTS, {"events": batch})

    assert response.status_code == 200, response.content[:500]
    assert response.json()["accepted"] == len(batch), response.json()["rejected"]
    for sent in batch:
        assert_stored_as_sent(sent)
