"""Values at the edges of what their encodings allow, each a 4xx naming the field and never a
500: lone UTF-16 surrogates (JSON may escape one; nothing can store or print it), integers past
float range (JSON allows any length), numbers past a V2 datatype's range, a bearer token that is
not ASCII, a Range of thousands of digits, a CSV header of many thousand columns, malformed
MLflow model files, a skops schema.json that expands in memory, and more tag filters than a
query can hold."""

from __future__ import annotations

import io
import json
import time
import zipfile

import pytest
import sklearn
import yaml
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from mlregistry import services
from mlregistry.models import AuditEvent, ModelVersion, RegisteredModel
from quality.models import TrainingJob
from tests import factories

pytestmark = pytest.mark.django_db

ROW = dict.fromkeys(factories.IRIS_FEATURES, 5.0)
HUGE = "9" * 400  # a JSON integer past float range, short of Python's 4,300-digit limit


@pytest.fixture(autouse=True)
def _unthrottled(settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {}}


@pytest.fixture
def served(iris_model):
    version = factories.version_create(iris_model)
    services.model_version_transition(version=version, stage="production", actor="tests")
    return version


def _post(api, url, body: str, content_type="application/json"):
    return api.post(url, body, content_type=content_type)


def _field_error(response, status=400):
    """The error object; the Open Inference Protocol's routes answer {"error": "message"}."""
    assert response.status_code == status, response.content
    error = response.json()["error"]
    if isinstance(error, str):
        return {"message": error}
    assert error.get("fields"), error
    return error


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/api/v1/models/iris/predict", '{"features": {"\\ud800": 1}}'),
        ("/api/v1/models/iris/predict", '{"features": {"sepal_length": "\\udfff"}}'),
        ("/api/v1/models/iris/invocations", '{"dataframe_records": [{"\\ud800": 1}]}'),
        (
            "/v2/models/iris/infer",
            '{"inputs": [{"name": "\\ud800", "datatype": "FP64", "shape": [1], "data": [1]}]}',
        ),
        (
            "/v2/models/iris/infer",
            '{"id": "\\uDBFF", "inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], '
            '"data": [1, 2, 3, 4]}]}',
        ),
    ],
)
def test_a_lone_surrogate_is_a_400_naming_where_it_is(client_api, served, url, body):
    error = _field_error(_post(client_api, url, body))
    assert "surrogate" in json.dumps(error)


def test_a_surrogate_pair_is_text_and_a_lone_one_is_never_stored(staff_api, client_api, served):
    paired = staff_api.patch(
        "/api/v1/models/iris/",
        '{"tags": {"emoji": "\\ud83d\\ude00"}}',
        content_type="application/json",
    )
    assert paired.status_code == 200, paired.content
    assert RegisteredModel.objects.get(name="iris").tags["emoji"] == "\U0001f600"

    lone = staff_api.patch(
        "/api/v1/models/iris/", '{"tags": {"a": "\\ud800"}}', content_type="application/json"
    )

    assert _field_error(lone)["fields"] == {"tags.a": [lone.json()["error"]["fields"]["tags.a"][0]]}
    assert "a" not in RegisteredModel.objects.get(name="iris").tags
    assert client_api.get("/api/v1/models/").status_code == 200
    assert staff_api.get("/api/v1/audit-events/").status_code == 200


def test_numbers_past_float_range_are_400s_naming_the_field(staff_api, iris_model, served):
    schema = json.dumps([{"name": n, "type": "float", "min": 0} for n in factories.IRIS_FEATURES])
    uploads = {
        "input_schema": schema.replace('"min": 0', f'"min": {HUGE}', 1),
        "reference_sample": json.dumps([ROW]).replace("5.0", HUGE, 1),
    }
    for field, value in uploads.items():
        response = staff_api.post(
            "/api/v1/models/iris/versions/",
            {
                "artifact": SimpleUploadedFile("m.skops", factories.iris_classifier_bytes()),
                field: value,
            },
            format="multipart",
        )
        _field_error(response)
    assert ModelVersion.objects.count() == 1


