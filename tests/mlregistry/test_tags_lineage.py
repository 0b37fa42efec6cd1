"""Tags (key -> value) on models and versions, the list filters, and a version's lineage."""

import io
import json

import pytest

from mlregistry import services
from mlregistry.models import AuditEvent, ModelVersion, RegisteredModel, Stage
from tests import factories

SHA = "ab" * 32


def _upload(api, name="iris", c=1.0, **fields):
    data = {"artifact": io.BytesIO(factories.iris_classifier_bytes(c)), **fields}
    data["artifact"].name = "m.skops"
    return api.post(f"/api/v1/models/{name}/versions/", data, format="multipart")


@pytest.mark.django_db
def test_upload_records_tags_and_lineage_and_every_body_shows_them(staff_api, iris_model):
    response = _upload(
        staff_api,
        tags=json.dumps({"validated": "true", "team": "risk"}),
        run_id="0f3a9c2b5d",
        git_commit="A1B2C3D4E5F6",
        source_url="https://git.example.com/ml/churn/commit/a1b2c3d",
        training_dataset=json.dumps({"uri": "s3://data/churn.parquet", "sha256": SHA.upper()}),
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["tags"] == {"team": "risk", "validated": "true"}
    assert (body["run_id"], body["git_commit"]) == ("0f3a9c2b5d", "a1b2c3d4e5f6")
    assert body["source_url"] == "https://git.example.com/ml/churn/commit/a1b2c3d"
    assert body["training_dataset"] == {"uri": "s3://data/churn.parquet", "sha256": SHA}
    assert body["aliases"] == []
    detail = staff_api.get("/api/v1/models/iris/versions/1/").json()
    assert detail["training_dataset"] == body["training_dataset"]
    created = AuditEvent.objects.get(verb="create", object_type="mlregistry.modelversion")
    assert created.changes["run_id"] == [None, "0f3a9c2b5d"]


@pytest.mark.django_db
def test_upload_without_lineage_shows_empty_lineage(staff_api, iris_model):
    body = _upload(staff_api).json()
    assert (body["run_id"], body["git_commit"], body["source_url"]) == ("", "", "")
    assert body["training_dataset"] is None and body["tags"] == {}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"git_commit": "not-hex"}, "git_commit"),
        ({"git_commit": "abc"}, "git_commit"),
        ({"source_url": "ftp://x.example.com/a"}, "source_url"),
        ({"source_url": "javascript:alert(1)"}, "source_url"),
        ({"run_id": "has space"}, "run_id"),
        ({"training_dataset": json.dumps({"sha256": SHA})}, "training_dataset.uri"),
        (
            {"training_dataset": json.dumps({"uri": "s3://d", "sha256": "12"})},
            "training_dataset.sha256",
        ),
        ({"training_dataset": json.dumps({"uri": "s3://d", "x": 1})}, "training_dataset"),
        ({"training_dataset": json.dumps(["s3://d"])}, "training_dataset"),
        ({"tags": json.dumps({"bad key": "v"})}, "tags.bad key"),
        ({"tags": json.dumps({"k": 1})}, "tags.k"),
        ({"tags": json.dumps({"k": None})}, "tags.k"),
        ({"tags": json.dumps({"k": "v" * 5001})}, "tags.k"),
        ({"tags": "not json"}, "tags"),
    ],
)
def test_bad_lineage_or_tags_at_upload_is_400_naming_it_and_stores_nothing(
    staff_api, iris_model, fields, field
):
    response = _upload(staff_api, **fields)
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"]
    assert not ModelVersion.objects.exists()


@pytest.mark.django_db
def test_patch_merges_version_tags_and_null_deletes(staff_api, iris_model):
    factories.version_create(iris_model, tags={"old": "1", "keep": "k"})
    url = "/api/v1/models/iris/versions/1/"
    response = staff_api.patch(url, {"tags": {"validated": "true", "old": None}}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["tags"] == {"keep": "k", "validated": "true"}
    event = AuditEvent.objects.filter(verb="update").last()
    assert event.changes["tags"] == [{"keep": "k", "old": "1"}, {"keep": "k", "validated": "true"}]
    # Deleting a key that is not there changes nothing and writes nothing.
    before = AuditEvent.objects.count()
    assert staff_api.patch(url, {"tags": {"absent": None}}, format="json").status_code == 200
    assert AuditEvent.objects.count() == before


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body",
    [
        {"stage": "production"},
        {"run_id": "x"},
        {"tags": ["a"], "artifact_sha256": SHA},
        {"tags": {"bad key": "v"}},
        {"tags": "x"},
    ],
)
def test_patch_version_refuses_other_fields_and_bad_tags(staff_api, iris_model, body):
    factories.version_create(iris_model)
    response = staff_api.patch("/api/v1/models/iris/versions/1/", body, format="json")
    assert response.status_code == 400
    assert ModelVersion.objects.get().stage == Stage.NONE


