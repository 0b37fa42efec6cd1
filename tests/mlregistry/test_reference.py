import pytest

from config.errors import ValidationFailed
from mlregistry.reference import model_version_reference_attach
from tests import factories

pytestmark = pytest.mark.django_db

NAMES = factories.IRIS_FEATURES


def _rows(n: int) -> list[dict]:
    return [{name: float(i + j) for j, name in enumerate(NAMES)} for i in range(n)]


def test_large_reference_samples_are_sampled_down_reproducibly(iris_model, settings):
    settings.REFERENCE_SAMPLE_MAX_ROWS = 10
    first = factories.version_create(iris_model, c=1.0, reference_sample=_rows(50))
    second = factories.version_create(iris_model, c=2.0, reference_sample=_rows(50))
    assert len(first.reference_sample) == 10
    assert first.reference_sample == second.reference_sample
    assert first.reference_stats["sepal_length"]["count"] == 10


def test_attaching_a_reference_later_checks_rows_and_records_who(iris_model, staff_user):
    version = factories.version_create(iris_model)
    assert version.reference_sample is None

    model_version_reference_attach(version=version, reference_sample=_rows(5), actor=staff_user)

    version.refresh_from_db()
    assert len(version.reference_sample) == 5
    assert version.reference_stats["petal_width"]["max"] == 7.0
    assert version.metadata["reference_attached_by"] == "staff"
    with pytest.raises(ValidationFailed):
        model_version_reference_attach(version=version, reference_sample=[], actor="job:x")
