"""Each app announces its events through config.events: training jobs, drift, failed backups.
Deliveries are checked as written (the sending is test_webhooks.py's)."""

from __future__ import annotations

import json

import pytest

from mlregistry.webhooks import services as webhooks
from mlregistry.webhooks.models import WebhookDelivery
from quality import drift, training
from quality.models import TrainingStatus
from tests import factories
from tests.quality.test_drift import AS_OF, _production, _rows, _serve


@pytest.fixture(autouse=True)
def _subscriber(settings, db):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    webhooks.webhook_create(
        name="all",
        url="http://127.0.0.1:9/hook",
        events=["training_job.finished", "drift.detected", "backup.failed"],
        actor="tests",
    )


def _payloads(event: str) -> list[dict]:
    return [
        json.loads(body)
        for body in WebhookDelivery.objects.filter(event=event)
        .order_by("id")
        .values_list("body", flat=True)
    ]


def test_a_finished_training_job_is_announced_with_its_api_body(iris_model, staff_api):
    failed = training.training_job_create(
        model=iris_model, dataset=factories.iris_dataset_create(), actor="tests", enqueue=False
    )
    failed = training.training_job_run(job_id=failed.pk)
    assert failed.status == TrainingStatus.FAILED
    succeeded = training.training_job_create(
        model=iris_model,
        dataset=failed.dataset,
        actor="tests",
        enqueue=False,
        estimator="LogisticRegression",
        estimator_params={"max_iter": 500},
    )
    succeeded = training.training_job_run(job_id=succeeded.pk)
    assert succeeded.status == TrainingStatus.SUCCEEDED

    first, second = _payloads("training_job.finished")
    assert first["data"]["status"] == "failed" and first["data"]["id"] == failed.pk
    assert second["data"]["status"] == "succeeded"
    api = staff_api.get(f"/api/v1/models/iris/training-jobs/{succeeded.pk}").json()
    assert {k: api[k] for k in second["data"]} == second["data"]
    delivery = WebhookDelivery.objects.filter(event="training_job.finished").first()
    assert delivery.model_name == "iris"


def test_detected_drift_is_announced_and_no_drift_is_not(iris_model):
    version = _production(iris_model)
    _serve(version, _rows(2, 300))
    drift.drift_check(as_of=AS_OF)
    assert _payloads("drift.detected") == []

    _serve(version, _rows(3, 300, shift={"petal_length": 1.0}), prefix="shifted")
    [report] = drift.drift_check(as_of=AS_OF)
    (payload,) = _payloads("drift.detected")
    assert payload["data"]["status"] == "drift"
    assert payload["data"]["drifted_features"] == report.drifted_features


@pytest.mark.django_db(transaction=True)
def test_a_failed_backup_is_announced(monkeypatch):
    from backups import services as backups

    # Fault injected on purpose: the archive step dies half-way.
    def broken(target):
        raise OSError("disk full")

    monkeypatch.setattr(backups, "_artifacts_archive_write", broken)
    with pytest.raises(OSError, match="disk full"):
        backups.backup_create(slot="nightly", actor="tests")
    (payload,) = _payloads("backup.failed")
    assert payload["data"]["slot"] == "nightly"
    assert payload["data"]["status"] == "failed"
    assert "disk full" in payload["data"]["error"]
    assert WebhookDelivery.objects.get(event="backup.failed").model_name == ""


