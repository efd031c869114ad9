"""The dashboard reads rollups, yet always equals a sum over the raw events (randomised data).

Each test ingests a few hundred random events over about three days through the API, then compares
GET /api/v1/dashboard/metrics with figures summed in Python from the stored UsageEvent rows: before the
rollup (raw path), after it (daily and hourly rows), after late events dirty hours already rolled up,
and in partially refreshed states. The random seed is printed; set ROLLUP_TEST_SEED to replay one.
"""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
from django.db import connection

from metrics import rollups
from metrics.models import DailyRollup, DirtyDay, DirtyHour, HourlyRollup, UsageEvent
from metrics.rollups import dirty_rollups_refresh, hour_rollup_refresh, mark_hours_dirty
from metrics.selectors import EventFilter, plan_sources, top_usage, usage_cost
from teams.access import AccessScope
from teams.models import Team
from tests.conftest import api, event, make_price
from tests.rollup_support import (
    DAY,
    HOUR,
    USERS,
    assert_dashboard_equals_raw,
    assert_percentiles_close,
    assert_rollups_equal_raw,
    day_of,
    expected_dashboard,
    get_dashboard,
    hour_of,
    iso,
    no_dirty_marks,
    parse_moment,
    post_events,
    random_event,
    random_events,
    raw_rows,
    rollup_contents,
)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def rng() -> random.Random:
    seed = int(os.environ.get("ROLLUP_TEST_SEED") or random.SystemRandom().randrange(2**32))
    print(f"ROLLUP_TEST_SEED={seed}")  # shown with a failure
    return random.Random(seed)


@pytest.fixture
def data(world, rng):
    """~600 acme events over 71 hours in three teams, four models and four users; ~150 globex events."""
    make_price("other-model", input="0.15", output="0.6", provider="otherprov")
    now = datetime.now(UTC) - timedelta(seconds=2)
    post_events(world.ingest, random_events(rng, count=600, newest=now, span=timedelta(hours=71), prefix="a"))
    post_events(world.globex_token, random_events(rng, count=150, newest=now, span=timedelta(hours=71), prefix="g",
                                                  teams=("chatbot", "research")))
    # Events exactly on hour and day starts, and exactly on the edges of the ranges below.
    post_events(world.ingest, [random_event(rng, moment=moment, request_id=f"edge-{i}")
                               for i, moment in enumerate(edge_moments(now))])
    assert UsageEvent.objects.filter(organization=world.acme).count() == 600 + len(edge_moments(now))
    return now


def edge_moments(now: datetime) -> list[datetime]:
    hours = [hour_of(now) - k * HOUR for k in (3, 30, 47, 48, 49)] + [day_of(now) - DAY, day_of(now) - 2 * DAY]
    on_range_edges = [now - timedelta(hours=40, microseconds=123457), now - timedelta(hours=9, microseconds=1)]
    return hours + on_range_edges


def ranges(now: datetime) -> list[tuple[str, dict, tuple | None]]:
    """(label, query, explicit (start, end) or None): relative, non-hour-aligned, whole-day and sub-hour ranges."""
    today = day_of(now)
    explicit = [
        ("odd edges", now - timedelta(hours=61, minutes=-17, seconds=-23.5), now - timedelta(hours=2, minutes=41,
                                                                                             seconds=7.25)),
        ("whole days", today - 2 * DAY, today),
        ("inside one hour", hour_of(now) - 5 * HOUR + timedelta(minutes=5), hour_of(now) - 5 * HOUR
         + timedelta(minutes=50, microseconds=1)),
        ("day edge minus 3h to now", today - DAY - 3 * HOUR + timedelta(seconds=0.25), now),
        ("exact hours", hour_of(now) - 30 * HOUR, hour_of(now) - 3 * HOUR),  # events on both edges
        ("edges on events", *edge_moments(now)[-2:]),  # the first edge's event is in, the last one's out
    ]
    india = timezone(timedelta(hours=5, minutes=30))  # half-hour offset: local hours are not UTC hours
    offset_start, offset_end = now - timedelta(hours=50, minutes=12), now - timedelta(hours=26, minutes=48)
    return [
        ("24h", {"time_range_hours": 24}, None),
        ("72h", {"time_range_hours": 72}, None),
        *[(label, {"start": iso(start), "end": iso(end)}, (start, end)) for label, start, end in explicit],
        ("+05:30 offsets", {"start": offset_start.astimezone(india).isoformat(),
                            "end": offset_end.astimezone(india).isoformat()}, (offset_start, offset_end)),
    ]


