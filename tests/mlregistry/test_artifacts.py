"""Hostile and broken uploads: each is refused with a clear error and leaves no row and no file."""

import io
import os
import pickle
from pathlib import Path

import joblib
import numpy as np
import pytest
import skops.io as sio
from django.core.files.storage import storages
from django.core.files.uploadedfile import SimpleUploadedFile

from config.errors import ForbiddenError, PayloadTooLarge
from mlregistry import artifacts, services
from mlregistry.models import ModelVersion
from tests import factories
from tests.storage import store_corrupt, store_files

pytestmark = [pytest.mark.django_db, pytest.mark.storage]


class RunsShellOnLoad:
    """A pickle payload that would run a shell command if anything ever unpickled it."""

    def __init__(self, canary: Path):
        self.canary = canary

    def __reduce__(self):
        return (os.system, (f"touch {self.canary}",))


def double(values):
    """A team's own preprocessing function: not trusted until settings say so."""
    return values * 2


def _stored_files() -> list[str]:
    return store_files()


def _upload(api, data: bytes, name: str = "model.skops", **fields):
    return api.post(
        "/api/v1/models/iris/versions/",
        {"artifact": SimpleUploadedFile(name, data), **fields},
        format="multipart",
    )


def _assert_nothing_stored():
    assert not ModelVersion.objects.exists()
    assert _stored_files() == []


def test_junk_bytes_are_refused(staff_api, iris_model):
    response = _upload(staff_api, b"this is not a model at all")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "artifact_error"
    assert "artifact" in response.json()["error"]["fields"]
    _assert_nothing_stored()


def test_skops_with_untrusted_type_is_refused_and_names_it(staff_api, iris_model):
    from sklearn.preprocessing import FunctionTransformer

    crafted = sio.dumps(FunctionTransformer(func=os.getcwd))
    response = _upload(staff_api, crafted)
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "trusted" in message and "posix.getcwd" in message
    _assert_nothing_stored()


def test_settings_can_trust_an_extra_type(iris_model, settings):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    x, y = factories.iris_frame()
    pipeline = make_pipeline(FunctionTransformer(double), LogisticRegression(max_iter=500)).fit(
        x, y
    )
    with pytest.raises(artifacts.ArtifactError) as refused:
        services.model_version_create(
            model=iris_model, artifact=io.BytesIO(sio.dumps(pipeline)), actor="t"
        )
    settings.SKOPS_TRUSTED_TYPES = refused.value.untrusted_types
    version = services.model_version_create(
        model=iris_model, artifact=io.BytesIO(sio.dumps(pipeline)), actor="t"
    )
    assert version.version == 1


def test_pickle_without_permission_is_refused_and_never_runs(staff_api, iris_model, tmp_path):
    canary = tmp_path / "canary"
    response = _upload(
        staff_api,
        pickle.dumps(RunsShellOnLoad(canary)),
        "m.joblib",
        artifact_format="joblib",
        input_schema='["a"]',
    )
    assert response.status_code == 403
    assert "upload_pickle" in response.json()["error"]["message"]
    assert not canary.exists()
    _assert_nothing_stored()


def test_pickle_calling_os_system_is_refused_even_with_permission(iris_model, tmp_path):
    canary = tmp_path / "canary"
    uploader = factories.staff_create("pickler", extra_perms=["upload_pickle"])
    with pytest.raises(artifacts.ArtifactError) as refused:
        services.model_version_create(
            model=iris_model,
            artifact=io.BytesIO(pickle.dumps(RunsShellOnLoad(canary))),
            actor=uploader,
            artifact_format="joblib",
            input_schema=["a"],
        )
    assert "system" in refused.value.message
    assert not canary.exists()
    _assert_nothing_stored()


def test_joblib_dump_with_raw_arrays_is_refused_because_it_cannot_be_fully_scanned(
    iris_model, tmp_path
):
    canary = tmp_path / "canary"
    uploader = factories.staff_create("pickler", extra_perms=["upload_pickle"])
    buffer = io.BytesIO()
    import numpy as np

    # joblib writes arrays as raw bytes between opcodes: a payload hidden after one is unreadable.
    joblib.dump([np.arange(10.0), RunsShellOnLoad(canary)], buffer)
    with pytest.raises(artifacts.ArtifactError) as refused:
        services.model_version_create(
            model=iris_model,
            artifact=io.BytesIO(buffer.getvalue()),
            actor=uploader,
            artifact_format="joblib",
            input_schema=["a"],
        )
    assert "scanned to the end" in refused.value.message
    assert not canary.exists()
    _assert_nothing_stored()


def test_plain_pickle_of_a_model_is_accepted_with_permission_and_loads(iris_model):
    from sklearn.linear_model import LogisticRegression

    x, y = factories.iris_frame()
    model = LogisticRegression(max_iter=500).fit(x.to_numpy(), y)
    uploader = factories.staff_create("pickler", extra_perms=["upload_pickle"])
    version = services.model_version_create(
        model=iris_model,
        artifact=io.BytesIO(pickle.dumps(model, protocol=5)),
        actor=uploader,
        artifact_format="joblib",
        input_schema=[{"name": n} for n in x.columns],
    )
    assert version.metadata["pickle_scan"]["scanner"] == "picklescan"
    loaded = artifacts.load_version_estimator(version)
    assert (loaded.predict(x.to_numpy()) == model.predict(x.to_numpy())).all()


