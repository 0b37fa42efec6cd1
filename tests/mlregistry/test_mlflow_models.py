"""MLflow models in: model folders written by MLflow's own client (mlflow.sklearn.save_model, in
the mlflow virtualenv), uploaded as .zip / .tar.gz to the API and the admin, or imported with
`manage.py import_mlflow_model`. Hostile archives are built here by hand, on purpose."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml
from django.core.management import CommandError, call_command

from mlregistry import mlflow_import
from mlregistry.models import ModelVersion, RegisteredModel
from mlregistry.storage import get_artifact_storage
from tests import factories, mlflow_env
from tests.storage import store_files

pytestmark = [pytest.mark.django_db, pytest.mark.storage]

IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture(scope="session")
def saved(tmp_path_factory) -> Path:
    """Model folders saved by MLflow's client: iris-skops, iris-cloudpickle, iris-pickle,
    diabetes-skops, iris-tensor."""
    folder = tmp_path_factory.mktemp("mlflow-models")
    mlflow_env.client("save-all", str(folder))
    return folder


def zipped(folder: Path, *, top: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            name = path.relative_to(folder).as_posix()
            archive.write(path, f"{top}/{name}" if top else name)
    return buffer.getvalue()


def tarred(folder: Path, *, top: str = "model") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(folder, arcname=top)
    return buffer.getvalue()


def _upload(api, name: str, data: bytes, filename: str, **fields):
    upload = io.BytesIO(data)
    upload.name = filename
    return api.post(
        f"/api/v1/models/{name}/versions/", {"artifact": upload, **fields}, format="multipart"
    )


def _stored_files() -> list[str]:
    return store_files()


def test_zip_upload_registers_the_inner_model_file_with_signature_and_example(
    staff_api, iris_model, saved
):
    folder = saved / "iris-skops"
    response = _upload(staff_api, "iris", zipped(folder), "model.zip")
    assert response.status_code == 201, response.json()
    body = response.json()
    inner = (folder / "model.skops").read_bytes()
    assert body["artifact_sha256"] == hashlib.sha256(inner).hexdigest()
    assert body["artifact_size"] == len(inner)
    assert body["artifact_format"] == "skops"
    assert body["input_schema"] == [
        {"name": name, "type": "float", "required": True} for name in IRIS_COLUMNS
    ]
    assert body["library_versions"]["scikit-learn"] == "1.9.1"
    assert body["library_versions"]["mlflow"] == "3.17.2"
    mlflow = body["metadata"]["mlflow"]
    assert mlflow["serialization_format"] == "skops"
    assert mlflow["model_file"] == "model.skops"
    assert mlflow["library_versions_compared"]["scikit-learn"] == {
        "model": "1.9.1",
        "server": "1.9.1",
    }
    version = ModelVersion.objects.get(model=iris_model, version=body["version"])
    example = json.loads((folder / "input_example.json").read_text())
    assert version.reference_sample == [
        dict(zip(example["columns"], row, strict=True)) for row in example["data"]
    ]
    # What is stored is the model file itself, not the archive.
    with get_artifact_storage().open(version.artifact.name, "rb") as handle:
        assert handle.read() == inner


def test_tar_gz_of_a_cloudpickle_model_goes_through_the_pickle_policy(
    staff_api, staff_user, iris_model, saved
):
    data = tarred(saved / "iris-cloudpickle")
    refused = _upload(staff_api, "iris", data, "model.tar.gz")
    assert refused.status_code == 403, refused.json()
    assert "upload_pickle" in refused.json()["error"]["message"]
    assert not ModelVersion.objects.exists()
    assert _stored_files() == []

    pickler = factories.staff_create("pickler", extra_perms=["upload_pickle"])
    api = staff_api.__class__()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.token_create(pickler)}")
    response = _upload(api, "iris", data, "model.tar.gz")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["artifact_format"] == "joblib"
    assert body["metadata"]["pickle_scan"]["scanner"] == "picklescan"
    assert body["metadata"]["mlflow"]["serialization_format"] == "cloudpickle"
    inner = (saved / "iris-cloudpickle" / "model.pkl").read_bytes()
    assert body["artifact_sha256"] == hashlib.sha256(inner).hexdigest()
    assert body["library_versions"]["cloudpickle"]


def test_uploaded_mlflow_model_serves_what_scikit_learn_predicts(
    staff_api, client_api, iris_model, saved
):
    from mlregistry import services
    from mlregistry.artifacts import load_skops

    response = _upload(staff_api, "iris", zipped(saved / "iris-skops", top="model"), "m.zip")
    assert response.status_code == 201, response.json()
    version = ModelVersion.objects.get(pk=ModelVersion.objects.get().pk)
    services.model_version_transition(version=version, stage="production", actor="tests")
    frame, _ = factories.iris_frame()
    rows = frame.iloc[::25]
    answer = client_api.post(
        "/api/v1/models/iris/invocations",
        {"dataframe_split": rows.to_dict(orient="split")},
        format="json",
    )
    assert answer.status_code == 200, answer.json()
    estimator = load_skops((saved / "iris-skops" / "model.skops").read_bytes())
    assert answer.json() == {"predictions": estimator.predict(rows).tolist()}


def test_tensor_signature_is_refused_with_the_reason(staff_api, iris_model, saved):
    response = _upload(staff_api, "iris", zipped(saved / "iris-tensor"), "model.zip")
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "tensor signature" in message and "named columns" in message
    assert response.json()["error"]["fields"]["artifact"]
    assert _stored_files() == []


def _edited(folder: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    spec = yaml.safe_load((copy / "MLmodel").read_text())
    edit(spec)
    (copy / "MLmodel").write_text(yaml.safe_dump(spec))
    return copy


def test_scikit_learn_version_the_server_cannot_load_is_refused_naming_both(
    staff_api, iris_model, saved, tmp_path
):
    def older(spec):
        spec["flavors"]["sklearn"]["sklearn_version"] = "1.5.2"

    folder = _edited(saved / "iris-skops", tmp_path, older)
    response = _upload(staff_api, "iris", zipped(folder), "model.zip")
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "scikit-learn 1.5.2" in message and "scikit-learn 1.9.1" in message
    assert not ModelVersion.objects.exists()


def test_model_without_sklearn_flavor_or_model_file_is_refused(
    staff_api, iris_model, saved, tmp_path
):
    def no_sklearn(spec):
        spec["flavors"].pop("sklearn")

    response = _upload(
        staff_api, "iris", zipped(_edited(saved / "iris-skops", tmp_path, no_sklearn)), "m.zip"
    )
    assert response.status_code == 400
    assert "no sklearn flavor" in response.json()["error"]["message"]

    missing = tmp_path / "missing"
    shutil.copytree(saved / "iris-skops", missing)
    (missing / "model.skops").unlink()
    response = _upload(staff_api, "iris", zipped(missing), "m.zip")
    assert response.status_code == 400
    assert "'model.skops'" in response.json()["error"]["message"]


def _hostile_zip(saved: Path, name: str, *, symlink: bool = False) -> bytes:
    buffer = io.BytesIO(zipped(saved / "iris-skops"))
    with zipfile.ZipFile(buffer, "a") as archive:
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = 0o120777 << 16
        archive.writestr(info, "/etc/passwd" if symlink else "x")
    return buffer.getvalue()


def _hostile_tar(saved: Path, member: tarfile.TarInfo) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(saved / "iris-skops", arcname="model")
        archive.addfile(member, io.BytesIO(b"x") if member.isfile() else None)
    return buffer.getvalue()


def _tar_member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = target
    member.size = 1 if kind == tarfile.REGTYPE else 0
    return member


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda s: _hostile_zip(s, "/etc/cron.d/x"), "absolute path"),
        (lambda s: _hostile_zip(s, "../escape.txt"), "escapes the archive"),
        (lambda s: _hostile_zip(s, "model/../../escape"), "escapes the archive"),
        (lambda s: _hostile_zip(s, "link", symlink=True), "links and devices"),
        (lambda s: _hostile_tar(s, _tar_member("/abs.txt")), "absolute path"),
        (lambda s: _hostile_tar(s, _tar_member("model/../../x")), "escapes the archive"),
        (lambda s: _hostile_tar(s, _tar_member("model/l", tarfile.SYMTYPE, "/etc")), "links"),
        (lambda s: _hostile_tar(s, _tar_member("model/h", tarfile.LNKTYPE, "x")), "links"),
    ],
    ids=[
        "zip-abs",
        "zip-dotdot",
        "zip-deep-dotdot",
        "zip-symlink",
        "tar-abs",
        "tar-dotdot",
        "tar-symlink",
        "tar-hardlink",
    ],
)
def test_unsafe_archive_members_are_refused_before_anything_is_written(
    staff_api, iris_model, saved, make, problem
):
    response = _upload(staff_api, "iris", make(saved), "model.zip")
    assert response.status_code == 400, response.json()
    assert problem in response.json()["error"]["message"]
    assert not ModelVersion.objects.exists()
    assert _stored_files() == []


@pytest.mark.parametrize("pack", [zipped, tarred], ids=["zip", "tar.gz"])
def test_archive_inflating_past_the_upload_limit_is_refused(
    staff_api, iris_model, saved, settings, tmp_path, pack
):
    folder = tmp_path / "big"
    shutil.copytree(saved / "iris-skops", folder)
    (folder / "padding.bin").write_bytes(bytes(3 * 1024 * 1024))  # compresses to a few KB
    settings.MAX_ARTIFACT_SIZE = 2 * 1024 * 1024
    settings.ARCHIVE_MAX_RATIO = 100_000  # the total is what this test is about
    response = _upload(staff_api, "iris", pack(folder), "model.zip")
    assert response.status_code == 400, response.json()
    assert "ARCHIVE_MAX_TOTAL_SIZE" in response.json()["error"]["message"]
    assert _stored_files() == []


def test_a_skops_zip_is_still_read_as_skops(staff_api, iris_model):
    response = _upload(staff_api, "iris", factories.iris_classifier_bytes(), "m.skops")
    assert response.status_code == 201, response.json()
    assert "mlflow" not in response.json()["metadata"]


def test_signature_column_types_map_to_feature_types():
    signature = {
        "inputs": json.dumps(
            [
                {"type": "double", "name": "a"},
                {"type": "float", "name": "b"},
                {"type": "long", "name": "c"},
                {"type": "integer", "name": "d", "required": False},
                {"type": "boolean", "name": "e"},
                {"type": "string", "name": "f"},
            ]
        )
    }
    assert mlflow_import.signature_schema(signature) == [
        {"name": "a", "type": "float", "required": True},
        {"name": "b", "type": "float", "required": True},
        {"name": "c", "type": "integer", "required": True},
        {"name": "d", "type": "integer", "required": False},
        {"name": "e", "type": "boolean", "required": True},
        {"name": "f", "type": "string", "required": True},
    ]
    assert mlflow_import.signature_schema(None) is None
    for bad, words in [
        ([{"type": "binary", "name": "img"}], "'img' has type 'binary'"),
        ([{"type": "double"}], "has no name"),
    ]:
        with pytest.raises(mlflow_import.MlflowModelError, match=words):
            mlflow_import.signature_schema({"inputs": json.dumps(bad)})


def test_admin_upload_previews_and_registers_an_mlflow_zip(client, saved):
    from django.contrib.auth.models import User

    admin = User.objects.create_superuser("root", password="pw")
    client.force_login(admin)
    model = factories.registered_model_create("iris")
    upload = io.BytesIO(zipped(saved / "iris-skops"))
    upload.name = "model.zip"
    url = "/admin/mlregistry/modelversion/upload/"
    preview = client.post(url, {"model": model.pk, "artifact": upload, "artifact_format": "skops"})
    assert preview.status_code == 200
    page = preview.content.decode()
    assert "from the MLflow signature" in page and "model.skops" in page
    token = preview.context["confirm_form"].initial["token"]
    done = client.post(url, {"token": token, "confirm": "1"})
    assert done.status_code == 302
    version = ModelVersion.objects.get(model=model)
    inner = (saved / "iris-skops" / "model.skops").read_bytes()
    assert version.artifact_sha256 == hashlib.sha256(inner).hexdigest()
    assert version.metadata["mlflow"]["model_file"] == "model.skops"


def test_import_mlflow_model_command_creates_the_model_with_its_task(saved, tmp_path):
    out = io.StringIO()
    call_command(
        "import_mlflow_model", str(saved / "diabetes-skops"), "--name", "diabetes", stdout=out
    )
    assert "Registered diabetes v1" in out.getvalue()
    model = RegisteredModel.objects.get(name="diabetes")
    assert model.task == "regression"
    version = model.versions.get()
    assert version.source == "import"
    assert version.input_schema[0] == {"name": "age", "type": "float", "required": True}

    archive = tmp_path / "iris.tar.gz"
    archive.write_bytes(tarred(saved / "iris-skops"))
    call_command("import_mlflow_model", str(archive), "--name", "iris", stdout=io.StringIO())
    assert RegisteredModel.objects.get(name="iris").task == "classification"


def test_import_mlflow_model_command_applies_the_pickle_policy(saved):
    with pytest.raises(CommandError, match="upload_pickle"):
        call_command("import_mlflow_model", str(saved / "iris-pickle"), "--name", "iris")
    assert (
        not RegisteredModel.objects.exists()
    )  # the model is created with its version or not at all
    factories.staff_create("pickler", extra_perms=["upload_pickle"])
    call_command(
        "import_mlflow_model",
        str(saved / "iris-pickle"),
        "--name",
        "iris",
        "--user",
        "pickler",
        stdout=io.StringIO(),
    )
    assert RegisteredModel.objects.get(name="iris").versions.get().artifact_format == "joblib"
    with pytest.raises(CommandError, match="No active user"):
        call_command(
            "import_mlflow_model", str(saved / "iris-pickle"), "--name", "x", "--user", "nobody"
        )


def test_import_mlflow_model_command_refuses_a_folder_with_a_link(saved, tmp_path):
    folder = tmp_path / "linked"
    shutil.copytree(saved / "iris-skops", folder)
    (folder / "secret").symlink_to("/etc/hostname")
    with pytest.raises(CommandError, match="is a link"):
        call_command("import_mlflow_model", str(folder), "--name", "iris")
    with pytest.raises(CommandError, match="holds no MLmodel"):
        call_command("import_mlflow_model", str(tmp_path), "--name", "iris")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_input_examples_in_other_shapes_become_rows_or_a_note(saved):
    files = _files(saved / "iris-skops")
    rows = [[5.1, 3.5, 1.4, 0.2], [6.3, 2.5, 4.9, 1.5]]
    as_array = {**files, "input_example.json": json.dumps(rows).encode()}
    model = mlflow_import.model_read(as_array)
    assert model.reference_sample == [dict(zip(IRIS_COLUMNS, r, strict=True)) for r in rows]

    records = [dict(zip(IRIS_COLUMNS, r, strict=True)) for r in rows]
    as_records = {**files, "input_example.json": json.dumps(records).encode()}
    assert mlflow_import.model_read(as_records).reference_sample == records

    unreadable = mlflow_import.model_read({**files, "input_example.json": b"{nope"})
    assert unreadable.reference_sample is None
    assert any("not readable JSON" in n for n in unreadable.notes)

    missing = {k: v for k, v in files.items() if k != "input_example.json"}
    assert any("missing from the model" in n for n in mlflow_import.model_read(missing).notes)


def test_library_differences_below_the_minor_version_are_noted(saved):
    files = _files(saved / "iris-skops")
    requirements = files["requirements.txt"].decode().replace("numpy==2.4.6", "numpy==2.4.1")
    model = mlflow_import.model_read({**files, "requirements.txt": requirements.encode()})
    assert "Saved with numpy 2.4.1; this server runs 2.4.6." in model.notes
    assert model.library_versions["numpy"] == "2.4.1"
    assert model.metadata["mlflow"]["library_versions_compared"]["numpy"] == {
        "model": "2.4.1",
        "server": "2.4.6",
    }


def test_mlmodel_that_is_not_yaml_or_names_an_unknown_format_is_refused(saved):
    files = _files(saved / "iris-skops")
    with pytest.raises(mlflow_import.MlflowModelError, match="not readable YAML"):
        mlflow_import.model_read({**files, "MLmodel": b"flavors: [unclosed"})
    spec = yaml.safe_load(files["MLmodel"])
    spec["flavors"]["sklearn"]["serialization_format"] = "joblib"
    with pytest.raises(mlflow_import.MlflowModelError, match="'joblib' is not supported"):
        mlflow_import.model_read({**files, "MLmodel": yaml.safe_dump(spec).encode()})
    with pytest.raises(mlflow_import.MlflowModelError, match="no MLmodel"):
        mlflow_import.model_read({})


def test_an_mlmodel_whose_yaml_aliases_expand_past_the_limit_is_refused_at_once():
    """A 'billion laughs': nine anchors of nine aliases each stand for 9**8 values in a few
    hundred bytes. Loading them is cheap; storing or showing them took 7 GB. A small file
    with an ordinary anchor still reads."""
    import time

    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb = ("\n".join([*lines, "run_id: *a8", "flavors: {}"]) + "\n").encode()
    started = time.monotonic()
    with pytest.raises(mlflow_import.MlflowModelError, match="once its YAML aliases are expanded"):
        mlflow_import.model_read({"MLmodel": bomb})
    assert time.monotonic() - started < 5
    long_text = b"t: &t " + b"x" * 100_000 + b"\nl: [" + b", ".join([b"*t"] * 50) + b"]\n"
    with pytest.raises(mlflow_import.MlflowModelError, match="larger than"):
        mlflow_import._yaml(long_text, "MLmodel")
    assert mlflow_import._yaml(b"e: &e {a: 1}\nf: *e\n", "MLmodel") == {
        "e": {"a": 1},
        "f": {"a": 1},
    }
