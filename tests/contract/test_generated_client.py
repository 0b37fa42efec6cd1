"""A client generated from /api/schema/ with openapi-python-client (offline, into a temporary
folder) imports completely and runs the README workflow against a live server, parsing every
answer, errors included, into its typed models."""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import skops.io as sio
from django.core.management import call_command

from tests.live import IRIS_ROW, iris_named_classifier

pytestmark = pytest.mark.django_db(transaction=True)
BIN = Path(sys.executable).parent


@pytest.fixture
def generated(tmp_path):
    schema = tmp_path / "schema.yaml"
    call_command("spectacular", "--file", str(schema))
    # ruff (a dev dependency) formats the output; nothing is fetched: no proxy, no index.
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "NO_PROXY": "*",
        "PIP_NO_INDEX": "1",
    }
    # The invocations routes take text/csv, which this generator does not know: as README says,
    # it is told to pass such a body as it passes a binary one.
    config = tmp_path / "generator.yaml"
    config.write_text("content_type_overrides:\n  text/csv: application/octet-stream\n")
    result = subprocess.run(
        [
            str(BIN / "openapi-python-client"),
            "generate",
            "--path",
            str(schema),
            "--config",
            str(config),
            "--meta",
            "none",
            "--output-path",
            str(tmp_path / "registry_api"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Its warnings (a construct it skipped: an operation then loses a body type) go to stderr.
    assert "warning" not in (result.stdout + result.stderr).lower(), result.stdout + result.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        package = importlib.import_module("registry_api")
        yield package
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.split(".")[0] == "registry_api"]:
            del sys.modules[name]


def _import_all(package) -> list[str]:
    names = []
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)
        names.append(info.name)
    return names


def test_generated_client_imports_and_runs_the_readme_workflow(generated, live_world):
    modules = _import_all(generated)
    operations = [m for m in modules if m.count(".") == 3 and ".api." in m]
    assert len(operations) >= 27

    from registry_api import AuthenticatedClient
    from registry_api.api.feedback import record_feedback
    from registry_api.api.models import create_model, get_model, rollback_model
    from registry_api.api.predict import predict, predict_legacy
    from registry_api.api.traffic import delete_traffic, set_traffic
    from registry_api.api.versions import create_version, download_artifact, transition_version
    from registry_api.models import (
        BatchPredictResponse,
        Error,
        FeedbackInputRequest,
        FeedbackOutput,
        ModelVersionOutput,
        ModelVersionTransitionOutput,
        ModelVersionUploadInputRequest,
        PredictBatchRequest,
        PredictBatchRequestInstancesItem,
        PredictResponse,
        PredictSingleRequest,
        PredictSingleRequestFeatures,
        RegisteredModelInputRequest,
        RegisteredModelOutput,
        RollbackInputRequest,
        SplitItemRequest,
        StageEnum,
        TrafficSplitInputRequest,
        TrafficSplitListOutput,
        TransitionInputRequest,
    )
    from registry_api.types import File

    staff = AuthenticatedClient(base_url=live_world.url, token=live_world.staff)
    client = AuthenticatedClient(base_url=live_world.url, token=live_world.client)

    created = create_model.sync(client=staff, body=RegisteredModelInputRequest(name="generated"))
    assert isinstance(created, RegisteredModelOutput) and created.name == "generated"
    again = create_model.sync(client=staff, body=RegisteredModelInputRequest(name="generated"))
    assert isinstance(again, Error) and again.error.type_ == "conflict"
    assert again.error.request_id

    data = sio.dumps(iris_named_classifier())
    versions = []
    for _ in range(2):
        body = ModelVersionUploadInputRequest(
            artifact=File(payload=data, file_name="iris.skops"),
            expected_sha256=hashlib.sha256(data).hexdigest(),
        )
        version = create_version.sync("generated", client=staff, body=body)
        assert isinstance(version, ModelVersionOutput), version
        versions.append(version)
    assert [f.name for f in versions[0].input_schema][:2] == ["sepal_length", "sepal_width"]
    wrong = ModelVersionUploadInputRequest(
        artifact=File(payload=data, file_name="iris.skops"), expected_sha256="0" * 64
    )
    refused = create_version.sync("generated", client=staff, body=wrong)
    assert isinstance(refused, Error) and "artifact" in refused.error.fields.additional_properties

    promoted = transition_version.sync(
        "generated", 1, client=staff, body=TransitionInputRequest(stage=StageEnum.PRODUCTION)
    )
    assert isinstance(promoted, ModelVersionTransitionOutput)
    assert promoted.stage == StageEnum.PRODUCTION and promoted.aliases_removed == []

    single = predict.sync(
        "generated",
        client=client,
        body=PredictSingleRequest(features=PredictSingleRequestFeatures.from_dict(IRIS_ROW)),
    )
    assert isinstance(single, PredictResponse)
    assert single.prediction == "setosa" and single.probabilities["setosa"] > 0.9
    rows = [PredictBatchRequestInstancesItem.from_dict(IRIS_ROW) for _ in range(3)]
    batch = predict.sync("generated", client=client, body=PredictBatchRequest(instances=rows))
    assert isinstance(batch, BatchPredictResponse) and len(batch.predictions) == 3
    regressor = predict.sync(
        "diabetes", client=client, body=PredictSingleRequest(features=_diabetes_row())
    )
    assert isinstance(regressor, PredictResponse) and isinstance(regressor.prediction, float)
    margin = predict_legacy.sync(
        "iris-margin",
        client=client,
        body=PredictSingleRequest(features=PredictSingleRequestFeatures.from_dict(IRIS_ROW)),
    )
    assert isinstance(margin, PredictResponse) and margin.probabilities is None
    # MLflow's scoring route with a CSV body, as the generator was configured to pass one.
    from registry_api.api.mlflow import invoke

    header = ",".join(IRIS_ROW)
    values = ",".join(str(v) for v in IRIS_ROW.values())
    csv_body = File(payload=io.BytesIO(f"{header}\n{values}\n".encode()), mime_type="text/csv")
    scored = invoke.sync_detailed("generated", client=client, body=csv_body)
    assert scored.status_code == 200, scored.content
    assert json.loads(scored.content)["predictions"] == ["setosa"]

    invalid = predict.sync(
        "generated",
        client=client,
        body=PredictSingleRequest(features=PredictSingleRequestFeatures.from_dict({"x": 1})),
    )
    assert isinstance(invalid, Error) and invalid.error.type_ == "validation_error"
    assert "petal_width" in invalid.error.fields.additional_properties
    missing = get_model.sync("nope", client=client)
    assert isinstance(missing, Error) and missing.error.type_ == "not_found"

    feedback = record_feedback.sync(
        single.request_id, client=client, body=FeedbackInputRequest(actual="setosa")
    )
    assert isinstance(feedback, FeedbackOutput) and feedback.rows == 1

    transition_version.sync(
        "generated", 2, client=staff, body=TransitionInputRequest(stage=StageEnum.STAGING)
    )
    split = TrafficSplitInputRequest(
        splits=[SplitItemRequest(version=1, weight=80), SplitItemRequest(version=2, weight=20)]
    )
    traffic = set_traffic.sync("generated", client=staff, body=split)
    assert isinstance(traffic, TrafficSplitListOutput) and len(traffic.splits) == 2
    assert delete_traffic.sync_detailed("generated", client=staff).status_code == 204

    transition_version.sync(
        "generated", 2, client=staff, body=TransitionInputRequest(stage=StageEnum.PRODUCTION)
    )
    back = rollback_model.sync("generated", client=staff, body=RollbackInputRequest())
    assert isinstance(back, ModelVersionTransitionOutput) and back.version == 1

    artifact = download_artifact.sync_detailed("generated", 1, client=staff)
    assert artifact.status_code == 200 and artifact.content == data
    denied = download_artifact.sync("generated", 1, client=client)
    assert isinstance(denied, Error) and denied.error.type_ == "permission_denied"


def _diabetes_row():
    from registry_api.models import PredictSingleRequestFeatures
    from sklearn.datasets import load_diabetes

    row = load_diabetes(as_frame=True).data.iloc[0].to_dict()
    return PredictSingleRequestFeatures.from_dict(row)
