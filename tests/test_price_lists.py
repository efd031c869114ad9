"""Organization price lists: an override or a discount prices that organization's events, new ones at
ingest and stored ones in the window it covers (repriced in the background, recorded as a run), and
nothing of another organization; ending one gives the platform's price back after that moment.

Celery runs eagerly and commit callbacks are executed, as in tests/test_repricing.py, so each test sees
what a worker does; the arithmetic is checked against test-model's prices ($2 in / $8 out per million)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from billing.models import OrganizationDiscount, OrganizationPrice
from billing.pricing.price_lists import (
    discount_change,
    discount_create,
    discount_delete,
    discount_end,
    override_change,
    override_create,
    override_delete,
    override_end,
)
from metrics.models import RepriceRequest, UsageEvent
from metrics.repricing import reprice_requests_sweep
from metrics.tasks import events_reprice
from tests.budget_support import ingest
from tests.conftest import event, make_price

NOW = datetime.now(UTC).replace(microsecond=0)
OLD = NOW - timedelta(days=3)
MIDDLE = NOW - timedelta(days=2)
RECENT = NOW - timedelta(days=1)


@pytest.fixture(autouse=True)
def _eager_celery(settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    settings.CELERY_TASK_EAGER_PROPAGATES = True


def call(token: str, request_id: str, at: datetime, **overrides) -> dict:
    """1,000 prompt and 500 output tokens of test-model: $0.006 at the platform's price."""
    return event(request_id=request_id, timestamp=at.isoformat(), prompt_tokens=1000, output_tokens=500, **overrides)


@pytest.fixture
def events(world):
    ingest(world.ingest, call(world.ingest, "acme-old", OLD), call(world.ingest, "acme-recent", RECENT))
    ingest(
        world.globex_token,
        call(world.globex_token, "globex-old", OLD),
        call(world.globex_token, "globex-recent", RECENT),
    )
    assert {e.cost for e in UsageEvent.objects.all()} == {Decimal("0.006")}
    return world


def cost(request_id: str) -> Decimal:
    return UsageEvent.objects.get(request_id=request_id).cost


def source(request_id: str) -> str:
    return UsageEvent.objects.get(request_id=request_id).cost_source


def globex_untouched() -> None:
    for request_id in ("globex-old", "globex-recent"):
        stored = UsageEvent.objects.get(request_id=request_id)
        assert (stored.cost, stored.cost_source) == (Decimal("0.006"), "catalog"), request_id


# --- overrides ----------------------------------------------------------------------------------


