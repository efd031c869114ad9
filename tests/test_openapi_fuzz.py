"""schemathesis against our OpenAPI schema (/api/schema/, drf-spectacular): no 5xx, no answer that
contradicts the schema.

Every operation in the schema gets requests generated from its parameters and request bodies
(valid ones, and ones the schema says are invalid), sent through the Django WSGI application on
the test database, with a token of the `world` fixture that may ingest and read. A 5xx, or a
documented response whose body does not match its schema, fails the test. Examples per operation
are few so the whole file takes well under a minute.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


# Loaded when the module is collected: generating the schema reads no database. (schemathesis's
# fixture-based lazy loader does not work with our pytest 9.)
schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())


@pytest.fixture(autouse=True)
def _requests_keep_the_test_transaction(db, settings):
    """Django closes the database connection at the end of each request; in a test that would end
    the test's transaction. Django's own test client disconnects these too while it sends requests."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=25,
    deadline=timedelta(seconds=5),
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_generated_request_gets_a_server_error_or_an_answer_outside_the_schema(case, world):
    case.call_and_validate(headers={"Authorization": f"Bearer {world.both}"}, checks=CHECKS)