def test_joblib_upload_is_checked_as_the_estimator_it_will_serve(iris_model):
    """A permitted pickle opens through the restricted unpickler at upload: its schema and
    classes are read from the estimator, as for skops."""
    from sklearn.linear_model import LogisticRegression

    x, y = factories.iris_frame()
    uploader = factories.staff_create("pickler", extra_perms=["upload_pickle"])
    blob = pickle.dumps(LogisticRegression(max_iter=500).fit(x, y))
    version = services.model_version_create(
        model=iris_model, artifact=io.BytesIO(blob), actor=uploader, artifact_format="joblib"
    )
    assert [f["name"] for f in version.input_schema] == list(x.columns)
    assert version.classes == [0, 1, 2]


def test_joblib_upload_of_a_non_estimator_is_refused_and_stores_nothing(iris_model):
    uploader = factories.staff_create("pickler", extra_perms=["upload_pickle"])
    blob = pickle.dumps(np.arange(3))  # allowed globals, but no estimator
    with pytest.raises(artifacts.ArtifactError, match="predict"):
        services.model_version_create(
            model=iris_model,
            artifact=io.BytesIO(blob),
            actor=uploader,
            artifact_format="joblib",
            input_schema=[{"name": "a"}],
        )
    _assert_nothing_stored()


def test_oversize_upload_is_413_and_stores_nothing(staff_api, iris_model, settings):
    settings.MAX_ARTIFACT_SIZE = 2048
    response = _upload(staff_api, factories.iris_classifier_bytes())
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "payload_too_large"
    _assert_nothing_stored()


def test_declared_oversize_body_is_refused_before_parsing(staff_api, iris_model, settings):
    settings.MAX_ARTIFACT_SIZE = 1024
    response = staff_api.generic(
        "POST",
        "/api/v1/models/iris/versions/",
        b"x" * (3 * 1024 * 1024),
        content_type="multipart/form-data; boundary=zzz",
    )
    assert response.status_code == 413


def test_service_level_size_limit(iris_model, settings):
    settings.MAX_ARTIFACT_SIZE = 1024
    with pytest.raises(PayloadTooLarge):
        factories.version_create(iris_model)
    _assert_nothing_stored()


def test_uploaded_file_name_never_decides_the_stored_path(staff_api, iris_model):
    response = _upload(staff_api, factories.iris_classifier_bytes(), "../../../../etc/evil.skops")
    assert response.status_code == 201
    sha = response.json()["artifact_sha256"]
    stored = _stored_files()
    assert len(stored) == 1 and stored[0].endswith(f"sha256/{sha[:2]}/{sha}.skops")


def test_tampered_artifact_is_detected_before_load(iris_model):
    version = factories.version_create(iris_model)
    store_corrupt(version.artifact.name)
    with pytest.raises(artifacts.ArtifactIntegrityError) as refused:
        artifacts.load_version_estimator(version)
    assert "checksum mismatch" in refused.value.message


def test_missing_artifact_file_is_refused(iris_model):
    version = factories.version_create(iris_model)
    storages["artifacts"].delete(version.artifact.name)
    with pytest.raises(artifacts.ArtifactIntegrityError):
        artifacts.load_version_estimator(version)


def test_verified_load_predicts_like_the_original(iris_model):
    version = factories.version_create(iris_model)
    x, _ = factories.iris_frame()
    original = sio.loads(
        factories.iris_classifier_bytes(),
        trusted=sio.get_untrusted_types(data=factories.iris_classifier_bytes()),
    )
    assert (artifacts.load_version_estimator(version).predict(x) == original.predict(x)).all()


def test_pickle_permission_is_checked_for_job_actors_too(iris_model):
    with pytest.raises(ForbiddenError):
        services.model_version_create(
            model=iris_model,
            artifact=io.BytesIO(pickle.dumps({"a": 1})),
            actor="job:x",
            artifact_format="joblib",
            input_schema=["a"],
        )


def test_default_trust_list_admits_forests_but_not_custom_code(iris_model):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.preprocessing import FunctionTransformer

    x, y = factories.iris_frame()
    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(x, y)
    version = services.model_version_create(
        model=iris_model, artifact=io.BytesIO(sio.dumps(forest)), actor="t"
    )
    assert (artifacts.load_version_estimator(version).predict(x) == forest.predict(x)).all()
    with pytest.raises(artifacts.ArtifactError, match="double"):
        services.model_version_create(
            model=iris_model, artifact=io.BytesIO(sio.dumps(FunctionTransformer(double))), actor="t"
        )


def test_skops_type_picklescan_flags_is_refused_even_when_settings_trust_it(
    iris_model, settings, tmp_path
):
    from sklearn.preprocessing import FunctionTransformer

    crafted = sio.dumps(FunctionTransformer(func=os.system))
    settings.SKOPS_TRUSTED_TYPES = [*settings.SKOPS_TRUSTED_TYPES, "posix.system"]
    with pytest.raises(artifacts.ArtifactError, match=r"dangerous.*posix\.system") as refused:
        services.model_version_create(model=iris_model, artifact=io.BytesIO(crafted), actor="t")
    assert refused.value.untrusted_types == []  # never offered as a type to trust
    _assert_nothing_stored()


def test_skops_trusted_types_are_exact_names_never_prefixes(iris_model, settings):
    from sklearn.preprocessing import FunctionTransformer

    settings.SKOPS_TRUSTED_TYPES = ["tests", "tests.mlregistry", "tests.*", "*"]
    with pytest.raises(artifacts.ArtifactError, match="double"):
        services.model_version_create(
            model=iris_model, artifact=io.BytesIO(sio.dumps(FunctionTransformer(double))), actor="t"
        )
    _assert_nothing_stored()