def test_it_prices_that_organizations_old_and_new_events_with_an_override_and_records_the_run(
    events, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        override = override_create(
            organization=events.acme,
            provider="testprov",
            model="test-model",
            input_per_mtok="1",
            output_per_mtok="4",
            effective_from=OLD - timedelta(hours=1),
        )

    assert cost("acme-old") == cost("acme-recent") == Decimal("0.003")  # 1000 × $1 + 500 × $4 per million
    stored = UsageEvent.objects.get(request_id="acme-old")
    assert (stored.cost_source, stored.list_cost) == ("override", Decimal("0.006"))
    globex_untouched()
    [run] = RepriceRequest.objects.all()
    assert run.organization == events.acme and run.organization_ids == [events.acme.pk]
    assert (run.provider, run.model, run.start, run.end) == ("testprov", "test-model", override.effective_from, None)
    assert (run.events_changed, run.cost_before, run.cost_after) == (2, Decimal("0.012"), Decimal("0.006"))
    assert run.finished_at is not None and "override testprov/test-model created" in run.reason

    ingest(events.ingest, call(events.ingest, "acme-new", NOW))
    ingest(events.globex_token, call(events.globex_token, "globex-new", NOW))
    assert (cost("acme-new"), source("acme-new")) == (Decimal("0.003"), "override")
    assert (cost("globex-new"), source("globex-new")) == (Decimal("0.006"), "catalog")

    assert reprice_requests_sweep() == 0  # a finished run stays as its record and is not run again
    assert RepriceRequest.objects.filter(finished_at__isnull=False).count() == 1


def test_it_restores_the_platform_price_after_an_override_ends(events, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        override = override_create(
            organization=events.acme,
            provider="testprov",
            model="test-model",
            input_per_mtok="1",
            output_per_mtok="4",
            cache_read_per_mtok="0.25",
            effective_from=OLD - timedelta(hours=1),
        )
    assert cost("acme-recent") == Decimal("0.003")

    with django_capture_on_commit_callbacks(execute=True):
        override_end(override=override, at=MIDDLE)

    assert (cost("acme-old"), source("acme-old")) == (Decimal("0.003"), "override")
    assert (cost("acme-recent"), source("acme-recent")) == (Decimal("0.006"), "catalog")
    ingest(events.ingest, call(events.ingest, "acme-after", NOW))
    assert (cost("acme-after"), source("acme-after")) == (Decimal("0.006"), "catalog")
    globex_untouched()
    ended = RepriceRequest.objects.order_by("id").last()
    assert ended.reason.endswith("ended") and ended.events_changed == 1
    assert (ended.cost_before, ended.cost_after) == (Decimal("0.003"), Decimal("0.006"))


def test_it_reprices_the_old_and_the_new_window_when_an_override_moves(events, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        override = override_create(
            organization=events.acme,
            provider="testprov",
            model="test-model",
            input_per_mtok="1",
            output_per_mtok="4",
            effective_from=MIDDLE,
        )
    assert (cost("acme-old"), cost("acme-recent")) == (Decimal("0.006"), Decimal("0.003"))

    with django_capture_on_commit_callbacks(execute=True):
        override_change(override=override, effective_from=OLD - timedelta(hours=1), effective_until=MIDDLE)

    assert (cost("acme-old"), cost("acme-recent")) == (Decimal("0.003"), Decimal("0.006"))
    moved = RepriceRequest.objects.order_by("id").last()
    assert (moved.start, moved.end) == (OLD - timedelta(hours=1), None)  # the union of both windows
    assert moved.events_changed == 2

    with django_capture_on_commit_callbacks(execute=True):
        override_delete(override=override)
    assert cost("acme-old") == Decimal("0.006") and not OrganizationPrice.objects.exists()
    globex_untouched()


def test_it_prices_a_model_the_platform_has_no_price_for_with_an_override(world, django_capture_on_commit_callbacks):
    ingest(world.ingest, call(world.ingest, "mystery", OLD, model="mystery-model", provider="acmeai"))
    assert source("mystery") == "unpriced"
    with django_capture_on_commit_callbacks(execute=True):
        override_create(
            organization=world.acme,
            provider="acmeai",
            model="mystery-model",
            input_per_mtok="10",
            output_per_mtok="20",
            effective_from=OLD - timedelta(days=1),
        )
    assert (cost("mystery"), source("mystery")) == (Decimal("0.02"), "override")


# --- discounts ----------------------------------------------------------------------------------


def test_it_discounts_that_organizations_events_and_a_markup_raises_them(events, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        discount = discount_create(organization=events.acme, percent="25", effective_from=OLD - timedelta(hours=1))

    assert (cost("acme-old"), source("acme-old")) == (Decimal("0.0045"), "discount")
    assert UsageEvent.objects.get(request_id="acme-old").list_cost == Decimal("0.006")
    globex_untouched()
    [run] = RepriceRequest.objects.all()
    assert (run.provider, run.model, run.organization_ids) == ("", "", [events.acme.pk])
    assert (run.events_changed, run.cost_before, run.cost_after) == (2, Decimal("0.012"), Decimal("0.009"))
    ingest(events.ingest, call(events.ingest, "acme-new", NOW))
    assert cost("acme-new") == Decimal("0.0045")

    with django_capture_on_commit_callbacks(execute=True):
        discount_change(discount=discount, percent="-10")
    assert cost("acme-old") == cost("acme-new") == Decimal("0.0066")

    with django_capture_on_commit_callbacks(execute=True):
        discount_end(discount=discount, at=MIDDLE)
    assert (cost("acme-old"), cost("acme-recent"), cost("acme-new")) == (
        Decimal("0.0066"),
        Decimal("0.006"),
        Decimal("0.006"),
    )

    with django_capture_on_commit_callbacks(execute=True):
        discount_delete(discount=discount)
    assert cost("acme-old") == Decimal("0.006")
    globex_untouched()


def test_the_most_specific_discount_applies_and_a_provider_discount_leaves_other_providers(
    events, django_capture_on_commit_callbacks
):
    make_price("other-model", input="1", output="1", provider="otherprov")
    ingest(events.ingest, call(events.ingest, "acme-other", OLD, model="other-model"))
    with django_capture_on_commit_callbacks(execute=True):
        discount_create(organization=events.acme, percent="10", provider="testprov", effective_from=OLD - timedelta(1))
        discount_create(
            organization=events.acme,
            percent="50",
            provider="testprov",
            model="test-model",
            effective_from=OLD - timedelta(1),
        )
    assert cost("acme-old") == Decimal("0.003")
    assert (cost("acme-other"), source("acme-other")) == (Decimal("0.0015"), "catalog")
    globex_untouched()


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"input_per_mtok": "abc"}, "input_per_mtok"),
        ({"input_per_mtok": None}, "input_per_mtok"),
        ({"input_per_mtok": "-1"}, "input_per_mtok"),
        ({"output_per_mtok": "1e9"}, "output_per_mtok"),
        ({"cache_read_per_mtok": "0.00000000001"}, "cache_read_per_mtok"),
        ({"effective_until": OLD - timedelta(days=1)}, "effective_until"),
        ({"effective_from": datetime(2026, 1, 1)}, "effective_from"),  # a naive time is refused
        ({"model": ""}, "model"),
        ({"extra_prices": {"no_such_mtok": "1"}}, "extra_prices"),
    ],
)
def test_it_refuses_an_invalid_override_naming_the_field(world, changes, field):
    values = {
        "organization": world.acme,
        "provider": "testprov",
        "model": "test-model",
        "input_per_mtok": "1",
        "output_per_mtok": "2",
        "effective_from": OLD,
    }
    with pytest.raises(ValidationError) as refused:
        override_create(**{**values, **changes})
    assert field in refused.value.message_dict
    assert not OrganizationPrice.objects.exists() and not RepriceRequest.objects.exists()


