"""model_version_inspect / model_version_preview and the expectations callers can state."""

import io

import pytest

from mlregistry import services
from mlregistry.artifacts import ArtifactError
from mlregistry.models import ModelVersion, Stage, StageTransition
from tests import factories

pytestmark = pytest.mark.django_db


def test_inspect_reports_what_would_be_registered_and_stores_nothing(iris_model):
    data = factories.iris_classifier_bytes()
    inspection = services.model_version_inspect(model=iris_model, data=data, actor="tests")
    assert [f["name"] for f in inspection.input_schema][:2] == ["sepal_length", "sepal_width"]
    assert inspection.schema_inferred is True
    assert inspection.classes == [0, 1, 2]
    assert inspection.estimator_type == "Pipeline"
    assert inspection.size == len(data)
    assert any("reference sample" in w for w in inspection.warnings)
    assert not ModelVersion.objects.exists()


def _unnamed_iris_bytes() -> bytes:
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    x, y = factories.iris_frame()
    return sio.dumps(LogisticRegression(max_iter=500).fit(x.to_numpy(), y))


def test_inspect_warns_when_features_differ_from_production(iris_model):
    v1 = factories.version_create(iris_model)
    services.model_version_transition(version=v1, stage=Stage.PRODUCTION, actor="tests")
    schema = [{"name": n} for n in ("a", "b", "c", "d")]
    inspection = services.model_version_inspect(
        model=iris_model, data=_unnamed_iris_bytes(), actor="tests", input_schema=schema
    )
    assert inspection.schema_inferred is False
    assert any("differ from the production version" in w for w in inspection.warnings)


def test_inspect_warns_about_models_fitted_without_feature_names(iris_model):
    data = _unnamed_iris_bytes()
    inspection = services.model_version_inspect(model=iris_model, data=data, actor="tests")
    assert [f["name"] for f in inspection.input_schema] == ["x0", "x1", "x2", "x3"]
    assert any("without feature names" in w for w in inspection.warnings)


def test_inspect_refuses_a_regressor_for_a_classification_model(iris_model):
    with pytest.raises(ArtifactError, match="regressor"):
        services.model_version_inspect(
            model=iris_model, data=factories.diabetes_regressor_bytes(), actor="tests"
        )


def test_create_refuses_bytes_that_do_not_match_the_expected_sha256(iris_model):
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        factories.version_create(iris_model, expected_sha256="0" * 64)
    assert not ModelVersion.objects.exists()


def test_create_accepts_the_expected_sha256(iris_model):
    preview = services.model_version_preview(
        model=iris_model, artifact=io.BytesIO(factories.iris_classifier_bytes()), actor="tests"
    )
    version = factories.version_create(iris_model, expected_sha256=preview.inspection.sha256)
    assert version.artifact_sha256 == preview.inspection.sha256


def test_discard_refuses_names_outside_the_pending_area(iris_model):
    version = factories.version_create(iris_model)
    with pytest.raises(services.ValidationFailed):
        services.pending_upload_discard(name=version.artifact.name)
    assert services.get_artifact_storage().exists(version.artifact.name)


def test_transition_with_a_stale_expectation_is_refused_and_writes_nothing(iris_model):
    v1 = factories.version_create(iris_model, c=1.0)
    v2 = factories.version_create(iris_model, c=2.0)
    services.model_version_transition(version=v1, stage=Stage.PRODUCTION, actor="tests")
    before = StageTransition.objects.count()
    with pytest.raises(services.TransitionError, match="Race lost"):
        services.model_version_transition(
            version=v2, stage=Stage.PRODUCTION, actor="tests", expected_production_pk=None
        )
    assert StageTransition.objects.count() == before
    v1.refresh_from_db()
    assert v1.stage == Stage.PRODUCTION


def test_transition_with_a_current_expectation_goes_ahead(iris_model):
    v1 = factories.version_create(iris_model, c=1.0)
    services.model_version_transition(
        version=v1, stage=Stage.PRODUCTION, actor="tests", expected_production_pk=None
    )
    v1.refresh_from_db()
    assert v1.stage == Stage.PRODUCTION


def test_rollback_with_a_stale_expectation_is_refused(iris_model):
    v1 = factories.version_create(iris_model, c=1.0)
    v2 = factories.version_create(iris_model, c=2.0)
    services.model_version_transition(version=v1, stage=Stage.PRODUCTION, actor="tests")
    services.model_version_transition(version=v2, stage=Stage.PRODUCTION, actor="tests")
    with pytest.raises(services.TransitionError, match="Race lost"):
        services.model_version_rollback(
            model=iris_model, actor="tests", expected_production_pk=v1.pk
        )
