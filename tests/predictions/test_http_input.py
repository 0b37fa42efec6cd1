"""HTTP input on every route family: media types as HTTP says, one JSON parser (depth, NUL),
chunked bodies, refused tokens throttled, and database outages answered 503."""

from __future__ import annotations

import io
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import OperationalError, connection
from django.test import Client
from rest_framework.test import APIClient

from config.errors import RequestTimeout
from config.parsers import read_body
from mlregistry.models import RegisteredModel
from tests import factories
from tests.predictions.conftest import IRIS_ROW

pytestmark = pytest.mark.django_db


def _routes(model_id: int) -> list[tuple[str, str, dict]]:
    """(method, path, JSON body) of each JSON route family."""
    return [
        ("post", "/api/v1/models/iris/predict", {"features": IRIS_ROW}),
        ("post", "/api/v1/models/iris/versions/1/predict", {"features": IRIS_ROW}),
        ("post", f"/api/v1/predict/{model_id}", {"features": IRIS_ROW}),
        ("post", "/api/v1/predict/iris", {"features": IRIS_ROW}),
        ("post", "/api/v1/predictions/no-such-request/feedback", {"actual": 0}),
        ("put", "/api/v1/models/iris/traffic", {"splits": [{"version": 1, "weight": 100}]}),
        ("post", "/api/v1/models/", {"name": "another", "task": "classification"}),
        ("patch", "/api/v1/models/iris/", {"description": "new"}),
    ]


def _send(api, method: str, path: str, body: dict, content_type: str, **headers):
    return getattr(api, method)(path, json.dumps(body), content_type=content_type, **headers)


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json; charset=utf-8",
        "application/json; charset=UTF-8",
        "application/json;charset=utf-8",
        "Application/JSON",
        'APPLICATION/JSON; CHARSET="UTF-8"',
    ],
)
def test_every_json_route_accepts_the_media_type_with_parameters_in_any_case(
    staff_api, iris_production, content_type
):
    model_id = RegisteredModel.objects.get(name="iris").pk
    for method, path, body in _routes(model_id):
        response = _send(staff_api, method, path, body, content_type)
        assert response.status_code < 500 and response.status_code != 415, (path, response.content)
        if "predict" in path and "feedback" not in path:
            assert response.status_code == 200, (path, response.content)


@pytest.mark.parametrize("charset", ["latin-1", "ISO-8859-1", "utf-16"])
def test_another_charset_is_a_415_naming_utf_8_on_every_route(staff_api, iris_production, charset):
    model_id = RegisteredModel.objects.get(name="iris").pk
    for method, path, body in _routes(model_id):
        response = _send(staff_api, method, path, body, f"application/json; charset={charset}")
        assert response.status_code == 415, (path, response.content)
        error = response.json()["error"]
        assert error["type"] == "unsupported_media_type" and "utf-8" in error["message"]


@pytest.mark.parametrize("accept", ["application/json; charset=utf-8", "APPLICATION/JSON", "*/*"])
def test_accept_with_parameters_in_any_case_is_honoured(staff_api, iris_production, accept):
    model_id = RegisteredModel.objects.get(name="iris").pk
    for method, path, body in _routes(model_id):
        response = _send(staff_api, method, path, body, "application/json", HTTP_ACCEPT=accept)
        assert response.status_code not in (406, 415) and response.status_code < 500, path
        assert response["Content-Type"].startswith("application/json")


def test_accept_asking_only_for_another_charset_is_a_406_naming_utf_8(staff_api, iris_production):
    model_id = RegisteredModel.objects.get(name="iris").pk
    for method, path, body in _routes(model_id):
        response = _send(
            staff_api,
            method,
            path,
            body,
            "application/json",
            HTTP_ACCEPT="application/json; charset=iso-8859-1",
        )
        assert response.status_code == 406, (path, response.content)
        assert "utf-8" in response.json()["error"]["message"]


