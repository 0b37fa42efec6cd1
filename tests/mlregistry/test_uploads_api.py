"""Upload fields: JSON strings in multipart, checked before anything is stored."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from mlregistry.models import ModelVersion
from tests import factories

pytestmark = [pytest.mark.django_db, pytest.mark.storage]

COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def _upload(api, **fields):
    payload = {
        "artifact": SimpleUploadedFile("m.skops", factories.iris_classifier_bytes()),
        **fields,
    }
    return api.post("/api/v1/models/iris/versions/", payload, format="multipart")


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        ({"metrics": "{not json"}, "metrics"),
        ({"metrics": '{"accuracy": "high"}'}, "metrics"),
        ({"metrics": "[1, 2]"}, "metrics"),
        ({"metrics": '{"accuracy": %s}' % ("9" * 400)}, "metrics"),
        ({"metrics": '{"accuracy": -%s}' % ("9" * 400)}, "metrics"),
        ({"metadata": "[]"}, "metadata"),
        ({"params": '"x"'}, "params"),
        ({"input_schema": '["only_one"]'}, "input_schema"),
        ({"input_schema": "[]"}, "input_schema"),
        ({"reference_sample": '{"a": 1}'}, "reference_sample"),
        ({"reference_sample": '[{"sepal_length": 1}]'}, "reference_sample[0]"),
        ({"artifact_format": "onnx"}, "artifact_format"),
    ],
)
def test_bad_fields_are_400_naming_the_field_and_store_nothing(
    staff_api, iris_model, fields, bad_field
):
    response = _upload(staff_api, **fields)
    assert response.status_code == 400, response.json()
    assert bad_field in response.json()["error"]["fields"]
    assert not ModelVersion.objects.exists()


def test_supplied_schema_with_ranges_and_reference_sample(staff_api, iris_model):
    schema = [{"name": n, "type": "float", "min": 0, "max": 10} for n in COLUMNS]
    x, _ = factories.iris_frame()
    import json

    response = _upload(
        staff_api,
        input_schema=json.dumps(schema),
        reference_sample=json.dumps(x.head(20).to_dict(orient="records")),
        params='{"note": "hand-tuned"}',
    )
    assert response.status_code == 201, response.json()
    version = ModelVersion.objects.get()
    assert version.input_schema[0]["max"] == 10
    assert len(version.reference_sample) == 20
    assert version.reference_stats["sepal_length"]["count"] == 20
    assert version.params == {"note": "hand-tuned"}


def test_reference_sample_is_bounded(iris_model, settings):
    settings.REFERENCE_SAMPLE_MAX_ROWS = 10
    x, _ = factories.iris_frame()
    version = factories.version_create(iris_model, reference_sample=x.to_dict(orient="records"))
    assert len(version.reference_sample) == 10


def test_version_list_and_unknown_version(staff_api, iris_model):
    factories.version_create(iris_model, c=1.0)
    factories.version_create(iris_model, c=2.0)
    listing = staff_api.get("/api/v1/models/iris/versions/").json()
    assert [v["version"] for v in listing["results"]] == [2, 1]
    assert staff_api.get("/api/v1/models/iris/versions/9/").status_code == 404
    assert (
        staff_api.post(
            "/api/v1/models/iris/versions/9/transition", {"stage": "staging"}, format="json"
        ).status_code
        == 404
    )


def test_transition_input_is_validated(staff_api, iris_model):
    factories.version_create(iris_model)
    response = staff_api.post(
        "/api/v1/models/iris/versions/1/transition", {"stage": "live"}, format="json"
    )
    assert response.status_code == 400 and "stage" in response.json()["error"]["fields"]


def test_rollback_endpoint(staff_api, iris_model):
    factories.version_create(iris_model, c=1.0)
    factories.version_create(iris_model, c=2.0)
    for number in (1, 2):
        staff_api.post(
            f"/api/v1/models/iris/versions/{number}/transition",
            {"stage": "production"},
            format="json",
        )
    assert staff_api.post("/api/v1/models/iris/rollback", {}, format="json").json()["version"] == 1
    assert staff_api.post("/api/v1/models/iris/rollback", {}, format="json").json()["version"] == 2


def test_patch_updates_descriptive_fields(staff_api, iris_model):
    response = staff_api.patch(
        "/api/v1/models/iris/", {"description": "flowers", "tags": ["demo"]}, format="json"
    )
    assert response.status_code == 200
    # A list of keys (the former form of tags) reads as keys with empty values, merged in.
    assert response.json()["description"] == "flowers" and response.json()["tags"] == {"demo": ""}


def test_demote_previous_instead_of_archiving(staff_api, iris_model):
    factories.version_create(iris_model, c=1.0)
    factories.version_create(iris_model, c=2.0)
    staff_api.post(
        "/api/v1/models/iris/versions/1/transition", {"stage": "production"}, format="json"
    )
    staff_api.post(
        "/api/v1/models/iris/versions/2/transition",
        {"stage": "production", "archive_previous": False},
        format="json",
    )
    assert ModelVersion.objects.get(version=1).stage == "staging"


def test_same_bytes_twice_share_one_stored_file(iris_model):
    first = factories.version_create(iris_model)
    second = factories.version_create(iris_model)
    assert first.artifact.name == second.artifact.name and second.version == 2


def test_expected_sha256_guards_the_upload_in_transit(staff_api, iris_model):
    import hashlib

    good = hashlib.sha256(factories.iris_classifier_bytes()).hexdigest()
    refused = _upload(staff_api, expected_sha256="0" * 64)
    assert refused.status_code == 400
    assert "checksum mismatch" in refused.json()["error"]["message"]
    assert not ModelVersion.objects.exists()
    assert _upload(staff_api, expected_sha256="not-a-hash").status_code == 400
    accepted = _upload(staff_api, expected_sha256=good.upper())
    assert accepted.status_code == 201 and accepted.json()["artifact_sha256"] == good


def test_a_stored_metric_beyond_float_range_is_left_out_of_the_charts(iris_model):
    """Written before uploads refused it (or outside the API): the overview still renders."""
    from quality import overview

    version = factories.version_create(iris_model)
    ModelVersion.objects.filter(pk=version.pk).update(metrics={"accuracy": 10**400, "f1": 0.5})
    assert overview.version_metrics(model=iris_model) == {"f1": [(version.version, 0.5)]}
