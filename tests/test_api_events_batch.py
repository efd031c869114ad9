"""POST /api/v1/events: up to 1,000 events per request, partial acceptance, bounded queries."""

from __future__ import annotations

from decimal import Decimal

import pytest

from metrics.models import UsageEvent
from tests.conftest import api, event

URL = "/api/v1/events"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """The world's four users are created with passwords: hash them cheaply in these tests."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def send(token, body):
    return api(token).post(URL, body, format="json")


def events(n, prefix="e", **overrides):
    return [event(request_id=f"{prefix}-{i}", **overrides) for i in range(n)]


@pytest.mark.parametrize("wrap", [False, True], ids=["list", "object"])
def test_it_records_a_batch(world, wrap):
    items = [event(request_id="a"), event(request_id="b", prompt_tokens=0, output_tokens=1000, team_alias="search")]

    response = send(world.ingest, {"events": items} if wrap else items)

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "success"
    assert body["accepted"] == 2
    assert body["duplicates"] == 0
    assert body["rejected"] == []
    assert [(r["index"], r["request_id"], r["duplicate"]) for r in body["results"]] == [
        (0, "a", False),
        (1, "b", False),
    ]
    assert [Decimal(str(r["cost"])) for r in body["results"]] == [Decimal("0.006"), Decimal("0.008")]
    stored = {e.request_id: e for e in UsageEvent.objects.all()}
    assert set(stored) == {"a", "b"}
    assert stored["a"].team == world.chatbot
    assert stored["b"].team == world.search


def test_it_stores_the_valid_events_and_names_what_is_wrong_with_the_others(world):
    items = [
        event(request_id="ok-0"),
        event(request_id="bad-1", model=""),
        event(request_id="ok-2"),
        event(request_id="bad-3", prompt_tokens=-1),
        "not an object",
        event(request_id="bad-5", surprise=1),
    ]

    response = send(world.ingest, items)

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "partial"
    assert body["accepted"] == 2
    assert [r["index"] for r in body["rejected"]] == [1, 3, 4, 5]
    errors = {r["index"]: r["errors"] for r in body["rejected"]}
    assert "model" in errors[1]
    assert "prompt_tokens" in errors[3]
    assert "non_field_errors" in errors[4]
    assert "surprise" in errors[5]
    assert [r["index"] for r in body["results"]] == [0, 2]
    assert set(UsageEvent.objects.values_list("request_id", flat=True)) == {"ok-0", "ok-2"}


def test_it_rejects_events_naming_an_unknown_team_when_auto_create_is_off(world):
    world.acme.auto_create_teams = False
    world.acme.save()

    response = send(world.ingest, [event(request_id="x", team_alias="nope"), event(request_id="y")])

    assert response.status_code == 200, response.content
    body = response.json()
    assert [r["index"] for r in body["rejected"]] == [0]
    assert list(body["rejected"][0]["errors"]) == ["team_alias"]
    assert "nope" in body["rejected"][0]["errors"]["team_alias"][0]
    assert list(UsageEvent.objects.values_list("request_id", flat=True)) == ["y"]


def test_it_keeps_the_valid_events_when_one_has_a_nul_character(world):
    """PostgreSQL text cannot hold U+0000: that one item is rejected (or cleaned), the rest are kept."""
    client = api(world.ingest)
    client.raise_request_exception = False

    response = client.post(URL, [event(request_id="ok"), event(request_id="nul", user_id="a\u0000b")], format="json")

    assert response.status_code == 200, response.content[:500]
    body = response.json()
    assert [r["request_id"] for r in body["results"]][:1] == ["ok"]
    assert all("user_id" in r["errors"] for r in body["rejected"])
    assert UsageEvent.objects.filter(request_id="ok").exists()


def test_it_answers_400_and_stores_nothing_when_no_event_is_valid(world):
    response = send(world.ingest, [event(model=""), event(prompt_tokens="100"), 7])

    assert response.status_code == 400
    body = response.json()
    assert body["status"] == "error"
    assert body["message"]
    assert [r["index"] for r in body["rejected"]] == [0, 1, 2]
    assert body["accepted"] == 0
    assert UsageEvent.objects.count() == 0


def test_it_refuses_more_than_1000_events(world):
    response = send(world.ingest, events(1001))

    assert response.status_code == 400
    body = response.json()
    assert body["status"] == "error"
    assert "events" in body["errors"]
    assert UsageEvent.objects.count() == 0


@pytest.mark.parametrize(
    "body, field",
    [
        ([], "events"),
        ({"events": []}, "events"),
        ({"events": "nope"}, "events"),
        ({"events": {"model": "test-model"}}, "events"),
        ({}, "events"),
        ({"events": [event()], "extra": 1}, "extra"),
    ],
    ids=["empty-list", "empty-events", "events-string", "events-object", "empty-object", "unknown-key"],
)
def test_it_refuses_a_batch_that_is_not_a_list_of_events(world, body, field):
    response = send(world.ingest, body)

    assert response.status_code == 400
    assert response.json()["status"] == "error"
    assert field in response.json()["errors"]
    assert UsageEvent.objects.count() == 0


def test_it_stores_a_request_id_repeated_inside_one_batch_once(world):
    items = [event(request_id="same"), event(request_id="same", prompt_tokens=9000), event(request_id="other")]

    response = send(world.ingest, items)

    body = response.json()
    assert body["accepted"] == 2
    assert body["duplicates"] == 1
    assert [r["duplicate"] for r in body["results"]] == [False, True, False]
    # The repeat is answered with the copy that was kept.
    assert body["results"][1]["cost"] == body["results"][0]["cost"]
    assert UsageEvent.objects.filter(request_id="same").get().prompt_tokens == 1000
    assert UsageEvent.objects.count() == 2


def test_it_answers_a_resent_batch_with_duplicates_only(world):
    batch = events(5)
    first = send(world.ingest, batch)
    again = send(world.ingest, [dict(item, prompt_tokens=1) for item in batch])

    assert again.status_code == 200, again.content
    body = again.json()
    assert body["status"] == "success"
    assert body["accepted"] == 0
    assert body["duplicates"] == 5
    assert all(r["duplicate"] for r in body["results"])
    assert [r["cost"] for r in body["results"]] == [r["cost"] for r in first.json()["results"]]
    assert UsageEvent.objects.count() == 5


def test_it_reports_new_and_already_stored_events_in_one_batch(world):
    send(world.ingest, events(3))

    body = send(world.ingest, events(5)).json()

    assert body["accepted"] == 2
    assert body["duplicates"] == 3
    assert UsageEvent.objects.count() == 5


def test_it_files_a_batch_in_the_tokens_organization(world):
    send(world.globex_token, events(3, team_alias="chatbot"))

    assert set(UsageEvent.objects.values_list("organization", "team")) == {(world.globex.pk, world.globex_chatbot.pk)}


def test_it_refuses_a_read_only_token(world):
    response = send(world.read, events(2))

    assert response.status_code == 403
    assert UsageEvent.objects.count() == 0


def test_it_requires_a_token(world):
    response = send(None, events(2))

    assert response.status_code == 401
    assert UsageEvent.objects.count() == 0


def test_it_accepts_a_full_batch_within_the_body_limit(world, settings):
    items = events(1000, metadata={"note": "x" * 100}, tags=["a", "b"], user_id="someone@example.test" * 3)

    response = send(world.ingest, items)

    assert response.status_code == 200, response.content[:300]
    assert response.json()["accepted"] == 1000
    assert UsageEvent.objects.count() == 1000


def test_it_uses_a_bounded_number_of_queries_whatever_the_batch_size(world, django_assert_max_num_queries):
    teams = ["chatbot", "search", "default"]
    small = [event(request_id=f"s-{i}", team_alias=teams[i % 3]) for i in range(10)]
    large = [event(request_id=f"l-{i}", team_alias=teams[i % 3]) for i in range(1000)]
    client = api(world.ingest)

    with django_assert_max_num_queries(15) as small_queries:
        assert client.post(URL, small, format="json").status_code == 200
    with django_assert_max_num_queries(15) as large_queries:
        assert client.post(URL, large, format="json").status_code == 200
    with django_assert_max_num_queries(15) as repeat_queries:  # all duplicates: one more SELECT at most
        assert client.post(URL, large, format="json").json()["duplicates"] == 1000

    # 1000 events may cost an extra INSERT chunk over 10 events, not one query per event.
    assert len(large_queries.captured_queries) <= len(small_queries.captured_queries) + 2
    assert len(repeat_queries.captured_queries) <= len(small_queries.captured_queries) + 3
    assert UsageEvent.objects.count() == 1010
