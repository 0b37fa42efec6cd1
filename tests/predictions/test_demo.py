"""The demo `make run` serves: what the first pasted curl shows."""

import io

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from mlregistry.models import ModelVersion
from tests import factories

pytestmark = pytest.mark.django_db


def test_bootstrap_prepares_and_prints_a_working_client_token():
    out = io.StringIO()
    call_command("bootstrap_demo", "--prepare", "--client-token", "demo-client", stdout=out)
    lines = dict(line.split("=", 1) for line in out.getvalue().splitlines())
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {lines['CLIENT_TOKEN']}")
    answer = api.post(
        "/api/v1/models/iris-classifier/predict",
        {"features": dict(zip(factories.IRIS_FEATURES, [6.3, 3.3, 6.0, 2.5], strict=True))},
        format="json",
    )
    assert answer.status_code == 200, answer.json()
    # The demo answers with species names, not class indices.
    assert answer.json()["prediction"] == "virginica"
    assert ModelVersion.objects.get().classes == ["setosa", "versicolor", "virginica"]
