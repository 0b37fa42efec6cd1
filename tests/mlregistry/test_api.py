import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from mlregistry.models import AuditEvent, ModelVersion
from tests import factories

pytestmark = pytest.mark.django_db


def _upload(api, name="iris", data=None, **fields):
    payload = {
        "artifact": SimpleUploadedFile("m.skops", data or factories.iris_classifier_bytes()),
        **fields,
    }
    return api.post(f"/api/v1/models/{name}/versions/", payload, format="multipart")


def test_staff_registers_uploads_and_promotes(staff_api):
    response = staff_api.post(
        "/api/v1/models/", {"name": "iris", "task": "classification"}, format="json"
    )
    assert response.status_code == 201, response.json()
    response = _upload(staff_api, metrics='{"accuracy": 0.95}')
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["name"] == "iris" and body["version"] == 1 and body["stage"] == "none"
    assert len(body["artifact_sha256"]) == 64 and body["metrics"] == {"accuracy": 0.95}
    assert body["created_by"] == "staff"
    response = staff_api.post(
        "/api/v1/models/iris/versions/1/transition",
        {"stage": "production", "comment": "go"},
        format="json",
    )
    assert response.status_code == 200, response.json()
    assert response.json()["stage"] == "production"
    detail = staff_api.get("/api/v1/models/iris/versions/1/").json()
    assert detail["transitions"][0]["comment"] == "go"
    assert staff_api.get("/api/v1/models/iris/").json()["production_version"] == 1


def test_anonymous_gets_401_in_the_error_shape(anon_api):
    response = anon_api.get("/api/v1/models/")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "not_authenticated"
    assert response.json()["error"]["request_id"] == response["X-Request-ID"]


def test_client_token_reads_but_cannot_write(client_api, iris_model):
    assert client_api.get("/api/v1/models/").status_code == 200
    assert client_api.post("/api/v1/models/", {"name": "x"}, format="json").status_code == 403
    assert _upload(client_api).status_code == 403
    assert not ModelVersion.objects.exists()


def test_unknown_model_is_404_json(staff_api):
    response = staff_api.get("/api/v1/models/nope/")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"


def test_patch_cannot_change_stage(staff_api, iris_model):
    response = staff_api.patch("/api/v1/models/iris/", {"stage": "production"}, format="json")
    assert response.status_code == 400
    assert "transition" in response.json()["error"]["fields"]["stage"][0]
    # Any other field it does not take is named too: a misspelt one is not a silent 200.
    for body in ({"descripton": "x"}, {"name": "other"}):
        refused = staff_api.patch("/api/v1/models/iris/", body, format="json")
        assert refused.status_code == 400, body
        assert (
            "not a field of this request" in refused.json()["error"]["fields"][next(iter(body))][0]
        )


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/api/v1/models/", {"name": "other", "descripton": "x"}),
        ("put", "/api/v1/models/iris/aliases/champion", {"version": 1, "coment": "x"}),
        ("post", "/api/v1/models/iris/versions/1/transition", {"stage": "staging", "archive": 1}),
        ("post", "/api/v1/models/iris/rollback", {"comment": "x", "to_version": 1}),
        ("put", "/api/v1/models/iris/traffic", {"splits": [{"version": 1, "weight": 100}], "x": 1}),
    ],
)
def test_a_misspelt_field_of_a_json_write_is_a_400_naming_it(
    staff_api, iris_model, method, path, body
):
    factories.version_create(iris_model)
    before = AuditEvent.objects.count()

    response = getattr(staff_api, method)(path, body, format="json")

    assert response.status_code == 400, response.content
    misspelt = [name for name in body if name in response.json()["error"]["fields"]]
    assert misspelt and "not a field of this request" in str(response.json()["error"]["fields"])
    assert AuditEvent.objects.count() == before


@pytest.mark.parametrize("page", ["\u0662", "\uff12", "2", "last", "x"])
def test_page_numbers_are_ascii_digits(staff_api, page):
    for i in range(51):  # two pages
        factories.registered_model_create(f"paged-{i}")

    response = staff_api.get("/api/v1/models/", {"page": page})

    if page in ("2", "last"):
        assert response.status_code == 200
        assert len(response.json()["results"]) == 1
    else:
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "not_found"
