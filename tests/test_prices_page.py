"""The Prices page: every member reads the platform's prices beside the organization's, its price list
and its repricing runs; owners and admins add, change, end and delete entries; outsiders get 404.
And the Django admin of overrides and discounts, which reprices like the page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from billing.models import OrganizationDiscount, OrganizationPrice
from billing.pricing.price_lists import discount_create, override_create
from metrics.models import RepriceRequest, UsageEvent
from tests.budget_support import ingest
from tests.conftest import event, make_price
from tests.web_support import client_for, counting, page_settings, users_by_role

PAGE = "/o/acme/prices/"
THEN = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)


@pytest.fixture(autouse=True)
def _settings(settings):
    page_settings(settings)
    settings.CELERY_TASK_ALWAYS_EAGER = True
    settings.CELERY_TASK_EAGER_PROPAGATES = True


@pytest.fixture
def users(world):
    return users_by_role(world)


@pytest.fixture
def listed(world):
    """An acme override and discount, and a globex one nobody in acme may see."""
    make_price("other-model", input="1", output="3", provider="otherprov")
    return {
        "override": override_create(
            organization=world.acme,
            provider="testprov",
            model="test-model",
            input_per_mtok="1",
            output_per_mtok="4",
            effective_from=THEN,
            note="contract 7",
        ),
        "discount": discount_create(organization=world.acme, percent="20", provider="otherprov", effective_from=THEN),
        "globex": discount_create(organization=world.globex, percent="33", effective_from=THEN, note="globex deal"),
    }


def override_form(**changes) -> dict:
    data = {
        "provider": "testprov",
        "model": "test-model",
        "input_per_mtok": "1",
        "output_per_mtok": "4",
        "cache_read_per_mtok": "",
        "cache_write_per_mtok": "",
        "extra_prices": "",
        "effective_from": (THEN - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S"),
        "effective_until": "",
        "note": "",
    }
    data.update(changes)
    return data


def discount_form(**changes) -> dict:
    data = {"percent": "10", "provider": "", "model": "", "effective_from": "", "effective_until": "", "note": ""}
    data.update(changes)
    return data


# --- who sees what --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "status"),
    [("owner", 200), ("admin", 200), ("member", 200), ("viewer", 200), ("outsider", 404), ("anonymous", 302)],
)
def test_it_shows_the_page_to_the_organization_only(world, users, listed, role, status):
    response = client_for(users[role]).get(PAGE)
    assert response.status_code == status
    if status == 200:
        body = response.content.decode()
        assert "contract 7" in body and "globex deal" not in body
        assert "test-model" in body and "other-model" in body


def test_it_shows_the_platform_price_beside_the_organizations(world, users, listed):
    rows = {row["price"].model: row for row in client_for(users["member"]).get(PAGE).context["rows"]}
    assert (rows["test-model"]["price"].input_per_mtok, rows["test-model"]["effective"].input) == (2, 1)
    assert rows["test-model"]["why"] == "override"
    assert (rows["other-model"]["effective"].input, rows["other-model"]["effective"].output) == (
        Decimal("0.8"),
        Decimal("2.4"),
    )
    assert rows["other-model"]["why"] == "20 % off"
    globex_rows = {
        row["price"].model: row for row in client_for(users["outsider"]).get("/o/globex/prices/").context["rows"]
    }
    assert globex_rows["test-model"]["effective"].input == Decimal("1.34")  # globex's own 33 % off


def test_it_searches_and_pages_platform_prices_in_a_bounded_number_of_queries(world, users, listed):
    for i in range(30):
        make_price(f"bulk-{i:02}", input="1", output="1", provider="bulkco")
    client = client_for(users["owner"])
    body = client.get(PAGE, {"q": "other"}).content.decode()
    assert "other-model" in body and "bulk-00" not in body
    first = client.get(PAGE, {"q": "bulk"})
    assert [row["price"].model for row in first.context["rows"]][:2] == ["bulk-00", "bulk-01"]
    assert first.context["next_query"] == "q=bulk&page=2"
    second = client.get(PAGE, {"q": "bulk", "page": "2"})
    assert [row["price"].model for row in second.context["rows"]] == [f"bulk-{i}" for i in range(25, 30)]
    with counting() as few:
        client.get(PAGE, {"q": "other"})
    with counting() as many:
        client.get(PAGE, {"q": "bulk"})
    assert len(few) == len(many)
    for bad in ({"page": "0"}, {"page": "x"}, {"q": "x" * 300}, {"page": "99999999999"}):
        assert client.get(PAGE, bad).status_code == 200, bad


def test_it_shows_the_runs_of_the_organizations_changes(world, users, django_capture_on_commit_callbacks):
    ingest(world.ingest, event(request_id="r-1", timestamp=THEN.isoformat(), prompt_tokens=1000, output_tokens=500))
    client = client_for(users["owner"])
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/o/acme/prices/discounts/new/",
            discount_form(percent="50", effective_from=(THEN - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")),
        )
    assert response.status_code == 302
    assert UsageEvent.objects.get(request_id="r-1").cost == Decimal("0.003")
    [run] = client.get(PAGE).context["runs"]
    assert (run.events_changed, run.cost_before, run.cost_after) == (1, Decimal("0.006"), Decimal("0.003"))
    body = client.get(PAGE).content.decode()
    assert "discount 50% on everything created" in body
    assert client_for(users["viewer"]).get(PAGE).context["runs"] == []  # org-wide totals: not for one team's viewer
    assert client_for(users["outsider"]).get("/o/globex/prices/").context["runs"] == []


# --- changing the list ----------------------------------------------------------------------------


def test_an_owner_adds_edits_ends_and_deletes_an_override(world, users, django_capture_on_commit_callbacks):
    ingest(world.ingest, event(request_id="r-1", timestamp=THEN.isoformat(), prompt_tokens=1000, output_tokens=500))
    client = client_for(users["owner"])
    assert client.get("/o/acme/prices/overrides/new/").status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/o/acme/prices/overrides/new/", override_form())
    assert response.status_code == 302 and response["Location"] == PAGE
    override = OrganizationPrice.objects.get()
    assert override.organization == world.acme and override.input_per_mtok == 1
    assert UsageEvent.objects.get(request_id="r-1").cost == Decimal("0.003")

    edit = f"/o/acme/prices/overrides/{override.pk}/edit/"
    assert client.get(edit).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(edit, override_form(input_per_mtok="3", output_per_mtok="6")).status_code == 302
    assert UsageEvent.objects.get(request_id="r-1").cost == Decimal("0.006")  # 3000 + 3000 per million

    end = f"/o/acme/prices/overrides/{override.pk}/end/"
    with django_capture_on_commit_callbacks(execute=True):
        assert (
            client.post(end, {"effective_until": (THEN - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")}).status_code
            == 302
        )
    override.refresh_from_db()
    assert override.effective_until == THEN - timedelta(hours=1)
    assert UsageEvent.objects.get(request_id="r-1").cost_source == "catalog"

    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(f"/o/acme/prices/overrides/{override.pk}/delete/").status_code == 302
    assert not OrganizationPrice.objects.exists()


def test_an_admin_adds_and_ends_a_discount_now(world, users):
    client = client_for(users["admin"])
    assert (
        client.post("/o/acme/prices/discounts/new/", discount_form(percent="-5", provider="TestProv")).status_code
        == 302
    )
    discount = OrganizationDiscount.objects.get()
    assert (discount.percent, discount.provider) == (Decimal(-5), "testprov")
    assert client.post(f"/o/acme/prices/discounts/{discount.pk}/end/", {"effective_until": ""}).status_code == 302
    discount.refresh_from_db()
    assert discount.effective_until is not None


@pytest.mark.parametrize(
    ("url", "data", "field"),
    [
        ("/o/acme/prices/overrides/new/", override_form(input_per_mtok="cheap"), "input_per_mtok"),
        ("/o/acme/prices/overrides/new/", override_form(output_per_mtok="-1"), "output_per_mtok"),
        ("/o/acme/prices/overrides/new/", override_form(model=""), "model"),
        ("/o/acme/prices/overrides/new/", override_form(extra_prices="{nope"), "extra_prices"),
        ("/o/acme/prices/overrides/new/", override_form(extra_prices='{"no_such_mtok": "1"}'), "extra_prices"),
        ("/o/acme/prices/overrides/new/", override_form(effective_until="2000-01-01T00:00:00"), "effective_until"),
        ("/o/acme/prices/overrides/new/", override_form(effective_from="tomorrow"), "effective_from"),
        ("/o/acme/prices/discounts/new/", discount_form(percent="101"), "percent"),
        ("/o/acme/prices/discounts/new/", discount_form(percent="-1001"), "percent"),
        ("/o/acme/prices/discounts/new/", discount_form(percent=""), "percent"),
        ("/o/acme/prices/discounts/new/", discount_form(percent="1.123456"), "percent"),
        ("/o/acme/prices/discounts/new/", discount_form(provider="p" * 65), "provider"),
    ],
)
def test_it_shows_field_errors_and_writes_nothing(world, users, url, data, field):
    response = client_for(users["owner"]).post(url, data)
    assert response.status_code == 200
    assert field in response.context["form"].errors
    assert "field-error" in response.content.decode()
    assert not OrganizationPrice.objects.exists() and not OrganizationDiscount.objects.exists()
    assert not RepriceRequest.objects.exists()


def test_ending_before_the_start_is_a_field_error(world, users, listed):
    response = client_for(users["owner"]).post(
        f"/o/acme/prices/discounts/{listed['discount'].pk}/end/", {"effective_until": "2000-01-01T00:00:00"}
    )
    assert response.status_code == 200 and "effective_until" in response.context["form"].errors
    listed["discount"].refresh_from_db()
    assert listed["discount"].effective_until is None


@pytest.mark.parametrize("role", ["member", "viewer"])
def test_members_read_but_may_not_change_the_list(world, users, listed, role):
    client = client_for(users[role])
    body = client.get(PAGE).content.decode()
    assert "Add override" not in body and "/edit/" not in body
    override, discount = listed["override"], listed["discount"]
    for url, data in [
        ("/o/acme/prices/overrides/new/", override_form()),
        (f"/o/acme/prices/overrides/{override.pk}/edit/", override_form(input_per_mtok="9")),
        (f"/o/acme/prices/overrides/{override.pk}/end/", {"effective_until": ""}),
        (f"/o/acme/prices/overrides/{override.pk}/delete/", {}),
        ("/o/acme/prices/discounts/new/", discount_form()),
        (f"/o/acme/prices/discounts/{discount.pk}/edit/", discount_form(percent="90")),
        (f"/o/acme/prices/discounts/{discount.pk}/end/", {"effective_until": ""}),
    ]:
        assert client.get(url).status_code in (403, 405), url
        assert client.post(url, data).status_code == 403, url
    assert OrganizationPrice.objects.get().input_per_mtok == 1
    assert OrganizationDiscount.objects.filter(organization=world.acme).get().effective_until is None


def test_an_admin_limited_to_some_teams_may_not_change_the_list(world, listed):
    from teams.services import member_add

    limited = member_add(organization=world.acme, email="lead@acme.test", role="admin", teams=[world.chatbot]).user
    client = client_for(limited)
    assert client.get(PAGE).status_code == 200
    assert client.post("/o/acme/prices/discounts/new/", discount_form()).status_code == 403


def test_outsiders_get_404_for_another_organizations_entries(world, users, listed):
    client = client_for(users["outsider"])  # owner of globex
    override = listed["override"]
    for url in (
        PAGE,
        "/o/acme/prices/overrides/new/",
        f"/o/acme/prices/overrides/{override.pk}/edit/",
        f"/o/acme/prices/overrides/{override.pk}/end/",
    ):
        assert client.get(url).status_code == 404, url
        assert client.post(url, override_form()).status_code == 404, url
    # Nor through their own organization's URLs: another organization's entry does not exist there.
    for url in (
        f"/o/globex/prices/overrides/{override.pk}/edit/",
        f"/o/globex/prices/overrides/{override.pk}/end/",
        f"/o/globex/prices/overrides/{override.pk}/delete/",
    ):
        assert client.post(url, override_form(input_per_mtok="9")).status_code == 404, url
    override.refresh_from_db()
    assert override.input_per_mtok == 1 and override.effective_until is None


def test_posts_need_the_csrf_token(world, users):
    client = Client(enforce_csrf_checks=True)
    client.force_login(users["owner"])
    assert client.post("/o/acme/prices/discounts/new/", discount_form()).status_code == 403
    assert not OrganizationDiscount.objects.exists()


# --- Django admin -------------------------------------------------------------------------------


@pytest.fixture
def superuser_client(db):
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("root", "root@example.test", "pw-root-1"))
    return client


def test_the_admin_adds_and_changes_an_override_and_reprices(
    world, superuser_client, django_capture_on_commit_callbacks
):
    ingest(world.ingest, event(request_id="r-1", timestamp=THEN.isoformat(), prompt_tokens=1000, output_tokens=500))
    start = THEN - timedelta(days=1)
    data = {
        "organization": world.acme.pk,
        "provider": " TestProv ",
        "model": "test-model",
        "input_per_mtok": "1",
        "output_per_mtok": "4",
        "cache_read_per_mtok": "",
        "cache_write_per_mtok": "",
        "extra_prices": "{}",
        "effective_from_0": start.strftime("%Y-%m-%d"),
        "effective_from_1": start.strftime("%H:%M:%S"),
        "effective_until_0": "",
        "effective_until_1": "",
        "note": "",
        "created_at_0": "",
        "created_at_1": "",
    }
    with django_capture_on_commit_callbacks(execute=True):
        response = superuser_client.post("/admin/billing/organizationprice/add/", data)
    assert response.status_code == 302, response.content.decode()[:3000]
    override = OrganizationPrice.objects.get()
    assert override.provider == "testprov"
    assert UsageEvent.objects.get(request_id="r-1").cost == Decimal("0.003")

    with django_capture_on_commit_callbacks(execute=True):
        response = superuser_client.post(
            f"/admin/billing/organizationprice/{override.pk}/change/",
            {**data, "input_per_mtok": "2", "output_per_mtok": "8"},
        )
    assert response.status_code == 302
    assert UsageEvent.objects.get(request_id="r-1").cost == Decimal("0.006")
    assert superuser_client.get("/admin/billing/organizationprice/").status_code == 200
    runs = RepriceRequest.objects.filter(organization=world.acme).order_by("id")
    assert [run.events_changed for run in runs] == [1, 1]
    body = superuser_client.get("/admin/metrics/repricerequest/").content.decode()
    assert "override testprov/test-model changed" in body

    with django_capture_on_commit_callbacks(execute=True):
        superuser_client.post(f"/admin/billing/organizationprice/{override.pk}/delete/", {"post": "yes"})
    assert not OrganizationPrice.objects.exists()
    assert UsageEvent.objects.get(request_id="r-1").cost_source == "catalog"


def test_the_admin_adds_and_changes_a_discount_and_reprices(
    world, superuser_client, django_capture_on_commit_callbacks
):
    ingest(world.ingest, event(request_id="r-1", timestamp=THEN.isoformat(), prompt_tokens=1000, output_tokens=500))
    ingest(
        world.globex_token, event(request_id="g-1", timestamp=THEN.isoformat(), prompt_tokens=1000, output_tokens=500)
    )
    start = THEN - timedelta(days=1)
    data = {
        "organization": world.acme.pk,
        "percent": "50",
        "provider": "",
        "model": "",
        "effective_from_0": start.strftime("%Y-%m-%d"),
        "effective_from_1": start.strftime("%H:%M:%S"),
        "effective_until_0": "",
        "effective_until_1": "",
        "note": "",
        "created_at_0": "",
        "created_at_1": "",
    }
    with django_capture_on_commit_callbacks(execute=True):
        assert superuser_client.post("/admin/billing/organizationdiscount/add/", data).status_code == 302
    discount = OrganizationDiscount.objects.get()
    assert UsageEvent.objects.get(request_id="r-1").cost == Decimal("0.003")
    with django_capture_on_commit_callbacks(execute=True):
        assert (
            superuser_client.post(
                f"/admin/billing/organizationdiscount/{discount.pk}/change/", {**data, "percent": "25"}
            ).status_code
            == 302
        )
    assert UsageEvent.objects.get(request_id="r-1").cost == Decimal("0.0045")
    assert UsageEvent.objects.get(request_id="g-1").cost == Decimal("0.006")
    response = superuser_client.post("/admin/billing/organizationdiscount/add/", {**data, "percent": "101"})
    assert response.status_code == 200 and OrganizationDiscount.objects.count() == 1
    assert superuser_client.get(f"/admin/billing/organizationdiscount/{discount.pk}/change/").status_code == 200
