"""Declared dimensions: the metadata keys an organization groups its spend by (at most 10), declared in
the service, the `add_dimension` command, the Django admin and the Dimensions page, and read through
`GET /api/v1/dimensions`. Every side: owner, admin, member, viewer, team-limited admin, outsider."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, transaction
from django.test import Client

from metrics import reports
from teams.models import METADATA_KEY, DeclaredDimension
from teams.services import dimension_declare, dimension_remove, member_add
from tests.conftest import api
from tests.web_support import client_for, counting, page_settings, users_by_role

PAGE = "/o/acme/dimensions/"
ADD = "/o/acme/dimensions/add/"


@pytest.fixture(autouse=True)
def _page_settings(settings):
    page_settings(settings)


@pytest.fixture
def users(world):
    return users_by_role(world)


@pytest.fixture
def limited_admin(world):
    return member_add(organization=world.acme, email="lead@acme.test", role="admin", teams=[world.chatbot]).user


def keys(organization) -> list[str]:
    declared = DeclaredDimension.objects.filter(organization=organization).order_by("key")
    return list(declared.values_list("key", flat=True))


def declare(organization, *names: str) -> None:
    for name in names:
        dimension_declare(organization=organization, key=name)


def remove_url(key: str, org: str = "acme") -> str:
    return f"/o/{org}/dimensions/{key}/remove/"


# --- the service ------------------------------------------------------------------------------------


def test_the_reports_and_the_declarations_share_one_metadata_key_rule():
    assert reports.METADATA_KEY is METADATA_KEY


def test_it_declares_and_removes_keys(world):
    dimension = dimension_declare(organization=world.acme, key="feature")
    assert dimension.pk and dimension.organization == world.acme and dimension.created_at
    declare(world.acme, "customer")
    assert keys(world.acme) == ["customer", "feature"]
    assert dimension_remove(organization=world.acme, key="feature") is True
    assert dimension_remove(organization=world.acme, key="feature") is False
    assert keys(world.acme) == ["customer"]


def test_it_allows_ten_keys_and_refuses_the_eleventh_naming_it(world):
    declare(world.acme, *(f"key_{n}" for n in range(10)))
    with pytest.raises(ValidationError) as refused:
        dimension_declare(organization=world.acme, key="eleventh")
    assert "'eleventh'" in str(refused.value.messages) and "10" in str(refused.value.messages)
    assert len(keys(world.acme)) == 10
    # Room again after a removal; and another organization has its own ten.
    dimension_remove(organization=world.acme, key="key_0")
    declare(world.acme, "eleventh")
    declare(world.globex, "eleventh")
    assert len(keys(world.acme)) == 10 and keys(world.globex) == ["eleventh"]


@pytest.mark.parametrize("bad", ["", "with space", "a/b", "métadonnée", "x" * 65, "tab\tkey", "new\n"])
def test_it_refuses_a_key_the_reports_would_refuse(world, bad):
    assert not METADATA_KEY.fullmatch(bad)
    with pytest.raises(ValidationError):
        dimension_declare(organization=world.acme, key=bad)
    assert keys(world.acme) == []


@pytest.mark.parametrize("good", ["feature", "a", "x" * 64, "Env.name", "customer-id", "plan_tier"])
def test_it_accepts_every_key_the_reports_accept(world, good):
    assert METADATA_KEY.fullmatch(good)
    declare(world.acme, good)
    assert keys(world.acme) == [good]


def test_a_bad_key_is_named_in_the_refusal(world):
    with pytest.raises(ValidationError) as refused:
        dimension_declare(organization=world.acme, key="a b")
    assert "'a b'" in " ".join(refused.value.messages)


def test_it_refuses_a_duplicate_naming_it_even_at_the_limit(world):
    declare(world.acme, "feature")
    with pytest.raises(ValidationError) as refused:
        dimension_declare(organization=world.acme, key="feature")
    assert "'feature' is already declared in acme" in refused.value.messages[0]
    declare(world.acme, *(f"key_{n}" for n in range(9)))
    with pytest.raises(ValidationError) as refused:
        dimension_declare(organization=world.acme, key="feature")
    assert "already declared" in refused.value.messages[0]
    assert len(keys(world.acme)) == 10


def test_the_database_refuses_a_duplicate_written_around_the_service(world):
    declare(world.acme, "feature")
    with pytest.raises(IntegrityError), transaction.atomic():
        DeclaredDimension.objects.create(organization=world.acme, key="feature")


def test_another_organization_may_declare_the_same_key(world):
    declare(world.acme, "feature")
    declare(world.globex, "feature")
    assert keys(world.acme) == ["feature"] and keys(world.globex) == ["feature"]
    dimension_remove(organization=world.globex, key="feature")
    assert keys(world.acme) == ["feature"]


# --- the command --------------------------------------------------------------------------------------


def run(*args) -> str:
    out = StringIO()
    call_command("add_dimension", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_the_command_declares_and_removes_a_key(world):
    assert run("acme", "feature") == "Declared dimension 'feature' in acme (1 of 10)\n"
    assert keys(world.acme) == ["feature"]
    assert run("acme", "feature", "--remove") == "Removed dimension 'feature' from acme\n"
    assert keys(world.acme) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (("initech", "feature"), "No organization 'initech'."),
        (("acme", "a b"), "'a b' is not a metadata key"),
        (("acme", "taken"), "'taken' is already declared in acme."),
        (("acme", "nope", "--remove"), "'nope' is not declared in acme."),
        (("globex", "eleventh"), "Cannot declare 'eleventh': the organization already declares 10 dimensions"),
    ],
)
def test_the_command_names_each_problem(world, args, message):
    declare(world.acme, "taken")
    declare(world.globex, *(f"key_{n}" for n in range(10)))
    before = (keys(world.acme), keys(world.globex))
    with pytest.raises(CommandError) as refused:
        run(*args)
    assert message in str(refused.value)
    assert (keys(world.acme), keys(world.globex)) == before


# --- the Django admin -------------------------------------------------------------------------------------


@pytest.fixture
def superuser(db):
    return get_user_model().objects.create_superuser("root", "root@example.com", "root-pw")


def test_the_admin_lists_adds_and_deletes_declared_keys(world, superuser):
    client = client_for(superuser)
    response = client.post("/admin/teams/declareddimension/add/", {"organization": world.acme.pk, "key": "feature"})
    assert response.status_code == 302
    dimension = DeclaredDimension.objects.get()
    assert (dimension.organization, dimension.key) == (world.acme, "feature")
    body = client.get("/admin/teams/declareddimension/").content.decode()
    assert "feature" in body and "Acme" in body
    response = client.post(f"/admin/teams/declareddimension/{dimension.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not DeclaredDimension.objects.exists()


@pytest.mark.parametrize(
    "key, message",
    [("a b", "is not a metadata key"), ("taken", "already declared"), ("eleventh", "already declares 10 dimensions")],
)
def test_the_admin_refuses_what_the_service_refuses(world, superuser, key, message):
    declare(world.acme, "taken", *(f"key_{n}" for n in range(9)))
    response = client_for(superuser).post(
        "/admin/teams/declareddimension/add/", {"organization": world.acme.pk, "key": key}
    )
    assert response.status_code == 200
    assert message in response.content.decode()
    assert len(keys(world.acme)) == 10


def test_the_admin_refuses_staff_without_permissions(world):
    staff = get_user_model().objects.create_user("staff", "staff@example.com", "pw", is_staff=True)
    client = client_for(staff)
    assert client.get("/admin/teams/declareddimension/").status_code == 403
    assert client.post("/admin/teams/declareddimension/add/", {"organization": world.acme.pk,
                                                                "key": "feature"}).status_code == 403
    assert not DeclaredDimension.objects.exists()


# --- the page -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "role, status",
    [("owner", 200), ("admin", 200), ("member", 200), ("viewer", 200), ("outsider", 404), ("anonymous", 302)],
)
def test_who_sees_the_page(world, users, role, status):
    declare(world.acme, "feature")
    declare(world.globex, "globex_only")
    response = client_for(users[role]).get(PAGE)
    assert response.status_code == status
    if status == 200:
        body = response.content.decode()
        assert "<code>feature</code>" in body and "globex_only" not in body


@pytest.mark.parametrize("role, editable", [("owner", True), ("admin", True), ("member", False), ("viewer", False)])
def test_only_whole_organization_managers_see_the_controls(world, users, role, editable):
    declare(world.acme, "feature")
    body = client_for(users[role]).get(PAGE).content.decode()
    assert ('action="/o/acme/dimensions/add/"' in body) is editable
    assert (f'action="{remove_url("feature")}"' in body) is editable
    assert ("Owners and admins who see every team declare dimensions." in body) is not editable


def test_the_nav_links_the_page(world, users):
    body = client_for(users["member"]).get("/o/acme/prices/").content.decode()
    assert f'href="{PAGE}"' in body


def test_the_page_reads_in_a_bounded_number_of_queries(world, users):
    client = client_for(users["owner"])
    declare(world.acme, "a")
    with counting() as few:
        client.get(PAGE)
    declare(world.acme, *(f"key_{n}" for n in range(9)))
    with counting() as many:
        client.get(PAGE)
    assert len(many) == len(few)


@pytest.mark.parametrize("role", ["owner", "admin"])
def test_managers_declare_and_remove_keys(world, users, role):
    client = client_for(users[role])
    response = client.post(ADD, {"key": "feature"}, follow=True)
    assert response.redirect_chain == [(PAGE, 302)]
    assert "Declared metadata.feature" in response.content.decode()
    assert keys(world.acme) == ["feature"]
    response = client.post(remove_url("feature"), follow=True)
    assert response.redirect_chain == [(PAGE, 302)]
    assert keys(world.acme) == []


@pytest.mark.parametrize(
    "key, message",
    [("a b", "is not a metadata key"), ("taken", "already declared in acme"), ("eleventh", "already declares 10")],
)
def test_the_page_shows_the_refusal_on_the_field(world, users, key, message):
    declare(world.acme, "taken", *(f"key_{n}" for n in range(9)))
    response = client_for(users["owner"]).post(ADD, {"key": key})
    assert response.status_code == 200
    body = response.content.decode()
    assert 'id="id_key_error"' in body and message in body
    assert len(keys(world.acme)) == 10


def test_removing_a_key_that_is_not_declared_is_404(world, users):
    declare(world.globex, "feature")
    assert client_for(users["owner"]).post(remove_url("feature")).status_code == 404
    assert keys(world.globex) == ["feature"]


@pytest.mark.parametrize("role", ["member", "viewer"])
def test_members_may_not_change_them(world, users, role):
    declare(world.acme, "feature")
    client = client_for(users[role])
    assert client.post(ADD, {"key": "customer"}).status_code == 403
    assert client.post(remove_url("feature")).status_code == 403
    assert keys(world.acme) == ["feature"]


def test_an_admin_limited_to_some_teams_reads_but_may_not_change_them(world, limited_admin):
    declare(world.acme, "feature")
    client = client_for(limited_admin)
    body = client.get(PAGE).content.decode()
    assert "<code>feature</code>" in body and 'action="/o/acme/dimensions/add/"' not in body
    assert client.post(ADD, {"key": "customer"}).status_code == 403
    assert client.post(remove_url("feature")).status_code == 403
    assert keys(world.acme) == ["feature"]


def test_outsiders_get_404_and_change_nothing(world, users):
    declare(world.acme, "feature")
    client = client_for(users["outsider"])  # owner of globex
    assert client.post(ADD, {"key": "customer"}).status_code == 404
    assert client.post(remove_url("feature")).status_code == 404
    # Through their own organization's URLs they change only their own.
    assert client.post(remove_url("feature", "globex")).status_code == 404
    assert keys(world.acme) == ["feature"] and keys(world.globex) == []


def test_anonymous_posts_go_to_login(world):
    response = Client().post(ADD, {"key": "feature"})
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert keys(world.acme) == []


def test_changes_go_by_post_with_the_csrf_token(world, users):
    declare(world.acme, "feature")
    assert client_for(users["owner"]).get(remove_url("feature")).status_code == 405
    client = Client(enforce_csrf_checks=True)
    client.force_login(users["owner"])
    assert client.post(ADD, {"key": "customer"}).status_code == 403
    assert client.post(remove_url("feature")).status_code == 403
    assert keys(world.acme) == ["feature"]


# --- the API ---------------------------------------------------------------------------------------------


def test_the_api_answers_the_tokens_organizations_keys(world):
    declare(world.acme, "feature", "customer")
    declare(world.globex, "globex_only")
    for token in (world.read, world.both, world.pinned):
        response = api(token).get("/api/v1/dimensions")
        assert response.status_code == 200
        assert response.json() == {"dimensions": ["customer", "feature"]}
    assert api(world.globex_token).get("/api/v1/dimensions").json() == {"dimensions": ["globex_only"]}


def test_the_api_answers_an_empty_list(world):
    declare(world.globex, "globex_only")
    assert api(world.read).get("/api/v1/dimensions").json() == {"dimensions": []}


def test_the_api_needs_a_read_token(world):
    declare(world.acme, "feature")
    assert api(world.ingest).get("/api/v1/dimensions").status_code == 403
    assert api().get("/api/v1/dimensions").status_code == 401
    assert api("lc_00000000_nope").get("/api/v1/dimensions").status_code == 401
