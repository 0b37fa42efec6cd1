"""Two deliveries of one training job at once (Postgres: real row locks)."""

import threading

import pytest
from django.db import connection

from mlregistry import services
from mlregistry.models import ModelVersion, Stage, VersionSource
from quality import training
from quality.models import TrainingJob, TrainingStatus
from tests import factories

NAMES = factories.IRIS_FEATURES


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_simultaneous_runs_of_one_job_register_one_candidate():
    model = factories.registered_model_create("iris")
    champion = factories.version_create(model, c=0.01)
    services.model_version_transition(version=champion, stage=Stage.PRODUCTION, actor="t")
    dataset = factories.iris_dataset_create("iris-data", actor="t")
    job = training.training_job_create(
        model=model,
        dataset=dataset,
        actor="t",
        estimator="LogisticRegression",
        policy="auto_promote",
        enqueue=False,
    )
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def deliver():
        try:
            barrier.wait(timeout=10)
            outcomes.append(training.training_job_run(job_id=job.pk).status)
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert outcomes == ["succeeded", "succeeded"]
    assert ModelVersion.objects.filter(model=model, source=VersionSource.TRAINING).count() == 1
    job = TrainingJob.objects.get(pk=job.pk)
    assert job.status == TrainingStatus.SUCCEEDED
    assert job.attempts == 2
    assert ModelVersion.objects.filter(model=model, stage=Stage.PRODUCTION).get() == (
        job.candidate_version
    )
