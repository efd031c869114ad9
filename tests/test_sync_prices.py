"""`sync_prices` loads the bundled catalog offline and idempotently; admin edits survive and apply at once."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from io import StringIO

import pytest
from django.contrib.admin.sites import site as admin_site
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import transaction
from django.test import Client, RequestFactory

from billing.models import EPOCH, ModelPrice
from billing.pricing.admin import ModelPriceAdmin
from billing.pricing.book import forget_price_book, price_book
from metrics.models import UsageEvent
from tests.conftest import api, event


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # world creates four users; PBKDF2 would make that a second per test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

SUMMARY = re.compile(r"(\d+) created, (\d+) updated, (\d+) unchanged, (\d+) admin-edited rows kept")


def sync() -> dict[str, int]:
    out = StringIO()
    call_command("sync_prices", stdout=out)
    match = SUMMARY.search(out.getvalue())
    assert match, out.getvalue()
    return dict(zip(("created", "updated", "unchanged", "kept"), map(int, match.groups()), strict=True))


def snapshot() -> list[tuple]:
    fields = [f.attname for f in ModelPrice._meta.concrete_fields]
    return list(ModelPrice.objects.order_by("provider", "model", "effective_from").values_list(*fields))


def admin_client() -> Client:
    user = get_user_model().objects.create_superuser("root", "root@example.test", "pw-root-1")
    client = Client()
    client.force_login(user)
    return client


def change_form_data(row: ModelPrice, **changes) -> dict:
    """The change form as a browser posts it: every editable field, as text."""
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


def post_change(client: Client, row: ModelPrice, **changes):
    response = client.post(f"/admin/billing/modelprice/{row.pk}/change/", change_form_data(row, **changes))
    errors = response.context["adminform"].form.errors if response.status_code == 200 and response.context else None
    assert response.status_code == 302, errors or response.content[:500]
    return response


def cost_of(token: str, **overrides) -> Decimal:
    response = api(token).post("/api/v1/metrics/track", event(**overrides), format="json")
    assert response.status_code == 200, response.content
    return UsageEvent.objects.get(request_id=response.json()["request_id"]).cost


# --- admin edits apply at once (no catalog needed) ------------------------------------------------------


def test_it_applies_a_price_saved_in_the_admin_to_the_next_event_in_this_process(world):
    assert cost_of(world.ingest) == Decimal("0.006")  # 1000 × 2 + 500 × 8; the book is now cached
    row = ModelPrice.objects.get(model="test-model")
    post_change(admin_client(), row, input_per_mtok="4", output_per_mtok="16")

    row.refresh_from_db()
    assert row.input_per_mtok == Decimal("4") and row.admin_edited is True
    assert cost_of(world.ingest) == Decimal("0.012")  # 1000 × 4 + 500 × 16, without waiting for a refresh


def test_it_applies_a_price_added_in_the_admin_at_once(world):
    unpriced = api(world.ingest).post("/api/v1/metrics/track", event(model="brand-new-model"), format="json")
    assert unpriced.json()["priced"] is False
    client = admin_client()
    response = client.post("/admin/billing/modelprice/add/", {
        "provider": "newco", "model": "brand-new-model", "match_patterns": "[]",
        "input_per_mtok": "1", "output_per_mtok": "2", "cache_read_per_mtok": "", "cache_write_per_mtok": "",
        "effective_from_0": "2020-01-01", "effective_from_1": "00:00:00", "_save": "Save",
    })
    assert response.status_code == 302, response.content[:500]
    added = ModelPrice.objects.get(model="brand-new-model")
    assert added.source == ModelPrice.Source.ADMIN
    assert cost_of(world.ingest, model="brand-new-model") == Decimal("0.002")  # 1000 × 1 + 500 × 2


def test_it_marks_a_row_saved_through_model_price_admin_as_admin_edited(world):
    row = ModelPrice.objects.get(model="test-model")
    price_book()  # cached
    row.input_per_mtok = Decimal("3")
    request = RequestFactory().post("/admin/")
    model_admin = ModelPriceAdmin(ModelPrice, admin_site)
    form = model_admin.get_form(request, row, change=True)(instance=row)
    model_admin.save_model(request, row, form=form, change=True)
    row.refresh_from_db()
    assert row.admin_edited is True
    assert price_book().price_at(("testprov", "test-model"), EPOCH).input_per_mtok == Decimal("3")


def test_it_stops_applying_a_price_deleted_in_the_admin_at_once(world):
    assert cost_of(world.ingest, model="doomed-model-x") == Decimal("0")  # unpriced; loads the book
    doomed = ModelPrice.objects.create(provider="testprov", model="doomed-model", input_per_mtok=1,
                                       output_per_mtok=1, effective_from=EPOCH)
    forget_price_book()
    assert cost_of(world.ingest, model="doomed-model") == Decimal("0.0015")  # the book now holds it
    response = admin_client().post(f"/admin/billing/modelprice/{doomed.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not ModelPrice.objects.filter(pk=doomed.pk).exists()

    response = api(world.ingest).post("/api/v1/metrics/track", event(model="doomed-model"), format="json")
    assert response.status_code == 200, response.content
    stored = UsageEvent.objects.get(request_id=response.json()["request_id"])
    is_priced, price_id = stored.is_priced, stored.price_id
    stored.delete()  # a dangling price_id would otherwise fail the database's constraint check at teardown
    # The price is gone: the event must not be priced by, or point at, the deleted row (outside a test the
    # dangling foreign key fails the INSERT's commit with IntegrityError: a 500 for the client).
    assert (is_priced, price_id) == (False, None), f"priced by deleted ModelPrice {price_id}"


# --- the real catalog ------------------------------------------------------------------------------------
# One sync for the module, inside a transaction rolled back at the end of the module; each test's own
# changes (further syncs, admin edits) are rolled back after the test.


@pytest.fixture(scope="module")
def first_sync(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        outer = transaction.atomic()
        outer.__enter__()
        try:
            assert not ModelPrice.objects.exists()
            result = sync()
            forget_price_book()
            yield result
        finally:
            transaction.set_rollback(True)
            outer.__exit__(None, None, None)
            forget_price_book()


def test_it_loads_thousands_of_prices_from_the_bundled_catalog(first_sync, db):
    assert first_sync["created"] > 1000
    assert (first_sync["updated"], first_sync["unchanged"], first_sync["kept"]) == (0, 0, 0)
    assert ModelPrice.objects.count() == first_sync["created"]
    assert set(ModelPrice.objects.values_list("source", flat=True)) == {ModelPrice.Source.CATALOG}
    providers = set(ModelPrice.objects.values_list("provider", flat=True))
    assert {"openai", "anthropic", "google"} <= providers
    gpt4o = ModelPrice.objects.get(provider="openai", model="gpt-4o")
    assert (gpt4o.input_per_mtok, gpt4o.output_per_mtok, gpt4o.cache_read_per_mtok) == (
        Decimal("2.5"), Decimal("10"), Decimal("1.25"))


def test_it_syncs_offline(first_sync, db, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("sync_prices tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    assert sync()["created"] == 0


def test_it_changes_nothing_when_synced_a_second_time(first_sync, db):
    before = snapshot()
    again = sync()
    assert (again["created"], again["updated"]) == (0, 0)
    assert again["unchanged"] == first_sync["created"]
    assert snapshot() == before


def test_it_keeps_an_admin_edited_catalog_price_through_another_sync(first_sync, world):
    row = ModelPrice.objects.get(provider="openai", model="gpt-4o", effective_from=EPOCH)
    assert cost_of(world.ingest, model="gpt-4o") == Decimal("0.0075")  # catalog: 1000 × 2.5 + 500 × 10
    post_change(admin_client(), row, input_per_mtok="2", output_per_mtok="8", cache_read_per_mtok="1")

    # The admin's price applies at once in this process ...
    assert cost_of(world.ingest, model="gpt-4o") == Decimal("0.006")

    # ... and the next sync leaves it alone, and changes nothing else.
    others_before = [r for r in snapshot() if r[0] != row.pk]
    result = sync()
    assert (result["created"], result["updated"], result["kept"]) == (0, 0, 1)
    row.refresh_from_db()
    assert (row.input_per_mtok, row.output_per_mtok, row.cache_read_per_mtok) == (
        Decimal("2"), Decimal("8"), Decimal("1"))
    assert row.admin_edited is True
    assert [r for r in snapshot() if r[0] != row.pk] == others_before
    forget_price_book()
    assert cost_of(world.ingest, model="gpt-4o") == Decimal("0.006")


def test_it_restores_a_catalog_price_changed_outside_the_admin(first_sync, db):
    # A row nobody marked as admin-edited follows the catalog: a stray change is put back.
    ModelPrice.objects.filter(provider="openai", model="gpt-4o").update(input_per_mtok=Decimal("99"))
    result = sync()
    assert (result["created"], result["updated"]) == (0, 1)
    assert ModelPrice.objects.get(provider="openai", model="gpt-4o").input_per_mtok == Decimal("2.5")
