"""Cross-cutting behaviour: error shape, request ids, health, docs, commands."""

import io

import pytest
from django.core.management import call_command
from knox.models import AuthToken
from rest_framework.test import APIClient

from mlregistry.models import ModelVersion, RegisteredModel, Stage

pytestmark = pytest.mark.django_db


def test_request_id_is_honoured_and_echoed(client):
    response = client.get("/health", HTTP_X_REQUEST_ID="abc-123")
    assert response["X-Request-ID"] == "abc-123"
    generated = client.get("/health", HTTP_X_REQUEST_ID="bad id\nwith newline")["X-Request-ID"]
    assert generated != "bad id\nwith newline" and len(generated) == 32


def test_liveness_and_readiness(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"]["database"]["status"] == "ok"
    assert ready.json()["checks"]["cache"]["status"] == "ok"


def test_readiness_names_a_failing_database(client, monkeypatch):
    from config import health

    def broken():  # fault injected on purpose: the database is unreachable
        raise OSError("connection refused")

    monkeypatch.setitem(health.READINESS_CHECKS, "database", broken)
    response = client.get("/health/ready")
    # Degraded, not down: predictions still answer from what this process holds.
    assert response.status_code == 200
    assert response.json()["checks"]["database"] == {
        "status": "degraded",
        "ms": response.json()["checks"]["database"]["ms"],
        "detail": "OSError: connection refused",
    }


def test_openapi_schema_and_docs(staff_api, client):
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    assert b"/api/v1/models/{name}/versions/{version}/transition" in schema.content
    assert client.get("/api/docs/").status_code == 200


def test_unknown_route_and_wrong_method_use_the_error_shape(staff_api):
    missing = staff_api.get("/api/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    wrong = staff_api.put("/api/v1/models/", {}, format="json")
    assert wrong.status_code == 405 and wrong.json()["error"]["type"] == "method_not_allowed"


def test_malformed_json_is_400(staff_api):
    response = staff_api.generic(
        "POST", "/api/v1/models/", b"{not json", content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "parse_error"


def test_validation_errors_name_the_fields(staff_api):
    response = staff_api.post(
        "/api/v1/models/", {"name": "has spaces", "task": "dance"}, format="json"
    )
    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert set(fields) == {"name", "task"}
    assert not RegisteredModel.objects.exists()


def test_duplicate_model_name_is_409(staff_api):
    assert staff_api.post("/api/v1/models/", {"name": "m"}, format="json").status_code == 201
    response = staff_api.post("/api/v1/models/", {"name": "m"}, format="json")
    assert response.status_code == 409


def test_bad_token_is_401():
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer nope")
    assert client.get("/api/v1/models/").status_code == 401


def test_create_api_token_makes_a_plain_client_and_prints_the_token_last(capsys):
    out = io.StringIO()
    call_command("create_api_token", "robot", "--expires-in-days", "3", stdout=out)
    token = out.getvalue().strip().splitlines()[-1]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert client.get("/api/v1/models/").status_code == 200
    assert client.post("/api/v1/models/", {"name": "x"}, format="json").status_code == 403
    stored = AuthToken.objects.get()
    assert stored.expiry is not None and token not in stored.digest
    assert not stored.user.is_staff and not stored.user.has_usable_password()


def test_bootstrap_demo_registers_and_promotes_once(monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_USERNAME", "admin")
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "s3cret-pass")
    out = io.StringIO()
    call_command("bootstrap_demo", stdout=out)
    call_command("bootstrap_demo", stdout=io.StringIO())
    assert "ADMIN_PASSWORD=s3cret-pass" in out.getvalue()
    version = ModelVersion.objects.get()
    assert version.stage == Stage.PRODUCTION and version.model.name == "iris-classifier"
    assert version.reference_stats["sepal_length"]["count"] > 0


def test_model_delete_refused_while_in_production_then_allowed(staff_api, iris_model):
    from mlregistry import services
    from tests import factories

    version = factories.version_create(iris_model)
    services.model_version_transition(version=version, stage=Stage.PRODUCTION, actor="t")
    assert staff_api.delete("/api/v1/models/iris/").status_code == 409
    services.model_version_transition(version=version, stage=Stage.ARCHIVED, actor="t")
    assert staff_api.delete("/api/v1/models/iris/").status_code == 204
    assert not RegisteredModel.objects.exists()
