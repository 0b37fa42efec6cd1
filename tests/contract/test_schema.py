"""The OpenAPI document itself: valid, and saying what every answer can be."""

from __future__ import annotations

import pytest
import yaml
from django.core.management import call_command

pytestmark = pytest.mark.django_db
METHODS = {"get", "put", "post", "patch", "delete"}


@pytest.fixture(scope="module")
def schema(django_db_blocker, tmp_path_factory):
    path = tmp_path_factory.mktemp("schema") / "schema.yaml"
    with django_db_blocker.unblock():
        # --fail-on-warn: a view spectacular cannot describe fails the suite, not a client.
        call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(path))
    return yaml.safe_load(path.read_text())


def _operations(schema):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


def test_operations_have_short_ids_and_one_tag(schema):
    ids = [op["operationId"] for _, _, op in _operations(schema)]
    assert len(ids) == len(set(ids))
    assert {
        "predict",
        "predict_version",
        "predict_legacy",
        "transition_version",
        "list_versions",
        "create_version",
        "download_artifact",
        "create_model",
        "rollback_model",
        "set_traffic",
        "record_feedback",
        "health",
        "readiness",
        "metrics",
    } <= set(ids)
    for _, _, operation in _operations(schema):
        assert not operation["operationId"].startswith("v1_")
        assert len(operation["tags"]) == 1 and operation["tags"][0] != "v1"


def test_every_api_answer_documents_the_error_component_and_request_id(schema):
    for path, method, operation in _operations(schema):
        responses = operation["responses"]
        for status, response in responses.items():
            assert "X-Request-ID" in response["headers"], (path, method, status)
            if status[0] in "45" and path.startswith("/api/"):
                body = response["content"]["application/json"]["schema"]
                assert body == {"$ref": "#/components/schemas/Error"}, (path, method, status)
            if status in {"429", "503"} and path.startswith("/api/"):
                assert "Retry-After" in response["headers"]
        if path.startswith("/api/"):
            assert {"401", "429", "503"} <= set(responses), (path, method)
            if "{" in path:
                assert "404" in responses
            if "requestBody" in operation:
                assert {"400", "413", "415"} <= set(responses), (path, method)
    detail = schema["components"]["schemas"]["ErrorDetail"]
    assert set(detail["properties"]) == {"type", "message", "fields", "request_id"}


def test_json_operations_accept_only_json_and_uploads_only_multipart(schema):
    for path, method, operation in _operations(schema):
        if "requestBody" not in operation:
            continue
        media = set(operation["requestBody"]["content"])
        if operation["operationId"] in {"create_version", "create_dataset", "create_batch_job"}:
            assert media == {"multipart/form-data"}
        elif operation["operationId"] in {"invoke", "invoke_version", "invoke_alias"}:
            # MLflow's scoring protocol takes CSV as well as JSON.
            assert media == {"application/json", "text/csv"}, (path, method)
        else:
            assert media == {"application/json"}, (path, method)


def test_predict_is_documented_with_named_components_and_examples(schema):
    components = schema["components"]["schemas"]
    operation = schema["paths"]["/api/v1/models/{name}/predict"]["post"]
    body = operation["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/PredictRequest"}
    assert {"single row", "batch"} <= {e["summary"] for e in body["examples"].values()}
    ok = operation["responses"]["200"]["content"]["application/json"]
    assert ok["schema"] == {"$ref": "#/components/schemas/PredictResult"}
    assert len(ok["examples"]) == 2
    invalid = operation["responses"]["400"]["content"]["application/json"]
    assert "fields" in next(iter(invalid["examples"].values()))["value"]["error"]
    assert [s["$ref"].rsplit("/", 1)[1] for s in components["PredictResult"]["oneOf"]] == [
        "PredictResponse",
        "BatchPredictResponse",
    ]
    single = components["PredictResponse"]["properties"]
    assert {t["type"] for t in single["prediction"]["anyOf"]} == {
        "number",
        "integer",
        "string",
        "boolean",
    }
    assert single["probabilities"]["nullable"] and single["confidence"]["nullable"]
    assert components["BatchPredictResponse"]["properties"]["predictions"]["items"] == {
        "$ref": "#/components/schemas/PredictionItem"
    }
    legacy = schema["paths"]["/api/v1/predict/{model_id}"]["post"]
    assert legacy["deprecated"] is True


def test_registry_fields_are_typed(schema):
    version = schema["components"]["schemas"]["ModelVersionOutput"]["properties"]
    assert version["input_schema"]["items"]["properties"]["type"]["enum"]
    assert version["metrics"]["additionalProperties"] == {"type": "number"}
    feedback = schema["components"]["schemas"]["FeedbackInputRequest"]["properties"]
    assert "anyOf" in feedback["actual"]


def test_health_readiness_and_metrics_are_documented(schema):
    assert set(schema["paths"]["/health/ready"]["get"]["responses"]) == {"200", "503"}
    assert "text/plain" in schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert schema["paths"]["/health"]["get"]["security"] == [{}]
