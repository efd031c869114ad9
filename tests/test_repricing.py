"""A price saved in the Django admin reprices the events in that price's window, and the rollups follow.

The admin's save records a reprice request and queues `events_reprice` after commit; here Celery runs
eagerly (in-process) and the commit callbacks are executed, so each test sees exactly what a worker
would do. Every event's expected cost is computed from the price table in Python: the row for its model
in force at its timestamp, or unpriced.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from kombu.exceptions import OperationalError as KombuOperationalError

from billing.models import EPOCH, ModelPrice
from metrics.models import DirtyHour, RepriceRequest, UsageEvent
from metrics.repricing import REPRICE_CLAIM_TIMEOUT, reprice_requests_sweep
from metrics.rollups import dirty_rollups_refresh
from metrics.services import usage_events_reprice
from metrics.tasks import events_reprice
from tests.conftest import make_price
from tests.rollup_support import (
    DAY,
    HOUR,
    assert_dashboard_equals_raw,
    assert_rollups_equal_raw,
    get_dashboard,
    hour_of,
    iso,
    no_dirty_marks,
    post_events,
    random_event,
    raw_rows,
)

MILLION = Decimal(1_000_000)
# Which price series each requested model name belongs to (test-model-mini: test-model's glob).
SERIES = {
    "test-model": ("testprov", "test-model"),
    "test-model-mini": ("testprov", "test-model"),
    "other-model": ("otherprov", "other-model"),
    "brand-new-model": ("newco", "brand-new-model"),
}


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _eager_celery(settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    settings.CELERY_TASK_EAGER_PROPAGATES = True  # a failing reprice fails the test, not silently


def expected_cost(event: UsageEvent, series=SERIES) -> tuple[bool, Decimal]:
    """(is_priced, cost) under the current price table."""
    key = series.get(event.model_requested)
    rows = [] if key is None else sorted(
        ModelPrice.objects.filter(provider=key[0], model=key[1], effective_from__lte=event.timestamp),
        key=lambda r: r.effective_from,
    )
    if not rows:
        return False, event.client_cost or Decimal(0)
    price = rows[-1]
    cache_read = price.input_per_mtok if price.cache_read_per_mtok is None else price.cache_read_per_mtok
    cache_write = price.input_per_mtok if price.cache_write_per_mtok is None else price.cache_write_per_mtok
    cached, written = event.cached_tokens, event.cache_write_tokens
    cost = ((event.prompt_tokens - cached - written) * price.input_per_mtok + cached * cache_read
            + written * cache_write + event.output_tokens * price.output_per_mtok) / MILLION
    return True, cost


def assert_every_event_priced_by_the_table(series=SERIES) -> None:
    wrong = []
    for e in UsageEvent.objects.all():
        is_priced, cost = expected_cost(e, series)
        if (e.is_priced, e.cost) != (is_priced, cost):
            wrong.append((e.request_id, e.timestamp.isoformat(), e.model_requested, e.is_priced, e.cost,
                          "expected", is_priced, cost))
    assert not wrong, f"{len(wrong)} events mispriced, e.g. {wrong[:3]}"


def assert_dashboards_equal_raw(world, label: str) -> None:
    now = datetime.now(UTC)
    for token, organization in ((world.read, world.acme), (world.globex_token, world.globex)):
        for start, end in ((now - 4 * DAY, now), (hour_of(now) - 70 * HOUR + timedelta(minutes=13), now)):
            body = get_dashboard(token, start=iso(start), end=iso(end))
            assert_dashboard_equals_raw(body, raw_rows(organization=organization, start=start, end=end),
                                        label=f"{label} {organization.slug}")


def admin_client() -> Client:
    user = get_user_model().objects.create_superuser("root", "root@example.test", "pw-root-1")
    client = Client()
    client.force_login(user)
    return client


def form_data(row: ModelPrice, **changes) -> dict:
    data = {
        "provider": row.provider,
        "model": row.model,
        "match_patterns": json.dumps(row.match_patterns),
        "input_per_mtok": str(row.input_per_mtok),
        "output_per_mtok": str(row.output_per_mtok),
        "cache_read_per_mtok": "" if row.cache_read_per_mtok is None else str(row.cache_read_per_mtok),
        "cache_write_per_mtok": "" if row.cache_write_per_mtok is None else str(row.cache_write_per_mtok),
        "effective_from_0": row.effective_from.strftime("%Y-%m-%d"),
        "effective_from_1": row.effective_from.strftime("%H:%M:%S"),
        "_save": "Save",
    }
    data.update(changes)
    return data


def admin_post(client: Client, url: str, data: dict, django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client.post(url, data)
    form = response.context["adminform"].form if response.status_code == 200 and response.context else None
    assert response.status_code == 302, form.errors if form is not None else response.content[:500]
    assert callbacks, "saving a price queued no repricing"


@pytest.fixture
def priced(world):
    """A second test-model price from 24 hours ago, events under each row, other models, unpriced events
    and globex events; rolled up. Returns the later row."""
    rng = random.Random(7)
    now = datetime.now(UTC)
    later = make_price("test-model", input="3", output="12", cache_read="1", start=hour_of(now - DAY),
                       patterns=["test-model-*"])
    make_price("other-model", input="0.15", output="0.6", provider="otherprov")

    def batch(prefix, hours_ago, models, count, token=world.ingest):
        return [random_event(rng, moment=now - timedelta(hours=hours_ago, minutes=rng.uniform(0, 50)),
                             request_id=f"{prefix}-{i}", models=models) for i in range(count)]

    post_events(world.ingest, batch("early", 50, ("test-model", "test-model-mini"), 20)  # under the EPOCH row
                + batch("recent", 10, ("test-model",), 12)  # under the later row
                + batch("between", 20, ("test-model",), 6)  # under the later row, before moving it to 5h ago
                + batch("other", 40, ("other-model",), 8)
                + batch("unpriced", 30, ("brand-new-model",), 7))
    post_events(world.globex_token, batch("g-early", 45, ("test-model",), 9))
    assert UsageEvent.objects.filter(is_priced=False).count() == 7
    dirty_rollups_refresh()
    assert no_dirty_marks()
    assert_every_event_priced_by_the_table()
    return later


def test_it_reprices_the_window_of_a_price_changed_in_the_admin_and_refreshes_rollups(
        world, priced, django_capture_on_commit_callbacks):
    epoch_row = ModelPrice.objects.get(model="test-model", effective_from=EPOCH)
    untouched = {e.request_id: e.cost for e in UsageEvent.objects.exclude(request_id__startswith="early")
                 .exclude(request_id__startswith="g-early")}
    early_hours = {hour_of(e.timestamp) for e in UsageEvent.objects.filter(request_id__contains="early-")}

    admin_post(admin_client(), f"/admin/billing/modelprice/{epoch_row.pk}/change/",
               form_data(epoch_row, input_per_mtok="4", output_per_mtok="16", cache_read_per_mtok="1.5"),
               django_capture_on_commit_callbacks)

    epoch_row.refresh_from_db()
    assert (epoch_row.input_per_mtok, epoch_row.admin_edited) == (Decimal("4"), True)
    assert_every_event_priced_by_the_table()
    # Events under the later row, of other models and unpriced ones keep their cost.
    assert {e.request_id: e.cost for e in UsageEvent.objects.filter(request_id__in=untouched)} == untouched
    # Exactly the repriced hours (of both organizations) await the rollup; meanwhile reads are raw-exact.
    assert set(DirtyHour.objects.values_list("hour", flat=True)) == early_hours
    assert set(DirtyHour.objects.values_list("organization_id", flat=True)) == {world.acme.pk, world.globex.pk}
    assert_dashboards_equal_raw(world, "repriced, before refresh")

    dirty_rollups_refresh()

    assert no_dirty_marks()
    assert_rollups_equal_raw()
    assert_dashboards_equal_raw(world, "repriced, after refresh")


@pytest.mark.parametrize(("move_to_hours_ago", "label"), [(60, "earlier"), (5, "later")])
def test_it_reprices_both_windows_when_a_price_row_is_moved(world, priced, move_to_hours_ago, label,
                                                            django_capture_on_commit_callbacks):
    # Moved earlier (24h → 60h ago) the row now governs the 50h-old events; moved later (24h → 5h ago)
    # it no longer governs the 10h- and 20h-old ones, which go back to the EPOCH row's price.
    new_start = hour_of(datetime.now(UTC) - timedelta(hours=move_to_hours_ago))
    admin_post(admin_client(), f"/admin/billing/modelprice/{priced.pk}/change/",
               form_data(priced, effective_from_0=new_start.strftime("%Y-%m-%d"),
                         effective_from_1=new_start.strftime("%H:%M:%S")),
               django_capture_on_commit_callbacks)

    priced.refresh_from_db()
    assert priced.effective_from == new_start
    assert_every_event_priced_by_the_table()
    changed = "early" if label == "earlier" else "recent"
    assert UsageEvent.objects.filter(request_id__startswith=changed).exists()
    assert DirtyHour.objects.exists()
    assert_dashboards_equal_raw(world, f"moved {label}, before refresh")
    dirty_rollups_refresh()
    assert no_dirty_marks()
    assert_rollups_equal_raw()
    assert_dashboards_equal_raw(world, f"moved {label}, after refresh")


def test_it_prices_unpriced_events_when_a_matching_price_is_added_in_the_admin(
        world, priced, django_capture_on_commit_callbacks):
    before = get_dashboard(world.read, time_range_hours=72)
    assert before["unpriced_requests"] == 7

    admin_post(admin_client(), "/admin/billing/modelprice/add/", {
        "provider": "newco", "model": "brand-new-model", "match_patterns": "[]", "input_per_mtok": "1",
        "output_per_mtok": "2", "cache_read_per_mtok": "", "cache_write_per_mtok": "",
        "effective_from_0": "2020-01-01", "effective_from_1": "00:00:00", "_save": "Save",
    }, django_capture_on_commit_callbacks)

    assert not UsageEvent.objects.filter(is_priced=False).exists()
    assert_every_event_priced_by_the_table()
    assert UsageEvent.objects.filter(model="brand-new-model", price__provider="newco").count() == 7
    assert_dashboards_equal_raw(world, "newly priced, before refresh")
    dirty_rollups_refresh()
    assert no_dirty_marks()
    assert_rollups_equal_raw()
    after = get_dashboard(world.read, time_range_hours=72)
    assert after["unpriced_requests"] == 0
    assert after["model_usage"]["brand-new-model"]["count"] == 7
    assert_dashboards_equal_raw(world, "newly priced, after refresh")


def test_it_reprices_the_events_of_a_price_row_deleted_in_the_admin(world, priced,
                                                                     django_capture_on_commit_callbacks):
    # Without the later row, the EPOCH row is the price in force for the 10h- and 20h-old events.
    client = admin_client()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/admin/billing/modelprice/{priced.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not ModelPrice.objects.filter(pk=priced.pk).exists()

    assert_every_event_priced_by_the_table()
    dirty_rollups_refresh()
    assert_rollups_equal_raw()
    assert_dashboards_equal_raw(world, "row deleted")


def test_it_reprices_events_named_by_a_new_exact_price_that_another_price_matched_by_pattern(
        world, priced, django_capture_on_commit_callbacks):
    # test-model-mini was priced through test-model's glob; an exact price for it, in force for all time,
    # is the one ingest now uses for that name, and the stored events must be charged at it as well.
    admin_post(admin_client(), "/admin/billing/modelprice/add/", {
        "provider": "testprov", "model": "test-model-mini", "match_patterns": "[]", "input_per_mtok": "1",
        "output_per_mtok": "1", "cache_read_per_mtok": "", "cache_write_per_mtok": "",
        "effective_from_0": "1970-01-01", "effective_from_1": "00:00:00", "_save": "Save",
    }, django_capture_on_commit_callbacks)

    fresh = post_and_get(world, model="test-model-mini")
    assert (fresh.model, fresh.price.model) == ("test-model-mini", "test-model-mini")  # ingest uses it
    assert_every_event_priced_by_the_table({**SERIES, "test-model-mini": ("testprov", "test-model-mini")})


def post_and_get(world, **overrides) -> UsageEvent:
    body = random_event(random.Random(3), moment=datetime.now(UTC) - timedelta(hours=50), request_id="fresh")
    body.update(overrides)
    post_events(world.ingest, [body])
    return UsageEvent.objects.get(request_id="fresh")


def test_it_reprices_directly_through_the_service_idempotently_and_in_chunks(world, priced):
    ModelPrice.objects.filter(model="test-model", effective_from=EPOCH).update(
        input_per_mtok=Decimal("2.5"), output_per_mtok=Decimal("9"))
    in_window = UsageEvent.objects.filter(timestamp__lt=priced.effective_from, model="test-model").count()
    assert in_window == 29  # 20 early (both names) + 9 globex

    updated = usage_events_reprice(provider="testprov", model="test-model", start=EPOCH,
                                   end=priced.effective_from, chunk_size=4)

    assert updated.updated == in_window and updated.failed_organizations == []
    assert_every_event_priced_by_the_table()
    assert usage_events_reprice(provider="testprov", model="test-model", start=EPOCH,
                                end=priced.effective_from).updated == 0  # nothing changes a second time
    assert DirtyHour.objects.count() == len({(e.organization_id, hour_of(e.timestamp)) for e in
                                             UsageEvent.objects.filter(timestamp__lt=priced.effective_from,
                                                                       model="test-model")})
    assert_dashboards_equal_raw(world, "service, before refresh")
    dirty_rollups_refresh()
    assert no_dirty_marks()
    assert_rollups_equal_raw()
    assert_dashboards_equal_raw(world, "service, after refresh")


def test_a_price_saved_while_the_queue_is_unreachable_is_repriced_by_the_sweep(
        world, priced, monkeypatch, django_capture_on_commit_callbacks):
    # The broker down when the admin saves (Redis away): queueing raises, as kombu does then.
    def unreachable(*args, **kwargs):
        raise KombuOperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(events_reprice, "delay", unreachable)
    epoch_row = ModelPrice.objects.get(model="test-model", effective_from=EPOCH)
    early = UsageEvent.objects.filter(request_id__startswith="early-").first()
    old_cost = early.cost

    admin_post(admin_client(), f"/admin/billing/modelprice/{epoch_row.pk}/change/",
               form_data(epoch_row, input_per_mtok="4", output_per_mtok="16", cache_read_per_mtok="1.5"),
               django_capture_on_commit_callbacks)

    early.refresh_from_db()
    assert early.cost == old_cost  # the price is saved, its events not yet repriced...
    [request] = RepriceRequest.objects.all()  # ...but the work is recorded
    assert (request.provider, request.model, request.start, request.end) == (
        "testprov", "test-model", EPOCH, priced.effective_from)

    assert reprice_requests_sweep() > 0  # beat's sweep, a minute later
    assert_every_event_priced_by_the_table()
    assert not RepriceRequest.objects.filter(finished_at__isnull=True).exists()  # kept as the run's record
    assert reprice_requests_sweep() == 0
    dirty_rollups_refresh()
    assert_rollups_equal_raw()


def test_a_claimed_repricing_is_left_to_its_worker_until_the_claim_times_out(world, priced):
    epoch_row = ModelPrice.objects.get(model="test-model", effective_from=EPOCH)
    ModelPrice.objects.filter(pk=epoch_row.pk).update(input_per_mtok=Decimal(4))
    now = datetime.now(UTC)
    request = RepriceRequest.objects.create(provider="testprov", model="test-model", start=EPOCH,
                                            end=priced.effective_from, claimed_at=now)

    assert reprice_requests_sweep(now=now) == 0  # a live worker holds it
    assert RepriceRequest.objects.filter(pk=request.pk).exists()
    assert reprice_requests_sweep(now=now + REPRICE_CLAIM_TIMEOUT + timedelta(seconds=1)) > 0  # it died
    assert_every_event_priced_by_the_table()
    assert not RepriceRequest.objects.filter(finished_at__isnull=True).exists()  # kept as the run's record