def check_dashboard(token, organization, now, *, team_ids=None, label="", which=None, **params) -> None:
    for name, query, explicit in ranges(now):
        if which is not None and name not in which:
            continue
        body = get_dashboard(token, **query, **params)
        start, end = parse_moment(body["start"]), parse_moment(body["end"])
        if explicit is not None:
            assert (start, end) == explicit, f"[{label} {name}] the API read another range"
        rows = raw_rows(organization=organization, start=start, end=end, team_ids=team_ids,
                        model_filter=params.get("model_filter"))
        assert_dashboard_equals_raw(body, rows, label=f"{label} {name} {params}")
        unfiltered_acme = team_ids is None and not params and organization.slug == "acme"
        if name in ("exact hours", "edges on events") and unfiltered_acme:
            assert any(r["timestamp"] == start for r in rows) and not any(r["timestamp"] == end for r in rows)


def test_it_matches_raw_sums_for_every_range_before_and_after_the_rollup(world, data):
    now = data
    assert DirtyHour.objects.filter(organization=world.acme).count() >= 60  # ~72 hours have events
    check_dashboard(world.read, world.acme, now, label="raw path")

    result = dirty_rollups_refresh()

    assert result.hours >= 60 and result.days >= 3 and result.skipped == 0
    assert no_dirty_marks(), (list(DirtyHour.objects.all()), list(DirtyDay.objects.all()))
    # The whole-day range is now answered from daily rows alone, the others mostly from rollups.
    plan = plan_sources(organization_id=world.acme.pk, start=day_of(now) - 2 * DAY, end=day_of(now))
    assert plan.days and not plan.hours and not plan.raw
    check_dashboard(world.read, world.acme, now, label="rollups")
    assert_rollups_equal_raw()


def test_it_counts_late_events_for_hours_already_rolled_up(world, data, rng):
    now = data
    dirty_rollups_refresh()
    assert no_dirty_marks()
    rolled_before = HourlyRollup.objects.count()

    # Events made two days ago arrive only now, into hours whose rollups exist.
    late_hours = [hour_of(now - 2 * DAY) + k * HOUR for k in (-1, 0, 1)]
    assert all(HourlyRollup.objects.filter(organization=world.acme, start=h).exists() for h in late_hours)
    late = [random_event(rng, moment=late_hours[i % 3] + timedelta(seconds=rng.uniform(0, 3599.999)),
                         request_id=f"late-{i}") for i in range(45)]
    post_events(world.ingest, late)

    assert set(DirtyHour.objects.values_list("hour", flat=True)) == set(late_hours)
    assert HourlyRollup.objects.count() == rolled_before  # nothing recomputed yet
    check_dashboard(world.read, world.acme, now, label="late, before refresh")

    dirty_rollups_refresh()

    assert no_dirty_marks()
    check_dashboard(world.read, world.acme, now, label="late, after refresh")
    assert_rollups_equal_raw()


