"""A training job end to end through a real Celery worker process and a real broker."""

import io
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import skops.io as sio
from celery import Celery
from sklearn.tree import DecisionTreeClassifier

from mlregistry import services
from mlregistry.models import Stage
from quality import training
from quality.models import TrainingDecision, TrainingJob, TrainingStatus
from tests import factories, live
from tests.storage import store_env

BROKER_URL = os.environ.get("CELERY_TEST_BROKER_URL", "redis://127.0.0.1:6379/5")
ROOT = Path(__file__).resolve().parents[2]
NAMES = factories.IRIS_FEATURES

pytestmark = pytest.mark.storage


@pytest.mark.worker
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_training_job_runs_end_to_end_in_a_real_worker(settings, tmp_path):
    if not live.broker_answers(BROKER_URL):
        pytest.skip(f"no Celery broker answers at {BROKER_URL} (set CELERY_TEST_BROKER_URL)")
    settings.SKOPS_TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]
    model = factories.registered_model_create("iris")
    x, y = factories.iris_frame()
    weak = DecisionTreeClassifier(max_depth=1, random_state=0).fit(x, y)
    champion = services.model_version_create(
        model=model, artifact=io.BytesIO(sio.dumps(weak)), actor="tests"
    )
    services.model_version_transition(version=champion, stage=Stage.PRODUCTION, actor="tests")
    dataset = factories.iris_dataset_create("iris-data", actor="tests")
    job = training.training_job_create(
        model=model,
        dataset=dataset,
        actor="tests",
        estimator="LogisticRegression",
        estimator_params={"max_iter": 500},
        policy="auto_promote",
        margin=0.05,
        enqueue=False,
    )

    queue = f"quality-test-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "DATABASE_URL": live.test_database_url(),
        "CELERY_BROKER_URL": BROKER_URL,
        **store_env(),
        "SKOPS_TRUSTED_TYPES": "sklearn.tree._tree.Tree",
        "VAR_DIR": str(tmp_path / "var"),
        "LOG_FORMAT": "text",
    }
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "--pool=solo",
                "--queues",
                queue,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel=INFO",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    sender = Celery("tests-sender", broker=BROKER_URL, set_as_current=False)
    try:
        sender.send_task("mlregistry.tasks.training_job_run_task", args=[job.pk], queue=queue)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and worker.poll() is None:
            job.refresh_from_db()
            if job.status in (TrainingStatus.SUCCEEDED, TrainingStatus.FAILED):
                break
            time.sleep(0.5)
    finally:
        sender.close()
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()

    output = log_path.read_text(errors="replace")[-3000:]
    assert job.status == TrainingStatus.SUCCEEDED, output
    assert job.decision == TrainingDecision.PROMOTED
    assert job.attempts == 1
    job = TrainingJob.objects.select_related("candidate_version").get(pk=job.pk)
    assert job.candidate_version.stage == Stage.PRODUCTION
    champion.refresh_from_db()
    assert champion.stage == Stage.ARCHIVED
    assert "training_job_run_task" in output