def test_json_only_routes_refuse_form_bodies(staff_api, iris_production):
    response = staff_api.post("/api/v1/models/", {"name": "formed"}, format="multipart")
    assert response.status_code == 415
    response = staff_api.put("/api/v1/models/iris/traffic", {"splits": ""}, format="multipart")
    assert response.status_code == 415


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("post", "/api/v1/predictions/{request_id}/feedback", "actual"),
        ("post", "/api/v1/models/", "description"),
        ("patch", "/api/v1/models/iris/", "description"),
        ("put", "/api/v1/models/iris/traffic", "splits"),
        ("post", "/api/v1/models/iris/predict", "features"),
        ("post", "/api/v1/models/iris/versions/1/predict", "features"),
    ],
)
def test_deep_nesting_and_nul_are_400s_naming_the_field_on_every_json_route(
    staff_api, iris_production, method, path, field
):
    predicted = staff_api.post("/api/v1/models/iris/predict", {"features": IRIS_ROW}, format="json")
    path = path.format(request_id=predicted.json()["request_id"])
    bodies = {
        "deep": '{"' + field + '": ' + _nested(1000) + "}",
        "nul value": json.dumps({field: "a\u0000b", "name": "nul-name"}),
        "nul key": json.dumps({field: {"k\u0000": 1}, "name": "nul-key"}),
    }
    for kind, raw in bodies.items():
        response = getattr(staff_api, method)(path, raw, content_type="application/json")
        assert response.status_code == 400, (kind, path, response.content)
        error = response.json()["error"]
        assert any(name.startswith(field) for name in error.get("fields", {})), (kind, error)
    assert RegisteredModel.objects.count() == 1


def test_a_nul_in_the_typed_fast_path_of_predict_is_named(client_api, iris_production):
    raw = json.dumps({"features": IRIS_ROW, "client_id": "a\u0000"})
    response = client_api.post("/api/v1/models/iris/predict", raw, content_type="application/json")
    assert response.status_code == 400
    assert "client_id" in response.json()["error"]["fields"]


def test_a_nul_in_upload_metadata_is_a_400_not_a_500(staff_api, iris_model):
    artifact = SimpleUploadedFile("model.skops", factories.iris_classifier_bytes())
    response = staff_api.post(
        "/api/v1/models/iris/versions/",
        {"artifact": artifact, "metadata": json.dumps({"note": "a\u0000b"})},
        format="multipart",
    )
    assert response.status_code == 400, response.content
    assert "metadata" in response.json()["error"]["fields"]


def test_a_chunked_body_the_server_cannot_read_is_refused_with_411(staff_api, iris_production):
    # Django's test client hands the view no terminated input stream: nothing can read it.
    response = staff_api.generic(
        "POST",
        "/api/v1/models/iris/predict",
        b"",
        content_type="application/json",
        HTTP_TRANSFER_ENCODING="chunked",
    )
    assert response.status_code == 411
    assert response.json()["error"]["type"] == "length_required"


