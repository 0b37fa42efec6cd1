import io

import pytest
from django.core.files.storage import storages

from mlregistry import services
from mlregistry.models import ModelVersion, Stage, StageTransition
from tests import factories

pytestmark = [pytest.mark.django_db, pytest.mark.storage]


def test_upload_infers_schema_classes_and_stores_by_sha256(iris_model, staff_user):
    version = factories.version_create(iris_model, actor=staff_user, metrics={"accuracy": 0.97})
    assert version.version == 1
    assert version.stage == Stage.NONE
    assert [f["name"] for f in version.input_schema] == [
        "sepal_length",
        "sepal_width",
        "petal_length",
        "petal_width",
    ]
    assert version.classes == [0, 1, 2]
    assert (
        version.artifact.name
        == f"sha256/{version.artifact_sha256[:2]}/{version.artifact_sha256}.skops"
    )
    assert storages["artifacts"].exists(version.artifact.name)
    assert version.library_versions["scikit-learn"]
    assert version.created_by == staff_user


def test_version_numbers_count_up_per_model(iris_model):
    other = factories.registered_model_create("other")
    assert [factories.version_create(iris_model, c=c).version for c in (1.0, 2.0, 3.0)] == [1, 2, 3]
    assert factories.version_create(other).version == 1


def test_promote_archives_previous_production_and_audits_both(iris_model, staff_user):
    v1 = factories.version_create(iris_model, c=1.0)
    v2 = factories.version_create(iris_model, c=2.0)
    services.model_version_transition(version=v1, stage=Stage.PRODUCTION, actor=staff_user)
    services.model_version_transition(
        version=v2, stage=Stage.PRODUCTION, actor=staff_user, comment="better"
    )
    v1.refresh_from_db()
    assert v1.stage == Stage.ARCHIVED
    assert ModelVersion.objects.filter(model=iris_model, stage=Stage.PRODUCTION).get() == v2
    moves = list(
        StageTransition.objects.order_by("id").values_list(
            "version__version", "from_stage", "to_stage", "actor_name"
        )
    )
    assert moves == [
        (1, "none", "production", "staff"),
        (1, "production", "archived", "staff"),
        (2, "none", "production", "staff"),
    ]


def test_rollback_restores_previous_production(iris_model):
    v1 = factories.version_create(iris_model, c=1.0)
    v2 = factories.version_create(iris_model, c=2.0)
    services.model_version_transition(version=v1, stage=Stage.PRODUCTION, actor="tests")
    services.model_version_transition(version=v2, stage=Stage.PRODUCTION, actor="tests")
    restored = services.model_version_rollback(model=iris_model, actor="tests")
    assert restored.pk == v1.pk and restored.stage == Stage.PRODUCTION
    v2.refresh_from_db()
    assert v2.stage == Stage.ARCHIVED


def test_rollback_without_history_is_a_conflict(iris_model):
    factories.version_create(iris_model)
    with pytest.raises(services.TransitionError):
        services.model_version_rollback(model=iris_model, actor="tests")


def test_same_stage_transition_is_refused_and_writes_nothing(iris_model):
    v1 = factories.version_create(iris_model)
    services.model_version_transition(version=v1, stage=Stage.STAGING, actor="tests")
    with pytest.raises(services.TransitionError):
        services.model_version_transition(version=v1, stage=Stage.STAGING, actor="tests")
    assert StageTransition.objects.count() == 1


def test_regressor_is_refused_for_a_classification_model(iris_model):
    with pytest.raises(services.artifacts.ArtifactError):
        services.model_version_create(
            model=iris_model,
            artifact=io.BytesIO(factories.diabetes_regressor_bytes()),
            actor="tests",
        )
    assert not ModelVersion.objects.exists()
