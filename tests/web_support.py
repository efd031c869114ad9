"""Helpers shared by the page tests: a client per role, and counting queries."""

from __future__ import annotations

from contextlib import contextmanager

from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from teams.services import member_add

ROLES = ("owner", "admin", "member", "viewer", "outsider", "anonymous")
READERS = ("owner", "admin", "member", "viewer")
MANAGERS = ("owner", "admin")


def plain_static(settings) -> None:
    """Pages link their stylesheet with {% static %}; with DEBUG off that needs `collectstatic`'s
    manifest, which a test run does not build. Serve static names as they are instead."""
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


def page_settings(settings) -> None:
    """What every page test wants: plain static names and a fast password hasher."""
    from tests.budget_support import fast_passwords

    plain_static(settings)
    fast_passwords(settings)


def make_admin(world):
    return member_add(organization=world.acme, email="admin@acme.test", role="admin").user


def users_by_role(world) -> dict:
    """Every role of the world, plus an admin of acme (created on first use)."""
    from django.contrib.auth import get_user_model

    admin = get_user_model().objects.filter(email="admin@acme.test").first() or make_admin(world)
    return {
        "owner": world.owner, "admin": admin, "member": world.member, "viewer": world.viewer,
        "outsider": world.outsider, "anonymous": None,
    }


def client_for(user) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


@contextmanager
def counting():
    with CaptureQueriesContext(connection) as queries:
        yield queries
