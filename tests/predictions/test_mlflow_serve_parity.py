"""`mlflow models serve` and this server, side by side on the same MLflow model: the same
payloads (MLflow's formats, as pandas and MLflow's docs write them) get the same predictions,
and the same bad requests the same statuses.

The model folder is written by MLflow's client (mlflow.sklearn.save_model) in the mlflow
virtualenv; MLflow serves it with `--env-manager local`; this server registers the same folder
uploaded as a zip and serves it from a live server."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import httpx
import pytest
from django.conf import settings as django_settings

from mlregistry import services
from tests import factories, mlflow_env


@pytest.fixture(scope="module")
def mlflow_serving(tmp_path_factory):
    """(the model folder, the URL of `mlflow models serve` on it)."""
    folder = tmp_path_factory.mktemp("mlflow-serve")
    mlflow_env.client("save-all", str(folder / "models"))
    model = folder / "models" / "iris-skops"
    with mlflow_env.models_serve(model, folder) as url:
        yield model, url


def _zip(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


@pytest.fixture
def ours(live_server, transactional_db, settings, mlflow_serving):
    """(the invocations URL of the same model here, a client token)."""
    settings.REST_FRAMEWORK = {
        **django_settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {},
    }
    model_dir, _ = mlflow_serving
    staff = factories.staff_create()
    model = factories.registered_model_create("iris", actor=staff)
    version = services.model_version_create(
        model=model, artifact=io.BytesIO(_zip(model_dir)), actor=staff
    )
    services.model_version_transition(version=version, stage="production", actor=staff)
    token = factories.token_create(factories.user_create("client"))
    return f"{live_server.url}/api/v1/models/iris/invocations", token


def _frame(rows: int = 6):
    x, _ = factories.iris_frame()
    return x.iloc[::23].head(rows).reset_index(drop=True)


def _both(mlflow_url: str, ours, body, content_type: str = "application/json"):
    url, token = ours
    if not isinstance(body, str | bytes):
        import json

        body = json.dumps(body)
    theirs = httpx.post(
        f"{mlflow_url}/invocations",
        content=body,
        headers={"Content-Type": content_type},
        timeout=30,
    )
    mine = httpx.post(
        url,
        content=body,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {token}"},
        timeout=30,
    )
    return theirs, mine


FORMATS = {
    "dataframe_split": lambda f: {"dataframe_split": f.to_dict(orient="split")},
    "dataframe_split without index": lambda f: {
        "dataframe_split": {"columns": list(f.columns), "data": f.values.tolist()}
    },
    "dataframe_records": lambda f: {"dataframe_records": f.to_dict(orient="records")},
    "instances": lambda f: {"instances": f.to_dict(orient="records")},
    "inputs records": lambda f: {"inputs": f.to_dict(orient="records")},
    "inputs columns": lambda f: {"inputs": f.to_dict(orient="list")},
}


@pytest.mark.parametrize("rows", [1, 6])
@pytest.mark.parametrize("kind", list(FORMATS))
def test_json_formats_answer_as_mlflow_models_serve(mlflow_serving, ours, kind, rows):
    _, mlflow_url = mlflow_serving
    theirs, mine = _both(mlflow_url, ours, FORMATS[kind](_frame(rows)))
    assert theirs.status_code == 200, theirs.text
    assert mine.status_code == 200, mine.text
    assert mine.json() == theirs.json()


def test_csv_answers_as_mlflow_models_serve(mlflow_serving, ours):
    _, mlflow_url = mlflow_serving
    theirs, mine = _both(mlflow_url, ours, _frame().to_csv(index=False), "text/csv")
    assert theirs.status_code == mine.status_code == 200, (theirs.text, mine.text)
    assert mine.json() == theirs.json()


BAD = {
    "no format key": ({"rows": []}, "application/json"),
    "two format keys": (
        {"dataframe_records": [], "instances": []},
        "application/json",
    ),
    "not JSON": ("{not json", "application/json"),
    "a JSON list": ("[1, 2]", "application/json"),
    "split row of the wrong width": (
        {"dataframe_split": {"columns": ["sepal_length"], "data": [[1.0, 2.0]]}},
        "application/json",
    ),
    "a missing column": (
        {"dataframe_records": [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4}]},
        "application/json",
    ),
    "text in a double column": (
        {
            "dataframe_records": [
                {"sepal_length": "abc", "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
            ]
        },
        "application/json",
    ),
    "another media type": ("sepal_length\n5.1", "text/plain"),
    "another charset": ('{"inputs": []}', "application/json; charset=latin-1"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_get_the_status_mlflow_models_serve_gives(mlflow_serving, ours, case):
    _, mlflow_url = mlflow_serving
    body, content_type = BAD[case]
    theirs, mine = _both(mlflow_url, ours, body, content_type)
    assert theirs.status_code >= 400, theirs.text
    assert mine.status_code == theirs.status_code, (theirs.text, mine.text)
    error = mine.json()
    assert error["error_code"] and error["message"]  # MLflow's keys, for clients reading them
