"""The Django admin: every model opens for a superuser and for no one without permissions, tokens show
their secret once and keep only a digest, and the event lists stay cheap however many events exist."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from billing.models import Budget, BudgetAlert, ModelPrice, OrganizationDiscount, OrganizationPrice
from billing.services import budget_create
from metrics.models import BatchRun, CacheStat, JobFailure, RepriceRequest, UsageEvent
from teams.access import authenticate_token
from teams.models import ApiToken, Membership, Organization, Team
from tests.budget_support import costing, ingest
from tests.web_support import counting, page_settings

MODELS = {
    "teams/organization": Organization,
    "teams/team": Team,
    "teams/membership": Membership,
    "teams/apitoken": ApiToken,
    "billing/budget": Budget,
    "billing/budgetalert": BudgetAlert,
    "billing/modelprice": ModelPrice,
    "billing/organizationprice": OrganizationPrice,
    "billing/organizationdiscount": OrganizationDiscount,
    "metrics/usageevent": UsageEvent,
    "metrics/cachestat": CacheStat,
    "metrics/batchrun": BatchRun,
    "metrics/jobfailure": JobFailure,
    "metrics/repricerequest": RepriceRequest,
}


@pytest.fixture(autouse=True)
def _page_settings(settings):
    page_settings(settings)


@pytest.fixture
def everything(world):
    """At least one row of every model."""
    ingest(world.ingest, costing("1", team_alias="chatbot"), costing("2", team_alias="search"))
    budget = budget_create(organization=world.acme, team=world.chatbot, amount_usd=Decimal(2), period="monthly")
    BudgetAlert.objects.create(budget=budget, period_start=datetime(2026, 1, 1, tzinfo=UTC), threshold=50,
                               spend_usd=1, limit_usd=2)
    CacheStat.objects.create(organization=world.acme, team=world.chatbot, cache_hit=3, cache_miss=1)
    BatchRun.objects.create(organization=world.acme, team=world.chatbot, batch_id="b-1", batch_size=4)
    JobFailure.objects.create(job="rollups", organization=world.acme, key="hour 2026-01-01T00:00:00+00:00",
                              consecutive_failures=1, total_failures=1, last_error="RuntimeError: boom\n\nTraceback")
    RepriceRequest.objects.create(provider="testprov", model="test-model", start=datetime(2026, 1, 1, tzinfo=UTC))
    OrganizationPrice.objects.create(organization=world.acme, provider="testprov", model="test-model",
                                     input_per_mtok=1, output_per_mtok=2)
    OrganizationDiscount.objects.create(organization=world.acme, percent=10)
    return world


@pytest.fixture
def superuser(db):
    return get_user_model().objects.create_superuser("root", "root@example.com", "root-pw")


def admin_client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("path", MODELS)
def test_it_opens_every_changelist_and_change_form_for_a_superuser(everything, superuser, path):
    client = admin_client(superuser)
    assert client.get(f"/admin/{path}/").status_code == 200
    obj = MODELS[path].objects.order_by("pk").first()
    assert client.get(f"/admin/{path}/{obj.pk}/change/").status_code == 200


@pytest.mark.parametrize("path", MODELS)
def test_it_refuses_staff_without_permissions(everything, path):
    staff = get_user_model().objects.create_user("staff", "staff@example.com", "staff-pw", is_staff=True)
    client = admin_client(staff)
    assert client.get(f"/admin/{path}/").status_code == 403
    obj = MODELS[path].objects.order_by("pk").first()
    assert client.get(f"/admin/{path}/{obj.pk}/change/").status_code == 403


def test_it_refuses_people_who_are_not_staff(everything):
    response = admin_client(everything.owner).get("/admin/teams/apitoken/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


def test_it_shows_a_new_tokens_secret_once_and_stores_only_its_digest(world, superuser):
    client = admin_client(superuser)
    response = client.post("/admin/teams/apitoken/add/", {
        "organization": world.acme.pk, "team": world.chatbot.pk, "name": "from admin", "can_ingest": "on",
        "can_read": "on", "revoked_at_0": "", "revoked_at_1": "",
    }, follow=True)
    assert response.status_code == 200
    token = ApiToken.objects.get(name="from admin")
    shown = [str(m) for m in response.context["messages"]]
    secret = next(re.search(r"(lc_\w+_\S+)", m).group(1) for m in shown if "will not be shown again" in m)
    assert token.digest == ApiToken.hash_secret(secret)
    assert authenticate_token(secret) == token
    assert token.team == world.chatbot and token.created_by == superuser
    row = ApiToken.objects.filter(pk=token.pk).values().get()
    assert secret not in str(row)
    # The change form and the list show neither the secret nor the digest.
    for url in (f"/admin/teams/apitoken/{token.pk}/change/", "/admin/teams/apitoken/"):
        body = client.get(url).content.decode()
        assert secret not in body and token.digest not in body
        assert token.display_prefix in body


def test_it_finds_prices_by_model_and_provider_and_shows_their_start(world, superuser):
    ModelPrice.objects.create(provider="otherprov", model="big-model", input_per_mtok=1, output_per_mtok=2,
                              effective_from=datetime(2025, 3, 4, tzinfo=UTC))
    client = admin_client(superuser)
    body = client.get("/admin/billing/modelprice/?q=big-model").content.decode()
    assert "big-model" in body and "test-model" not in body
    assert "March 4, 2025" in body or "2025-03-04" in body
    body = client.get("/admin/billing/modelprice/?provider=testprov").content.decode()
    assert "test-model" in body and "big-model" not in body


def test_it_reprices_events_when_an_admin_saves_a_price(world, superuser, monkeypatch):
    calls = []
    monkeypatch.setattr("billing.pricing.admin.reprice_after_change", lambda **kw: calls.append(kw))
    price = ModelPrice.objects.get(model="test-model")
    response = admin_client(superuser).post(f"/admin/billing/modelprice/{price.pk}/change/", {
        "provider": price.provider, "model": price.model, "match_patterns": '["test-model-*"]',
        "input_per_mtok": "3", "output_per_mtok": "8", "cache_read_per_mtok": "0.5", "cache_write_per_mtok": "",
        "effective_from_0": "1970-01-01", "effective_from_1": "00:00:00",
    })
    assert response.status_code == 302, response.content.decode()[:2000]
    price.refresh_from_db()
    assert price.input_per_mtok == 3 and price.admin_edited
    assert calls and calls[0]["model"] == "test-model"


def test_it_lists_events_in_a_bounded_number_of_queries_without_scanning_the_table(world, superuser):
    client = admin_client(superuser)
    ingest(world.ingest, *[costing("0.5", team_alias="chatbot") for _ in range(3)])
    client.get("/admin/metrics/usageevent/")
    with counting() as few:
        assert client.get("/admin/metrics/usageevent/").status_code == 200
    ingest(world.ingest, *[costing("0.5", team_alias=["chatbot", "search", "ops"][i % 3]) for i in range(120)])
    ingest(world.globex_token, *[costing("0.5") for _ in range(30)])
    with counting() as many:
        body = client.get("/admin/metrics/usageevent/").content.decode()
    assert len(many) == len(few) <= 12
    statements = [query["sql"].upper() for query in many.captured_queries]
    event_queries = [sql for sql in statements if '"METRICS_USAGEEVENT"' in sql]
    assert not any("DISTINCT" in sql for sql in event_queries)  # no filter lists the events' values
    counts = [sql for sql in event_queries if "COUNT(" in sql]
    assert counts and all("LIMIT" in sql for sql in counts)  # the count stops early
    assert "153 usage events" in body
    assert "Show counts" not in body
    with counting() as faceted:  # asking for facet counts anyway changes nothing
        client.get("/admin/metrics/usageevent/?_facets=True")
    assert len(faceted) == len(many)
    for path in ("/admin/metrics/usageevent/?status=error", "/admin/metrics/usageevent/?q=nope",
                 f"/admin/metrics/usageevent/?organization__id__exact={world.acme.pk}",
                 "/admin/metrics/cachestat/", "/admin/metrics/batchrun/"):
        assert client.get(path).status_code == 200, path


def test_it_caps_the_event_count(world, superuser, monkeypatch):
    from metrics.admin import CappedCountPaginator

    monkeypatch.setattr(CappedCountPaginator, "CAP", 5)
    ingest(world.ingest, *[costing("0.5") for _ in range(8)])
    body = admin_client(superuser).get("/admin/metrics/usageevent/").content.decode()
    assert "6 usage events" in body


def test_it_lists_every_model_in_a_number_of_queries_that_does_not_grow_with_rows(everything, superuser):
    from teams.services import member_add, team_create, token_create

    client = admin_client(superuser)
    paths = [f"/admin/{path}/" for path in MODELS]
    for path in paths:
        client.get(path)

    def measure() -> dict[str, int]:
        counts = {}
        for path in paths:
            with counting() as queries:
                assert client.get(path).status_code == 200
            counts[path] = len(queries)
        return counts

    before = measure()
    world = everything
    for i in range(6):
        team = team_create(organization=world.acme, alias=f"extra-{i}")
        token_create(organization=world.acme, team=team, name=f"extra-{i}")
        member_add(organization=world.acme, email=f"extra-{i}@acme.test", role="member", teams=[team])
        budget = budget_create(organization=world.acme, team=team, amount_usd=Decimal(1), period="monthly")
        BudgetAlert.objects.create(budget=budget, period_start=datetime(2026, 1, 1, tzinfo=UTC), threshold=50,
                                   spend_usd=1, limit_usd=1)
        CacheStat.objects.create(organization=world.acme, team=team)
        BatchRun.objects.create(organization=world.acme, team=team, batch_id=f"extra-{i}", batch_size=1)
        JobFailure.objects.create(job="rollups", organization=world.acme, key=f"extra-{i}")
        RepriceRequest.objects.create(provider="p", model=f"extra-{i}", start=datetime(2026, 1, 1, tzinfo=UTC),
                                      organization=world.acme)
        OrganizationPrice.objects.create(organization=world.acme, provider="p", model=f"extra-{i}",
                                         input_per_mtok=1, output_per_mtok=2)
        OrganizationDiscount.objects.create(organization=world.acme, percent=i, model=f"extra-{i}")
        ingest(world.ingest, costing("0.5", team_alias=f"extra-{i}"))
    assert measure() == before


def test_it_keeps_a_tokens_team_within_its_organization(world, superuser):
    client = admin_client(superuser)
    before = ApiToken.objects.count()
    response = client.post("/admin/teams/apitoken/add/", {
        "organization": world.acme.pk, "team": world.globex_chatbot.pk, "name": "crossed", "can_ingest": "on",
        "revoked_at_0": "", "revoked_at_1": "",
    })
    assert response.status_code == 200 and "Pick a team of the token" in response.content.decode()
    assert ApiToken.objects.count() == before
    token = world.tokens["both"]
    response = client.post(f"/admin/teams/apitoken/{token.pk}/change/", {
        "organization": world.globex.pk, "team": world.globex_chatbot.pk, "name": "moved", "can_ingest": "on",
        "revoked_at_0": "", "revoked_at_1": "",
    })
    assert response.status_code == 200 and "Pick a team of the token" in response.content.decode()
    token.refresh_from_db()
    assert token.organization == world.acme and token.team is None and token.name == "both"


def test_it_shows_failing_background_work_and_retries_it_at_the_next_run(everything, superuser):
    client = admin_client(superuser)
    failure = JobFailure.objects.get()
    later = datetime(2100, 1, 1, tzinfo=UTC)
    JobFailure.objects.update(retry_at=later)

    page = client.get("/admin/metrics/jobfailure/?state=failing").content.decode()
    assert "rollups" in page and "hour 2026-01-01" in page and "RuntimeError: boom" in page
    response = client.post("/admin/metrics/jobfailure/", {"action": "retry_now", "_selected_action": [failure.pk]})

    assert response.status_code == 302
    failure.refresh_from_db()
    assert failure.retry_at < later
    assert client.get("/admin/metrics/jobfailure/?state=resolved").content.decode().count("hour 2026-01-01") == 0