@pytest.mark.parametrize("percent", ["100.5", "-1000.01", "ten", "NaN", "12.34567", ""])
def test_it_refuses_a_discount_out_of_range(world, percent):
    with pytest.raises(ValidationError) as refused:
        discount_create(organization=world.acme, percent=percent)
    assert "percent" in refused.value.message_dict
    assert not OrganizationDiscount.objects.exists()


def test_it_refuses_to_end_an_entry_before_it_starts(world):
    discount = discount_create(organization=world.acme, percent="5", effective_from=MIDDLE)
    with pytest.raises(ValidationError) as refused:
        discount_end(discount=discount, at=OLD)
    assert "effective_until" in refused.value.message_dict
    discount.refresh_from_db()
    assert discount.effective_until is None


def test_a_platform_price_change_concerns_every_organization(events, django_capture_on_commit_callbacks):
    from billing.pricing.services import reprice_after_change

    with django_capture_on_commit_callbacks(execute=True):
        reprice_after_change(provider="testprov", model="test-model", effective_from=OLD)
    [run] = RepriceRequest.objects.all()
    assert run.organization is None and run.organization_ids is None and run.finished_at is not None


def test_a_run_that_could_not_be_queued_is_finished_by_the_sweep(
    events, monkeypatch, django_capture_on_commit_callbacks
):
    def unreachable(*args, **kwargs):
        raise ConnectionError("broker away")

    monkeypatch.setattr(events_reprice, "delay", unreachable)
    with django_capture_on_commit_callbacks(execute=True):
        discount_create(organization=events.acme, percent="50", effective_from=OLD - timedelta(hours=1))
    [run] = RepriceRequest.objects.all()
    assert run.finished_at is None and cost("acme-old") == Decimal("0.006")

    assert reprice_requests_sweep() == 2
    run.refresh_from_db()
    assert run.finished_at is not None and run.events_changed == 2 and cost("acme-old") == Decimal("0.003")
    globex_untouched()