def test_it_estimates_latency_percentiles_within_one_percent_from_mixed_sources(world, data, rng):
    now = data
    dirty_rollups_refresh()
    # Anchored to midnight, not to now, so whole clean days exist in the range at any time of day;
    # the late events dirty hours of the last, partial day only.
    yesterday = day_of(now) - DAY
    post_events(world.ingest, [random_event(rng, moment=yesterday + 3 * HOUR - timedelta(minutes=i),
                                            request_id=f"l-{i}") for i in range(20)])
    start = yesterday - 2 * DAY - 5 * HOUR + timedelta(seconds=11.5)
    end = yesterday + 7 * HOUR + timedelta(minutes=13)
    plan = plan_sources(organization_id=world.acme.pk, start=start, end=end)
    assert plan.days and plan.hours and plan.raw  # daily rows, hourly rows and raw events all contribute

    body = get_dashboard(world.read, start=iso(start), end=iso(end))

    exact = expected_dashboard(raw_rows(organization=world.acme, start=start, end=end))["percentiles"]
    assert all(value is not None for value in exact.values())
    assert_percentiles_close(body, exact, label="mixed sources")
    # A narrower, team-filtered view too: its own percentiles, not the organization's.
    body = get_dashboard(world.read, start=iso(start), end=iso(end), team_alias="search")
    rows = raw_rows(organization=world.acme, start=start, end=end, team_ids={world.search.pk})
    assert_percentiles_close(body, expected_dashboard(rows)["percentiles"], label="search team")


@pytest.mark.parametrize("refreshed", [False, True], ids=["raw", "rolled-up"])
def test_it_filters_by_team_and_model_family(world, data, refreshed):
    now = data
    if refreshed:
        dirty_rollups_refresh()
    ops = Team.objects.get(organization=world.acme, alias="ops")
    for alias, team in (("chatbot", world.chatbot), ("search", world.search), ("ops", ops)):
        check_dashboard(world.read, world.acme, now, team_ids={team.pk}, label=alias, team_alias=alias,
                        which=("72h", "odd edges", "whole days"))
    # model_filter matches a family, case-insensitively: "test" is test-model (and the mini priced as it).
    for family in ("test", "OTHER", "mystery", "model"):
        check_dashboard(world.read, world.acme, now, label=family, model_filter=family,
                        which=("72h", "odd edges", "whole days"))
    check_dashboard(world.read, world.acme, now, team_ids={world.search.pk}, label="search+other",
                    team_alias="search", model_filter="other", which=("72h", "odd edges"))


@pytest.mark.parametrize("refreshed", [False, True], ids=["raw", "rolled-up"])
def test_it_counts_events_without_a_user_in_per_user_reads(world, data, refreshed):
    # Budget e-mails rank users (top_usage) and user budgets sum one user's spend (usage_cost); events
    # that name no user are stored with user_id "" and must be counted as that user, no more, no less.
    now = data
    if refreshed:
        dirty_rollups_refresh()
        assert DailyRollup.objects.filter(organization=world.acme, user_id="", is_team_total=False).exists()
    scope = AccessScope(organization=world.acme)
    start, end = now - timedelta(hours=70, minutes=13), now - timedelta(minutes=3)
    rows = raw_rows(organization=world.acme, start=start, end=end)
    for user in [u or "" for u in USERS]:
        want = sum((r["cost"] for r in rows if r["user_id"] == user), start=0)
        assert usage_cost(scope=scope, filters=EventFilter(start=start, end=end, user_id=user)) == want, user
    ranking = top_usage(scope=scope, filters=EventFilter(start=start, end=end), dimension="user_id", limit=10)
    want_ranking = {}
    for r in rows:
        entry = want_ranking.setdefault(r["user_id"], {"cost": 0, "requests": 0})
        entry["cost"] += r["cost"]
        entry["requests"] += 1
    assert {e["name"]: {"cost": e["cost"], "requests": e["requests"]} for e in ranking} == want_ranking
    assert "" in want_ranking  # the data has user-less events
    # And the organization's total is the sum over all users, the user-less included.
    assert usage_cost(scope=scope, filters=EventFilter(start=start, end=end)) == sum(r["cost"] for r in rows)


def test_it_shows_a_pinned_token_only_its_team(world, data):
    now = data
    for stage in ("raw", "rolled-up"):
        if stage == "rolled-up":
            dirty_rollups_refresh()
        check_dashboard(world.pinned, world.acme, now, team_ids={world.chatbot.pk}, label=f"pinned {stage}")
        check_dashboard(world.pinned, world.acme, now, team_ids={world.chatbot.pk}, label=f"pinned {stage}",
                        team_alias="chatbot", which=("72h",))
        assert api(world.pinned).get("/api/v1/dashboard/metrics", {"team_alias": "search"}).status_code == 404
        pinned = get_dashboard(world.pinned, time_range_hours=72)
        everyone = get_dashboard(world.read, time_range_hours=72)
        assert 0 < pinned["total_requests"] < everyone["total_requests"]