@pytest.mark.django_db
def test_patch_version_needs_the_change_permission(client_api, iris_model):
    factories.version_create(iris_model)
    response = client_api.patch(
        "/api/v1/models/iris/versions/1/", {"tags": {"a": "b"}}, format="json"
    )
    assert response.status_code == 403


@pytest.mark.django_db
def test_model_tags_are_key_value_and_patch_merges(staff_api):
    created = staff_api.post(
        "/api/v1/models/", {"name": "churn", "tags": {"team": "risk", "tier": "1"}}, format="json"
    )
    assert created.status_code == 201 and created.json()["tags"] == {"team": "risk", "tier": "1"}
    patched = staff_api.patch(
        "/api/v1/models/churn/", {"tags": {"tier": None, "pii": "no"}}, format="json"
    ).json()
    assert patched["tags"] == {"pii": "no", "team": "risk"}
    bad = staff_api.post("/api/v1/models/", {"name": "x1", "tags": {"k": 3}}, format="json")
    assert bad.status_code == 400 and "tags.k" in bad.json()["error"]["fields"]
    assert not RegisteredModel.objects.filter(name="x1").exists()


@pytest.mark.django_db
def test_model_list_filters_by_tag_and_search(client_api):
    services.registered_model_create(
        name="churn", actor="t", tags={"team": "risk"}, description="who leaves"
    )
    services.registered_model_create(name="fraud", actor="t", tags={"team": "risk:ops"})
    services.registered_model_create(name="iris", actor="t", tags={"team": "flowers"})

    def names(query):
        response = client_api.get(f"/api/v1/models/?{query}")
        assert response.status_code == 200, response.content
        return [m["name"] for m in response.json()["results"]]

    assert names("tag=team:risk") == ["churn"]
    assert names("tag=team:risk:ops") == ["fraud"]  # split at the first colon
    assert names("tag=team") == ["churn", "fraud", "iris"]
    assert names("tag=team:risk&search=churn") == ["churn"]
    assert names("search=LEAVES") == ["churn"]
    assert names("tag=team:risk&tag=other") == []
    bad = client_api.get("/api/v1/models/?tag=bad%20key:x")
    assert bad.status_code == 400 and "tag" in bad.json()["error"]["fields"]


@pytest.mark.django_db
def test_version_list_filters_by_tag_stage_alias_and_run_id(client_api, iris_model):
    factories.version_create(iris_model, c=1.0, tags={"validated": "true"}, run_id="run-a")
    v2 = factories.version_create(
        iris_model, c=2.0, tags={"validated": "true", "a__b": "x"}, run_id="run-b"
    )
    factories.version_create(iris_model, c=3.0, tags={"validated": "false"}, run_id="run-b")
    services.model_version_transition(version=v2, stage=Stage.STAGING, actor="t")
    services.model_alias_set(model=iris_model, alias="champion", version=2, actor="t")

    def numbers(query):
        response = client_api.get(f"/api/v1/models/iris/versions/?{query}")
        assert response.status_code == 200, response.content
        return [v["version"] for v in response.json()["results"]]

    assert numbers("tag=validated:true") == [2, 1]
    assert numbers("tag=validated:true&stage=staging&alias=champion") == [2]
    assert numbers("alias=champion") == [2]
    assert numbers("alias=latest") == [3]
    assert numbers("alias=nobody") == []
    assert numbers("run_id=run-b") == [3, 2]
    assert numbers("tag=a__b:x") == [2]
    assert numbers("stage=production") == []
    assert client_api.get("/api/v1/models/iris/versions/?stage=nope").status_code == 400
