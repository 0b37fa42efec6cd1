"""Fuzzing every operation in the OpenAPI schema, in-process through the WSGI app.

Each operation gets FUZZ_EXAMPLES generated requests as staff and as a plain API client; half
of them aim at a model that exists (with a production version), so the fuzzer gets past 404s.
Checks: no 5xx, and every documented response matches its schema.
"""

from __future__ import annotations

import io
import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from config.wsgi import application
from mlregistry import services
from tests import factories

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
CHECKS = [not_a_server_error, response_schema_conformance]

pytestmark = pytest.mark.django_db


@pytest.fixture
def test_transaction_survives_requests():
    """Calls to the bare WSGI app would close the test's database connection at the end of
    each request; Django's own test client unhooks the same two receivers."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def fuzz_world(test_transaction_survives_requests, staff_user, client_user, settings):
    # Rate limits would turn most of a long run into 429s before it reaches the views.
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {}}
    model = factories.registered_model_create("iris")
    version = services.model_version_create(
        model=model, artifact=io.BytesIO(factories.iris_classifier_bytes()), actor="tests"
    )
    services.model_version_transition(version=version, stage="production", actor="tests")
    return {
        "staff": factories.token_create(staff_user),
        "client": factories.token_create(client_user),
    }


def _operations():
    schema = schemathesis.openapi.from_wsgi("/api/schema/", application)
    return [result.ok() for result in schema.get_all_operations()]


def _aim_at_existing(case, aim: bool):
    if aim and case.path_parameters:
        if "name" in case.path_parameters:
            case.path_parameters["name"] = "iris"
        if "version" in case.path_parameters:
            case.path_parameters["version"] = 1
    return case


@pytest.mark.parametrize("role", ["staff", "client"])
def test_no_operation_answers_5xx_or_breaks_its_schema(fuzz_world, role):
    operations = _operations()
    assert len(operations) >= 9  # the registry's own; predict/jobs add theirs when merged
    headers = {"Authorization": f"Bearer {fuzz_world[role]}"}
    seen: set[tuple[str, str]] = set()

    for operation in operations:
        strategy = st.builds(_aim_at_existing, operation.as_strategy(), st.booleans())

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case):
            response = case.call(headers=headers)
            case.validate_response(response, checks=CHECKS)
            seen.add((case.method, case.operation.path))

        run()
    assert len(seen) == len(operations)