def test_training_settings_past_float_range_are_400s(iris_model, served):
    from django.contrib.auth.models import User

    root = User.objects.create_superuser("root", "root@example.org", "pw")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.token_create(root)}")
    factories.iris_dataset_create()
    for body in (
        f'{{"dataset": "iris-data", "estimator": "LogisticRegression", '
        f'"estimator_params": {{"C": {HUGE}}}}}',
        f'{{"dataset": "iris-data", "margin": {HUGE}}}',
        '{"dataset": "iris-data", "holdout_fraction": "\\u0660.\\u0662"}',
    ):
        _field_error(_post(api, "/api/v1/models/iris/training-jobs", body))
    assert not TrainingJob.objects.exists()


@pytest.mark.parametrize(
    ("datatype", "value"),
    [("INT8", 300), ("INT8", -129), ("UINT8", -1), ("UINT16", 70000), ("FP16", 1e6)],
)
def test_a_v2_value_outside_its_datatype_is_a_400_not_another_number(
    client_api, served, datatype, value
):
    body = {
        "inputs": [{"name": "x", "datatype": datatype, "shape": [1, 4], "data": [value, 3, 1, 0]}]
    }
    error = _field_error(_post(client_api, "/v2/models/iris/infer", json.dumps(body)))
    assert "range" in error["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": [5, 3, 1, 0],
                     "parameters": "x"}]},
        {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": [5, 3, 1, 0]}],
         "outputs": [{"name": "predict", "parameters": 1}]},
    ],
)  # fmt: skip
def test_v2_parameters_that_are_not_an_object_are_a_400(client_api, served, body):
    error = _field_error(_post(client_api, "/v2/models/iris/infer", json.dumps(body)))
    assert "parameters" in error["message"]


def test_a_bearer_token_that_is_not_ascii_is_a_401(served):
    anonymous = APIClient()
    for header in ("Bearer \xe9\xe9", "Bearer \xff" + "a" * 63):
        assert anonymous.get("/api/v1/models/", HTTP_AUTHORIZATION=header).status_code == 401
        predicted = anonymous.post(
            "/api/v1/models/iris/predict", {"features": ROW}, format="json",
            HTTP_AUTHORIZATION=header,
        )  # fmt: skip
        assert predicted.status_code == 401


@pytest.mark.parametrize(
    "header", ["bytes=" + "9" * 5000 + "-", "bytes=-" + "9" * 30, "bytes=\u0661-"]
)
def test_a_range_past_any_size_is_ignored(staff_api, served, header):
    response = staff_api.get("/api/v1/models/iris/versions/1/artifact", HTTP_RANGE=header)
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == factories.iris_classifier_bytes()


@pytest.mark.parametrize("quoted", [False, True])
def test_a_csv_header_of_more_columns_than_any_model_is_refused_before_pandas(
    client_api, served, quoted
):
    columns = [f"c{i}" for i in range(50_000)]
    header = ('"a\nb",' if quoted else "") + ",".join(columns)
    body = (header + "\n" + ",".join("1" for _ in columns) + "\n").encode()
    started = time.monotonic()

    response = _post(client_api, "/api/v1/models/iris/invocations", body, "text/csv")

    assert time.monotonic() - started < 3  # pandas took 19 s on this header
    assert "4096" in _field_error(response)["message"]


def test_more_tag_filters_than_a_query_can_hold_are_a_400(client_api, served):
    for path in ("/api/v1/models/", "/api/v1/models/iris/versions/"):
        query = "&".join(f"tag=k{i}:v" for i in range(600))
        error = _field_error(client_api.get(f"{path}?{query}"))
        assert "tag" in error["fields"]
    same = "&".join(["tag=team:ml"] * 600)  # one filter, repeated
    assert client_api.get(f"/api/v1/models/?{same}").status_code == 200


def _mlflow_zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in {"model.skops": factories.iris_classifier_bytes(), **files}.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _mlmodel(flavor=None, **extra) -> bytes:
    sklearn_flavor = {
        "pickled_model": "model.skops",
        "serialization_format": "skops",
        "sklearn_version": sklearn.__version__,
        **(flavor or {}),
    }
    return yaml.safe_dump({"flavors": {"sklearn": sklearn_flavor}, **extra}).encode()