def test_it_never_shows_one_organization_the_others_rollups(world, data):
    now = data
    globex = world.globex
    research = Team.objects.get(organization=globex, alias="research")
    for stage in ("raw", "rolled-up"):
        if stage == "rolled-up":
            dirty_rollups_refresh()
            assert_rollups_equal_raw(organization_ids=[globex.pk])
        check_dashboard(world.globex_token, globex, now, label=f"globex {stage}")
        check_dashboard(world.globex_token, globex, now, team_ids={world.globex_chatbot.pk},
                        label=f"globex chatbot {stage}", team_alias="chatbot", which=("72h", "whole days"))
        check_dashboard(world.read, world.acme, now, label=f"acme {stage}", which=("72h", "whole days"))
        # Each organization's "chatbot" is its own: acme's alias never reaches globex's rows.
        check_dashboard(world.read, world.acme, now, team_ids={world.chatbot.pk}, label=f"acme chatbot {stage}",
                        team_alias="chatbot", which=("72h",))
        # A team of the other organization does not exist for this token.
        assert api(world.read).get("/api/v1/dashboard/metrics", {"team_alias": "research"}).status_code == 404
        assert research.organization_id == globex.pk
    assert get_dashboard(world.globex_token, time_range_hours=72)["total_requests"] == 150


def test_it_changes_nothing_when_the_refresh_runs_again(world, data):
    dirty_rollups_refresh()
    first = rollup_contents()
    assert first["HourlyRollup"] and first["DailyRollup"]

    again = dirty_rollups_refresh()

    assert (again.hours, again.days) == (0, 0)
    assert rollup_contents() == first
    # Recomputing every hour and day from scratch gives the very same rows, too.
    for organization_id, hour in {(e.organization_id, hour_of(e.timestamp)) for e in UsageEvent.objects.all()}:
        mark_hours_dirty(organization_id=organization_id, moments=[hour])
    redo = dirty_rollups_refresh()
    assert redo.hours > 0 and redo.days > 0
    assert rollup_contents() == first
    assert no_dirty_marks()


def test_it_agrees_with_raw_in_partially_refreshed_states(world, data):
    # A refresh cut short by its time budget (or a worker restart) leaves some hours rolled up, some
    # dirty, and days not yet rebuilt: every one of these states must still read like the raw events.
    now = data
    dirty = list(DirtyHour.objects.filter(organization=world.acme).order_by("hour").values_list("hour", flat=True))
    for hour in dirty[::2]:
        hour_rollup_refresh(organization_id=world.acme.pk, hour=hour)
    assert DirtyHour.objects.filter(organization=world.acme).count() == len(dirty) - len(dirty[::2])
    assert DirtyDay.objects.filter(organization=world.acme).exists()
    check_dashboard(world.read, world.acme, now, label="half the hours")

    for hour in dirty[1::2]:
        hour_rollup_refresh(organization_id=world.acme.pk, hour=hour)
    days = list(DirtyDay.objects.filter(organization=world.acme).order_by("day").values_list("day", flat=True))
    rollups.day_rollup_refresh(organization_id=world.acme.pk, day=days[0])
    check_dashboard(world.read, world.acme, now, label="hours done, one day done")


