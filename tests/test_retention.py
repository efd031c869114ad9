"""Raw events are pruned after RAW_EVENT_RETENTION_DAYS; their rollups, and the dashboard over them, remain.

The API refuses events older than the window (so none arrives that could never be rolled up), so the old
rows here are written directly with the ORM, rolled up with the retention cutoff moved back, then pruned.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from metrics import rollups
from metrics.models import DailyRollup, DirtyDay, DirtyHour, HourlyRollup, UsageEvent
from metrics.rollups import dirty_rollups_refresh, mark_hours_dirty, raw_events_prune, retention_cutoff
from tests.conftest import api, event
from tests.rollup_support import (
    DAY,
    HOUR,
    assert_dashboard_equals_raw,
    assert_rollups_equal_raw,
    day_of,
    get_dashboard,
    hour_of,
    iso,
    no_dirty_marks,
    post_events,
    random_events,
    raw_rows,
    rollup_contents,
)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def old_event(world, rng: random.Random, moment: datetime, request_id: str, team=None) -> UsageEvent:
    prompt, output = rng.randint(0, 5000), rng.randint(0, 2000)
    cost = (Decimal(prompt) * 2 + Decimal(output) * 8) / Decimal(1_000_000)  # test-model: $2/M in, $8/M out
    return UsageEvent(
        organization=world.acme, team=team or world.chatbot, request_id=request_id, timestamp=moment,
        model="test-model", model_requested="test-model", provider="testprov", prompt_tokens=prompt,
        output_tokens=output, total_tokens=prompt + output, cost=cost, output_cost=Decimal(output) * 8 / 10**6,
        prompt_cost=Decimal(prompt) * 2 / 10**6, latency_ms=round(10 ** rng.uniform(0.5, 4), 3),
        status="error" if rng.random() < 0.1 else "success", cache_hit=rng.random() < 0.2,
        user_id=rng.choice(["alice", "bob", ""]),
    )


@pytest.fixture
def old_world(world, monkeypatch):
    """53 events 100 and 95 days old (outside the 90-day window), rolled up while the cutoff was moved
    back, and 40 recent events (inside it) posted through the API."""
    rng = random.Random(20240611)
    now = datetime.now(UTC)
    old_hours = [hour_of(now - 100 * DAY) + k * HOUR for k in range(3)] + [hour_of(now - 95 * DAY)]
    old = [
        old_event(world, rng, hour + timedelta(seconds=rng.uniform(0, 3599)), f"old-{i}",
                  team=world.search if i % 4 == 0 else None)
        for i, hour in enumerate(old_hours * 13)
    ]
    old.append(old_event(world, rng, now - 92 * DAY, "old-92"))
    UsageEvent.objects.bulk_create(old)
    mark_hours_dirty(organization_id=world.acme.pk, moments=[e.timestamp for e in old])
    with monkeypatch.context() as patch:
        patch.setattr(rollups, "retention_cutoff", lambda now=None: hour_of(datetime.now(UTC) - 365 * DAY))
        dirty_rollups_refresh()
    assert no_dirty_marks()
    post_events(world.ingest, random_events(rng, count=40, newest=now - timedelta(seconds=5),
                                            span=timedelta(days=80), prefix="recent", models=("test-model",)))
    dirty_rollups_refresh()
    assert_rollups_equal_raw()
    return now, old


def test_it_prunes_raw_events_older_than_the_window_in_chunks_and_keeps_rollups(world, old_world):
    now, old = old_world
    cutoff = retention_cutoff()
    assert cutoff == hour_of(now - 90 * DAY) or cutoff == hour_of(datetime.now(UTC) - 90 * DAY)
    recent_ids = set(UsageEvent.objects.filter(timestamp__gte=cutoff).values_list("id", flat=True))
    assert len(recent_ids) == 40
    rolled = rollup_contents()

    with CaptureQueriesContext(connection) as queries:
        deleted = raw_events_prune(chunk_size=7)

    assert deleted == len(old) == 53
    deletes = [q["sql"] for q in queries.captured_queries
               if q["sql"].startswith("DELETE") and UsageEvent._meta.db_table in q["sql"]]
    # Bounded chunks, not one statement over the whole table; whole UTC days go one at a time.
    per_day = Counter(day_of(e.timestamp) for e in old)
    assert len(deletes) == sum(math.ceil(n / 7) for n in per_day.values())
    assert not UsageEvent.objects.filter(timestamp__lt=cutoff).exists()
    assert set(UsageEvent.objects.values_list("id", flat=True)) == recent_ids
    assert rollup_contents() == rolled  # every hourly and daily row kept
    assert raw_events_prune(chunk_size=7) == 0  # nothing more to do


def test_it_still_reports_the_same_totals_over_a_pruned_range(world, old_world):
    now, _ = old_world
    # Whole hours and whole days over the old events (the rollups' resolution).
    ranges = [
        (day_of(now - 100 * DAY) - DAY, day_of(now - 95 * DAY) + DAY),
        (hour_of(now - 100 * DAY), hour_of(now - 100 * DAY) + 3 * HOUR),
        (day_of(now - 101 * DAY), now),
    ]
    before = []
    for start, end in ranges:
        body = get_dashboard(world.read, start=iso(start), end=iso(end))
        assert_dashboard_equals_raw(body, raw_rows(organization=world.acme, start=start, end=end),
                                    label=f"before prune {start}..{end}")
        before.append(body)
    assert before[0]["total_requests"] == 52  # the 100- and 95-day-old events; the 92-day-old one is after
    team_before = get_dashboard(world.read, start=iso(ranges[0][0]), end=iso(ranges[0][1]), team_alias="search")
    assert team_before["total_requests"] > 0

    raw_events_prune(chunk_size=10)
    assert not UsageEvent.objects.filter(timestamp__lt=now - 91 * DAY).exists()

    for (start, end), expected in zip(ranges, before, strict=True):
        assert get_dashboard(world.read, start=iso(start), end=iso(end)) == expected, (start, end)
    assert get_dashboard(world.read, start=iso(ranges[0][0]), end=iso(ranges[0][1]),
                         team_alias="search") == team_before


def test_it_does_not_erase_rollups_of_pruned_hours_when_they_are_marked_dirty_again(world, old_world):
    # A reprice or a stray mark for an hour whose raw events are gone must not replace its rollups by nothing.
    now, old = old_world
    raw_events_prune()
    rolled = rollup_contents()
    mark_hours_dirty(organization_id=world.acme.pk, moments=[e.timestamp for e in old])

    dirty_rollups_refresh()

    assert not DirtyHour.objects.exists() and not DirtyDay.objects.exists()
    assert rollup_contents() == rolled
    start, end = hour_of(now - 100 * DAY), hour_of(now - 100 * DAY) + 3 * HOUR
    assert get_dashboard(world.read, start=iso(start), end=iso(end))["total_requests"] == 39
    assert HourlyRollup.objects.filter(start__lt=now - 91 * DAY, is_team_total=True).exists()
    assert DailyRollup.objects.filter(start__lt=now - 91 * DAY, is_team_total=True).exists()


@pytest.mark.parametrize("days_old", [89.05, 95, 400])
def test_it_rejects_events_older_than_the_window_naming_timestamp(world, days_old):
    moment = datetime.now(UTC) - timedelta(days=days_old)
    response = api(world.ingest).post("/api/v1/metrics/track", event(timestamp=iso(moment)), format="json")
    assert response.status_code == 400, response.content
    body = response.json()
    assert "timestamp" in body["errors"], body
    assert "89-day" in body["errors"]["timestamp"][0]

    batch = api(world.ingest).post("/api/v1/events", [event(request_id="too-old", timestamp=iso(moment))],
                                   format="json")
    assert batch.status_code == 400, batch.content
    assert "timestamp" in batch.json()["rejected"][0]["errors"]
    assert not UsageEvent.objects.exists() and not DirtyHour.objects.exists()


def test_it_accepts_events_just_inside_the_window_and_does_not_prune_them(world):
    moment = datetime.now(UTC) - timedelta(days=88, hours=23)
    response = api(world.ingest).post("/api/v1/metrics/track", event(timestamp=iso(moment)), format="json")
    assert response.status_code == 200, response.content
    assert raw_events_prune() == 0
    dirty_rollups_refresh()
    assert HourlyRollup.objects.get(start=hour_of(moment), is_team_total=True).requests == 1
    assert UsageEvent.objects.count() == 1


def test_it_follows_a_shorter_configured_window(world, settings):
    settings.RAW_EVENT_RETENTION_DAYS = 10
    too_old = api(world.ingest).post(
        "/api/v1/metrics/track", event(timestamp=iso(datetime.now(UTC) - timedelta(days=9, hours=1))), format="json"
    )
    assert too_old.status_code == 400 and "timestamp" in too_old.json()["errors"]
    fine = api(world.ingest).post(
        "/api/v1/metrics/track", event(timestamp=iso(datetime.now(UTC) - timedelta(days=8, hours=23))), format="json"
    )
    assert fine.status_code == 200, fine.content
    assert retention_cutoff() == hour_of(datetime.now(UTC) - 10 * DAY)


def test_it_does_not_prune_events_whose_hour_was_never_rolled_up(world, monkeypatch):
    # The API accepts events up to 89 days old, one day inside the 90-day window, "so an accepted event is
    # rolled up before it is pruned". If the rollups fall more than that day behind (worker down, backlog),
    # pruning must still not delete raw events that no rollup holds yet: their cost would vanish from every
    # total. Simulated: an event 88 days and 23 hours old, then the clock moved two days on.
    moment = datetime.now(UTC) - timedelta(days=88, hours=23)
    response = api(world.ingest).post("/api/v1/metrics/track", event(timestamp=iso(moment)), format="json")
    assert response.status_code == 200, response.content
    assert DirtyHour.objects.filter(hour=hour_of(moment)).exists()  # not rolled up yet
    real_cutoff = rollups.retention_cutoff
    monkeypatch.setattr(rollups, "retention_cutoff",
                        lambda now=None: real_cutoff((now or datetime.now(UTC)) + 2 * DAY))
    assert rollups.retention_cutoff() > moment

    raw_events_prune()
    dirty_rollups_refresh()

    start, end = hour_of(moment), hour_of(moment) + HOUR
    body = get_dashboard(world.read, start=iso(start), end=iso(end))
    assert body["total_requests"] == 1, "an event that was never rolled up was pruned and is lost"
    assert body["total_cost"] == Decimal("0.006")