@pytest.mark.parametrize(
    "files",
    [
        {"MLmodel": b"a: " + b"[" * 5000 + b"]" * 5000},
        {"MLmodel": _mlmodel(signature={"inputs": "[" * 100_000})},
        {"MLmodel": _mlmodel(signature={"inputs": '["a"]'})},
        {"MLmodel": _mlmodel(signature={"inputs": '[{"name": ["a"], "type": ["double"]}]'})},
        {"MLmodel": _mlmodel(signature="x")},
        {"MLmodel": _mlmodel(flavor={"serialization_format": ["skops"]})},
        {"MLmodel": _mlmodel().replace(b"flavors:\n", b"flavors:\n  python_function: x\n", 1)},
        {
            "MLmodel": _mlmodel(saved_input_example_info={"artifact_path": "ex.json"}),
            "ex.json": b"[" * 100_000,
        },
        {
            "MLmodel": _mlmodel(saved_input_example_info={"artifact_path": "ex.json"}),
            "ex.json": b'{"columns": 5, "data": [[1]]}',
        },
    ],
    ids=[
        "yaml-deep", "signature-deep", "signature-spec-text", "signature-spec-lists",
        "signature-text", "format-list", "python-function-text", "example-deep",
        "example-columns-number",
    ],
)  # fmt: skip
def test_a_malformed_mlflow_model_is_a_400_or_imported_without_the_part(
    staff_api, iris_model, files
):
    response = staff_api.post(
        "/api/v1/models/iris/versions/",
        {"artifact": SimpleUploadedFile("model.zip", _mlflow_zip(files))},
        format="multipart",
    )
    assert response.status_code in (201, 400), response.content
    if response.status_code == 400:
        assert response.json()["error"]["message"]


def test_a_skops_schema_that_would_expand_in_memory_is_refused_before_parsing(
    staff_api, iris_model
):
    schema = b'{"__class__": "list", "content": [' + b"[]," * 5_000_000 + b"[]]}"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("schema.json", schema)
    response = staff_api.post(
        "/api/v1/models/iris/versions/",
        {"artifact": SimpleUploadedFile("bomb.skops", buffer.getvalue())},
        format="multipart",
    )
    assert response.status_code == 400, response.content
    assert "schema.json" in response.json()["error"]["message"]


def test_a_form_field_past_the_memory_limit_is_a_413(staff_api, iris_model, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024
    response = staff_api.post(
        "/api/v1/models/iris/versions/",
        {
            "artifact": SimpleUploadedFile("m.skops", factories.iris_classifier_bytes()),
            "reference_sample": json.dumps([ROW] * 2000),
        },
        format="multipart",
    )
    assert response.status_code == 413, response.content
    assert "DATA_UPLOAD_MAX_MEMORY_SIZE" in response.json()["error"]["message"]
    assert not AuditEvent.objects.filter(verb="create", object_type__contains="version").exists()


def test_a_lone_surrogate_as_raw_bytes_is_not_json(staff_api, served):
    body = b'{"name": "s", "tags": {"k": "\xed\xa0\x80"}}'
    for method, path in (("post", "/api/v1/models/"), ("patch", "/api/v1/models/iris/")):
        response = getattr(staff_api, method)(path, body, content_type="application/json")
        assert response.status_code == 400, response.content
    assert not RegisteredModel.objects.filter(name="s").exists()


def test_a_blank_line_before_the_csv_header_does_not_pass_the_column_cap(client_api, served):
    columns = [f"c{i}" for i in range(6000)]
    body = ("\n\n" + ",".join(columns) + "\n" + ",".join("1" for _ in columns) + "\n").encode()

    response = _post(client_api, "/api/v1/models/iris/invocations", body, "text/csv")

    assert "4096" in _field_error(response)["message"]


def test_an_mlmodel_whose_flavors_have_number_keys_is_a_400(staff_api, iris_model):
    archive = _mlflow_zip({"MLmodel": b"flavors:\n  1: {}\n"})
    response = staff_api.post(
        "/api/v1/models/iris/versions/",
        {"artifact": SimpleUploadedFile("model.zip", archive)},
        format="multipart",
    )
    assert response.status_code == 400, response.content
