"""Versions the product's own training jobs register carry their lineage: the job, the
dataset (id and SHA-256) and the commit of the code that trained them."""

import pytest
from sklearn.linear_model import LogisticRegression

from mlregistry import lineage
from mlregistry.models import ModelVersion
from quality import training
from tests import factories
from tests.quality.test_training import champion_create

pytestmark = pytest.mark.django_db


def test_training_job_candidate_records_job_dataset_and_code_version(iris_model, settings):
    settings.CODE_VERSION = "0123456789abcdef0123456789abcdef01234567"
    lineage.code_version.cache_clear()
    champion_create(iris_model, LogisticRegression(C=0.5, max_iter=500))
    dataset = factories.iris_dataset_create()
    job = training.training_job_create(
        model=iris_model, dataset=dataset, actor="tests", enqueue=False
    )
    job = training.training_job_run(job_id=job.pk)
    candidate = ModelVersion.objects.get(pk=job.candidate_version_id)
    assert candidate.run_id == f"training-job:{job.pk}"
    assert candidate.git_commit == settings.CODE_VERSION
    assert candidate.training_dataset_uri == f"dataset://{dataset.pk}/iris-data"
    assert candidate.training_dataset_sha256 == dataset.file_sha256
    lineage.code_version.cache_clear()


def test_code_version_falls_back_to_the_checkout_head(settings):
    settings.CODE_VERSION = ""
    lineage.code_version.cache_clear()
    try:
        found = lineage.code_version()
        # A checkout (this repository, or a worktree of it) names its commit; a copy without
        # .git gives "".
        assert found == "" or lineage.GIT_COMMIT_PATTERN.fullmatch(found)
    finally:
        lineage.code_version.cache_clear()


def test_rows_read_from_a_query_hash_the_same_whatever_served_them():
    x, y = factories.iris_frame()
    assert lineage.frame_sha256(x, y) == lineage.frame_sha256(x.copy(), y.copy())
    assert lineage.frame_sha256(x, y) != lineage.frame_sha256(x.iloc[1:], y.iloc[1:])