def test_a_chunked_body_on_a_terminated_stream_is_read(staff_api, iris_production):
    body = json.dumps({"features": IRIS_ROW}).encode()
    response = staff_api.generic(
        "POST",
        "/api/v1/models/iris/predict",
        b"",
        content_type="application/json",
        HTTP_TRANSFER_ENCODING="chunked",
        **{"wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True},
    )
    assert response.status_code == 200, response.content


def test_a_body_that_stops_arriving_is_a_408():
    class Stalled:
        def read(self, size=-1):
            raise TimeoutError("timed out")  # the server's socket timeout

    with pytest.raises(RequestTimeout):
        read_body(Stalled())


@pytest.mark.parametrize(
    "path", ["/api/v1/models/iris/predict", "/api/v1/models/", "/api/v1/predict/iris"]
)
def test_refused_tokens_are_throttled_per_address(iris_production, path, throttle_window_room):
    throttle_window_room(60)
    api = APIClient()
    statuses = []
    for i in range(60):
        api.credentials(HTTP_AUTHORIZATION=f"Bearer made-up-token-{i}")
        statuses.append(api.post(path, {"features": IRIS_ROW}, format="json").status_code)
    assert set(statuses) == {401, 429}
    assert statuses[-1] == 429
    again = api.get("/api/v1/models/")
    assert again.status_code == 429 and int(again["Retry-After"]) > 0


# --- Database outages -------------------------------------------------------------------------


@pytest.fixture
def database_down(monkeypatch, transactional_db):
    """The database becomes unreachable. On PostgreSQL for real: the connection is pointed at
    a port nobody listens on. On SQLite (an in-memory test database that closing would lose)
    the fault is injected on purpose: connecting fails as SQLite does when its lock wait
    times out."""
    if connection.vendor == "postgresql":
        from tests.predictions.conftest import _closed_port

        port = connection.settings_dict["PORT"]
        connection.close()
        connection.settings_dict["PORT"] = str(_closed_port())
        yield
        connection.close()
        connection.settings_dict["PORT"] = port
        return

    def locked(*args, **kwargs):
        raise OperationalError("database is locked")

    from django.db import connections

    monkeypatch.setattr(connections["default"], "ensure_connection", locked)
    yield


def _outage(response) -> None:
    assert response.status_code == 503, response.content
    assert int(response["Retry-After"]) > 0
    assert response.json()["error"]["type"] == "database_unavailable"


@pytest.mark.django_db(transaction=True)
def test_a_database_outage_is_503_everywhere_and_predictions_keep_serving(staff_user, request):
    iris = factories.registered_model_create("iris")
    from tests.predictions.conftest import iris_version, promote

    promote(iris_version(iris))
    session = Client(raise_request_exception=False)
    session.force_login(staff_user)  # first: a login saves the user, which drops its tokens
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.token_create(staff_user)}")
    warm = api.post("/api/v1/models/iris/predict", {"features": IRIS_ROW}, format="json")
    assert warm.status_code == 200

    request.getfixturevalue("database_down")
    # The token, routing and model this process holds keep predictions answering.
    served = api.post("/api/v1/models/iris/predict", {"features": IRIS_ROW}, format="json")
    assert served.status_code == 200, served.content
    ready = api.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["checks"]["database"]["status"] == "degraded"

    _outage(api.get("/api/v1/models/"))
    _outage(api.post("/api/v1/models/", {"name": "during-outage"}, format="json"))
    artifact = SimpleUploadedFile("model.skops", factories.iris_classifier_bytes())
    _outage(api.post("/api/v1/models/iris/versions/", {"artifact": artifact}, format="multipart"))
    fresh = APIClient()
    fresh.credentials(HTTP_AUTHORIZATION="Bearer a-token-this-process-never-saw")
    _outage(fresh.get("/api/v1/models/"))
    # Outside DRF (the admin): the same 503 in the same shape.
    _outage(session.get("/admin/mlregistry/registeredmodel/"))


@pytest.mark.django_db(transaction=True)
def test_readiness_is_503_only_when_nothing_can_be_served(request):
    from predictions.loader import model_cache

    model_cache.clear()
    request.getfixturevalue("database_down")
    response = APIClient().get("/health/ready")
    assert response.status_code == 503 and response.json()["checks"]["models"]["status"] == "down"


def test_a_value_the_database_refuses_is_a_400_not_a_500(staff_api, iris_model, monkeypatch):
    # Fault injected on purpose: the service hits a DataError (a value out of the column's
    # range) that validation did not foresee.
    from django.db import DataError

    from mlregistry import views

    def refuse(**kwargs):
        raise DataError("value out of range for type integer")

    monkeypatch.setattr(views.services, "registered_model_update", refuse, raising=True)
    response = staff_api.patch("/api/v1/models/iris/", {"description": "x"}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_data"