def test_it_keeps_an_hour_dirty_when_an_event_lands_during_its_recompute(world, monkeypatch):
    hour = hour_of(datetime.now(UTC) - 5 * HOUR)
    for i in range(3):
        response = api(world.ingest).post(
            "/api/v1/metrics/track", event(request_id=f"before-{i}", timestamp=iso(hour + timedelta(minutes=10 + i))),
            format="json",
        )
        assert response.status_code == 200, response.content
    recompute = rollups._recompute
    landed = []

    def recompute_then_ingest(organization_id, hours, unit):
        recompute(organization_id, hours, unit)  # the hour's events have been read
        if unit == "hour" and not landed:
            # An event for the same hour is stored (and the hour marked) while the recompute is in flight.
            response = api(world.ingest).post(
                "/api/v1/metrics/track", event(request_id="during", timestamp=iso(hours[0] + timedelta(minutes=40))),
                format="json",
            )
            assert response.status_code == 200, response.content
            landed.append(hours[0])

    monkeypatch.setattr(rollups, "_recompute", recompute_then_ingest)
    dirty_rollups_refresh()

    assert landed == [hour]
    # The recompute did not see the event, so the hour must stay dirty...
    assert DirtyHour.objects.filter(organization=world.acme, hour=hour).exists()
    assert HourlyRollup.objects.get(organization=world.acme, start=hour, is_team_total=True).requests == 3
    # ...and the dashboard counts the event meanwhile (the dirty hour is read from raw events).
    start, end = hour - HOUR, hour + 2 * HOUR
    body = get_dashboard(world.read, start=iso(start), end=iso(end))
    assert body["total_requests"] == 4
    assert_dashboard_equals_raw(body, raw_rows(organization=world.acme, start=start, end=end), label="during")

    monkeypatch.setattr(rollups, "_recompute", recompute)
    dirty_rollups_refresh()

    assert no_dirty_marks()
    assert HourlyRollup.objects.get(organization=world.acme, start=hour, is_team_total=True).requests == 4
    assert DailyRollup.objects.get(organization=world.acme, start=day_of(hour), is_team_total=True).requests == 4
    assert_dashboard_equals_raw(get_dashboard(world.read, start=iso(start), end=iso(end)),
                                raw_rows(organization=world.acme, start=start, end=end), label="next refresh")


def test_a_run_with_a_stale_list_of_marks_skips_the_buckets_another_run_finished(world, data):
    # Runs sharing a backlog each read the marks when they start: a bucket another run has finished
    # since is not recomputed again (that would cost the backlog twice).
    hours = sorted(DirtyHour.objects.filter(organization=world.acme).values_list("hour", flat=True))
    assert rollups.hours_rollup_refresh(organization_id=world.acme.pk, hours=hours) == len(hours)
    days = sorted(DirtyDay.objects.filter(organization=world.acme).values_list("day", flat=True))
    assert rollups.days_rollup_refresh(organization_id=world.acme.pk, days=days) == len(days)
    done = rollup_contents()

    assert rollups.hours_rollup_refresh(organization_id=world.acme.pk, hours=hours) == 0
    assert rollups.days_rollup_refresh(organization_id=world.acme.pk, days=days) == 0
    assert rollup_contents() == done
    # A bucket marked again (a late event) is recomputed, stale list or not.
    late = random_event(random.Random(5), moment=hours[0] + timedelta(minutes=1), request_id="late")
    post_events(world.ingest, [late])
    assert rollups.hours_rollup_refresh(organization_id=world.acme.pk, hours=hours) == 1
    assert DirtyDay.objects.filter(organization=world.acme, day=day_of(hours[0])).exists()


def test_a_backlog_of_more_than_one_chunk_is_shared_by_the_worker_processes(world, settings):
    hour = hour_of(datetime.now(UTC)) - HOUR
    mark_hours_dirty(organization_id=world.acme.pk, moments=[hour - k * HOUR for k in range(rollups.HOURS_PER_CHUNK)])
    assert rollups.helpers_wanted() == 0  # one chunk: nothing to share

    mark_hours_dirty(organization_id=world.globex.pk, moments=[hour])
    on_postgresql = connection.vendor == "postgresql"  # SQLite runs one writer at a time: no helpers
    assert rollups.helpers_wanted() == (settings.ROLLUP_WORKERS - 1 if on_postgresql else 0)
    settings.ROLLUP_WORKERS = 4
    assert rollups.helpers_wanted() == (3 if on_postgresql else 0)
    settings.ROLLUP_WORKERS = 1
    assert rollups.helpers_wanted() == 0