@pytest.mark.django_db(transaction=True)
def test_jobs_failed_because_their_worker_died_are_announced_too(iris_model, settings):
    """A job failed by the stalled-job reaper, or refused after JOB_MAX_ATTEMPTS starts, ends
    as surely as one that failed by itself: a subscriber waiting for it hears of it."""
    from datetime import UTC, datetime, timedelta

    from backups import services as backups
    from backups.models import Backup, BackupStatus
    from quality.models import TrainingJob

    settings.JOB_STALLED_AFTER_SECONDS = 60
    settings.JOB_MAX_ATTEMPTS = 3
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    dataset = factories.iris_dataset_create("reaped", actor="tests")
    reaped, dying = (
        training.training_job_create(
            model=iris_model, dataset=dataset, actor="tests", enqueue=False
        )
        for _ in range(2)
    )
    TrainingJob.objects.filter(pk=reaped.pk).update(
        status=TrainingStatus.RUNNING, started_at=long_ago, heartbeat_at=long_ago
    )
    TrainingJob.objects.filter(pk=dying.pk).update(status=TrainingStatus.RUNNING, attempts=3)
    Backup.objects.create(slot="reaped", actor="tests", started_at=long_ago, heartbeat_at=long_ago)
    Backup.objects.create(slot="dying", actor="tests", started_at=long_ago, attempts=3)

    assert backups.stalled_jobs_reap(actor="tests")["training"] == [reaped.pk]
    assert training.training_job_run(job_id=dying.pk).status == TrainingStatus.FAILED
    with pytest.raises(backups.BackupError, match="started 3 times"):
        backups.backup_create(slot="dying", actor="tests")

    finished = {p["data"]["id"]: p["data"] for p in _payloads("training_job.finished")}
    assert set(finished) == {reaped.pk, dying.pk}
    assert {d["status"] for d in finished.values()} == {"failed"}
    assert "no heartbeat since" in finished[reaped.pk]["error"]
    failed = {p["data"]["slot"]: p["data"] for p in _payloads("backup.failed")}
    assert set(failed) == {"reaped", "dying"}
    assert all(d["status"] == BackupStatus.FAILED for d in failed.values())


@pytest.mark.django_db(transaction=True)
def test_a_job_ends_once_when_its_stalled_worker_comes_back_after_the_reaper(
    iris_model, settings, monkeypatch
):
    """The reaper failed a job whose worker was only stalled; the worker's own end that follows
    (a failure, a decision, a failed backup, a retry past JOB_MAX_ATTEMPTS) changes nothing
    and announces nothing a second time."""
    from datetime import UTC, datetime, timedelta

    from backups import services as backups
    from backups.models import Backup, BackupStatus
    from quality.models import TrainingJob

    settings.JOB_STALLED_AFTER_SECONDS = 60
    settings.JOB_MAX_ATTEMPTS = 2
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    job = training.training_job_create(
        model=iris_model,
        dataset=factories.iris_dataset_create("stalled", actor="tests"),
        actor="tests",
        enqueue=False,
    )
    TrainingJob.objects.filter(pk=job.pk).update(
        status=TrainingStatus.RUNNING, started_at=long_ago, heartbeat_at=long_ago
    )
    Backup.objects.create(
        slot="stalled", actor="tests", started_at=long_ago, heartbeat_at=long_ago, attempts=1
    )
    backups.stalled_jobs_reap(actor="tests")

    assert training._fail(job.pk, problem="training_error", message="late").error_type == (
        "worker_lost"
    )
    assert training._decide(job.pk).status == TrainingStatus.FAILED

    # The backup's next attempt stalls too: the reaper fails it mid-run, then the attempt
    # itself fails; and a retry is past JOB_MAX_ATTEMPTS.
    def reaped_then_broken(target):  # faults injected on purpose
        Backup.objects.filter(slot="stalled").update(
            status=BackupStatus.FAILED, error=f"{backups.REAPED_REASON}: as the reaper says"
        )
        raise OSError("disk full")

    monkeypatch.setattr(backups, "_artifacts_archive_write", reaped_then_broken)
    with pytest.raises(OSError, match="disk full"):
        backups.backup_create(slot="stalled", actor="tests")
    assert "disk full" not in Backup.objects.get(slot="stalled").error
    with pytest.raises(backups.BackupError, match="started 2 times"):
        backups.backup_create(slot="stalled", actor="tests")

    assert [p["data"]["error_type"] for p in _payloads("training_job.finished")] == ["worker_lost"]
    assert [p["data"]["slot"] for p in _payloads("backup.failed")] == ["stalled"]