# --- commands -------------------------------------------------------------------------------------


def run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_price_override_creates_an_override(events, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        out = run(
            "price_override",
            "acme",
            "--provider",
            "testprov",
            "--model",
            "test-model",
            "--input",
            "1",
            "--output",
            "4",
            "--cache-read",
            "0.1",
            "--cache-write",
            "1.25",
            "--from",
            "2020-01-01",
            "--until",
            "2100-01-01T00:00:00+00:00",
        )
    override = OrganizationPrice.objects.get()
    assert (override.organization, override.input_per_mtok, override.cache_write_per_mtok) == (
        events.acme,
        Decimal(1),
        Decimal("1.25"),
    )
    assert override.effective_from == datetime(2020, 1, 1, tzinfo=UTC)
    assert override.effective_until == datetime(2100, 1, 1, tzinfo=UTC)
    assert f"Created override {override.pk} for acme: testprov/test-model input $1/1M" in out
    assert cost("acme-old") == Decimal("0.003")
    globex_untouched()


def test_price_discount_creates_a_discount_or_a_markup(events, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        out = run("price_discount", "acme", "-5", "--provider", "testprov", "--from", "2020-01-01")
    discount = OrganizationDiscount.objects.get()
    assert (discount.percent, discount.provider, discount.model) == (Decimal(-5), "testprov", "")
    assert "a 5% markup on testprov" in out
    assert cost("acme-old") == Decimal("0.0063")
    out = run("price_discount", "acme", "12.5", "--model", "test-model")
    assert "12.5% off test-model" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("price_override", "nope", "--provider", "p", "--model", "m", "--input", "1", "--output", "1"),
            "No organization 'nope'",
        ),
        (
            ("price_override", "acme", "--provider", "p", "--model", "m", "--input", "cheap", "--output", "1"),
            "--input must be a number",
        ),
        (("price_override", "acme", "--provider", "p", "--model", "m", "--input", "-1", "--output", "1"), "--input:"),
        (
            (
                "price_override",
                "acme",
                "--provider",
                "p",
                "--model",
                "m",
                "--input",
                "1",
                "--output",
                "1",
                "--from",
                "yesterday",
            ),
            "--from must be an ISO 8601",
        ),
        (
            (
                "price_override",
                "acme",
                "--provider",
                "p",
                "--model",
                "m",
                "--input",
                "1",
                "--output",
                "1",
                "--from",
                "2026-02-01",
                "--until",
                "2026-01-01",
            ),
            "--until: Must be after effective_from",
        ),
        (("price_discount", "nope", "10"), "No organization 'nope'"),
        (("price_discount", "acme", "lots"), "PERCENT must be a number"),
        (("price_discount", "acme", "150"), "PERCENT:"),
        (("price_discount", "acme", "10", "--until", "2026-13-01"), "--until must be an ISO 8601"),
    ],
)
def test_the_commands_refuse_bad_input(world, args, message):
    with pytest.raises(CommandError, match=message.replace("$", r"\$")):
        run(*args)
    assert not OrganizationPrice.objects.exists() and not OrganizationDiscount.objects.exists()
