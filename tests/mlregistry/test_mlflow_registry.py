"""`manage.py import_mlflow_registry` against a real MLflow tracking server started here on
loopback (`mlflow server`, SQLite backend, local artifact root), with models logged and
registered by MLflow's own client (tests/mlflow_client.py in the mlflow virtualenv)."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from mlregistry.artifacts import load_version_estimator
from mlregistry.models import AuditEvent, ModelVersion, RegisteredModel
from tests import factories, mlflow_env

pytestmark = [pytest.mark.django_db, pytest.mark.storage]


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """A tracking server holding iris-mlflow v1 (Production), v2 (Staging, cloudpickle), v3
    (Production; aliases champion -> 3, challenger -> 2), diabetes-mlflow v1 and
    tensor-mlflow v1 (a tensor signature)."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    with mlflow_env.tracking_server(folder) as uri:
        logged = mlflow_env.client("populate", uri)["logged"]
        yield uri, {(x["name"], x["version"]): x for x in logged}


def _import(uri: str, *args: str) -> str:
    out = io.StringIO()
    call_command("import_mlflow_registry", "--tracking-uri", uri, *args, stdout=out)
    return out.getvalue()


def _row(output: str, model: str, version: int) -> list[str]:
    for line in output.splitlines():
        cells = line.split()
        if cells[:2] == [model, str(version)]:
            return cells
    raise AssertionError(f"no row for {model} v{version} in:\n{output}")


def test_registry_import_copies_versions_stages_aliases_runs_and_is_idempotent(tracking):
    uri, logged = tracking
    factories.staff_create("importer", extra_perms=["upload_pickle"])

    dry = _import(uri, "--dry-run", "--user", "importer")
    assert "Dry run: nothing written." in dry
    assert _row(dry, "iris-mlflow", 3)[2:] == ["Production", "production", "would", "import"]
    assert not RegisteredModel.objects.exists() and not AuditEvent.objects.exists()

    first = _import(uri, "--user", "importer")
    assert _row(first, "iris-mlflow", 1)[2:] == ["Production", "archived", "imported"]
    assert _row(first, "iris-mlflow", 2)[2:] == ["Staging", "staging", "imported"]
    assert _row(first, "iris-mlflow", 3)[2:] == ["Production", "production", "imported"]
    assert _row(first, "diabetes-mlflow", 1)[-1] == "imported"
    assert _row(first, "tensor-mlflow", 1)[-1] == "refused"
    assert "tensor-mlflow v1: The MLflow model has a tensor signature" in first
    assert "v1 was in Production in MLflow as well as v3" in first

    iris = RegisteredModel.objects.get(name="iris-mlflow")
    assert iris.description == "Iris species, from MLflow"
    assert iris.tags == {"team": "vision"}
    assert iris.task == "classification"
    assert RegisteredModel.objects.get(name="diabetes-mlflow").task == "regression"
    assert not RegisteredModel.objects.filter(name="tensor-mlflow").exists()
    versions = {v.version: v for v in iris.versions.all()}
    assert sorted(versions) == [1, 2, 3]
    assert versions[2].artifact_format == "joblib"  # cloudpickle: the pickle policy applied
    for number, version in versions.items():
        run = logged[("iris-mlflow", number)]
        mlflow = version.metadata["mlflow"]
        assert mlflow["run_id"] == run["run_id"]
        assert mlflow["registered_model"] == "iris-mlflow" and mlflow["version"] == number
        assert mlflow["tags"] == {"trained_by": "mlflow-test"}
        assert mlflow["description"].startswith("classifier with C=")
        assert f"/runs/{run['run_id']}" in mlflow["run_url"]
        assert version.params["kind"] == "classifier"
        assert version.metrics["train_score"] > 0.8
        assert version.source == "import"
        assert version.run_id == run["run_id"]  # lineage
        assert f"/runs/{run['run_id']}" in version.source_url
        assert version.tags == {"trained_by": "mlflow-test"}
        assert version.input_schema[0]["name"] == "sepal_length"
        assert (
            load_version_estimator(version).predict(factories.iris_frame()[0].head(3)).tolist()
            == ["setosa"] * 3
        )
    aliases = {row.alias: row.version.version for row in iris.aliases.select_related("version")}
    assert aliases == {"champion": 3, "challenger": 2}

    events = AuditEvent.objects.count()
    again = _import(uri, "--user", "importer")
    assert _row(again, "iris-mlflow", 3)[-1] == "exists"
    assert "4 exists, 1 refused." in again
    assert AuditEvent.objects.count() == events  # a second run writes nothing

    added = mlflow_env.client("add-version", uri)["logged"][0]
    third = _import(uri, "--user", "importer", "--model", "iris-mlflow")
    assert _row(third, "iris-mlflow", added["version"])[-1] == "imported"
    assert _row(third, "iris-mlflow", 3)[-1] == "exists"
    assert "diabetes-mlflow" not in third
    moved = {row.alias: row.version.version for row in iris.aliases.select_related("version")}
    assert moved == {"champion": added["version"], "challenger": 2}


def test_pickled_versions_need_a_user_with_the_pickle_permission(tracking):
    uri, _ = tracking
    output = _import(uri, "--model", "iris-mlflow", "--model", "no-such-model")
    assert "no-such-model: no such registered model in MLflow" in output
    assert _row(output, "iris-mlflow", 2)[-1] == "refused"
    assert "iris-mlflow v2: " in output and "upload_pickle" in output
    assert not ModelVersion.objects.filter(model__name="iris-mlflow", version=2).exists()


def test_a_version_whose_stage_failed_is_not_left_without_it(tracking, monkeypatch):
    """Fault injected on purpose: the database drops the connection when the first imported
    version is given its stage. Nothing of that version stays, so the next run imports it
    with its stage instead of reading it as already there."""
    from django.db import OperationalError

    from mlregistry import services

    uri, _ = tracking
    real = services.model_version_transition
    calls = []

    def drops_once(**kwargs):
        calls.append(kwargs["version"].version)
        if len(calls) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return real(**kwargs)

    monkeypatch.setattr(services, "model_version_transition", drops_once)
    factories.staff_create("importer", extra_perms=["upload_pickle"])
    with pytest.raises(OperationalError):
        _import(uri, "--user", "importer", "--model", "iris-mlflow")
    # v1 (Production in MLflow, archived here: v3 is the later production) was the first.
    assert calls == [1]
    assert not ModelVersion.objects.filter(model__name="iris-mlflow").exists()

    again = _import(uri, "--user", "importer", "--model", "iris-mlflow")

    assert _row(again, "iris-mlflow", 1)[2:] == ["Production", "archived", "imported"]
    assert ModelVersion.objects.get(model__name="iris-mlflow", version=1).stage == "archived"


def test_an_unreachable_tracking_server_is_a_clear_error():
    port = mlflow_env.free_port()
    with pytest.raises(CommandError, match=f"127.0.0.1:{port} cannot be reached"):
        _import(f"http://127.0.0.1:{port}")


def test_versions_past_the_upload_limit_are_refused_unread(tracking, settings):
    uri, _ = tracking
    settings.MAX_ARTIFACT_SIZE = 1024
    output = _import(uri, "--dry-run", "--model", "diabetes-mlflow")
    assert _row(output, "diabetes-mlflow", 1)[-1] == "refused"
    assert "add up to more than 1024 bytes" in output


@pytest.fixture
def lying_server():
    """A tracking server that lies (a fault injected on purpose, over real HTTP): it lists a
    model file of size 0 and then sends 3 MB of it, and its searches never run out of pages."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if "/mlflow-artifacts/artifacts/" in self.path:
                body = b"x" * (3 << 20)
                ctype = "application/octet-stream"
            elif "/mlflow-artifacts/artifacts" in self.path:
                files = [{"path": "model/MLmodel", "is_dir": False, "file_size": 0}]
                body, ctype = json.dumps({"files": files}).encode(), "application/json"
            else:
                page = {"registered_models": [{"name": "m"}], "next_page_token": "again"}
                body, ctype = json.dumps(page).encode(), "application/json"
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_tracking_server_that_lies_about_sizes_or_pages_cannot_run_the_import_away(
    lying_server, settings, monkeypatch
):
    from mlregistry import mlflow_import, mlflow_registry

    settings.MAX_ARTIFACT_SIZE = 1 << 20
    server = mlflow_registry.TrackingServer(lying_server)
    try:
        with pytest.raises(mlflow_import.MlflowModelError, match="more than 1048576 bytes"):
            server._artifact_files("run/artifacts")
        monkeypatch.setattr(mlflow_registry, "_MAX_PAGES", 5)
        with pytest.raises(mlflow_registry.MlflowRegistryError, match="after 5 pages"):
            server.registered_models()
    finally:
        server.close()
