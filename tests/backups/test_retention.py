"""Retention of the operational tables: job runs (with their /metrics counters), and the hourly
cleanup's task and command, dry run included."""

import os
import threading
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
from knox.models import AuthToken

from backups import services, tasks
from backups.models import Backup, JobRun, JobRunTally
from mlregistry.models import ModelVersion
from predictions.models import PredictionLog
from quality.models import DriftReport, DriftStatus
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)

NOW = datetime(2026, 3, 10, 3, 0, tzinfo=UTC)


def _run(job: str, *, days_old: float, outcome: str = "success", duration: float = 1.0) -> int:
    return JobRun.objects.create(
        job=job,
        outcome=outcome,
        started_at=NOW - timedelta(days=days_old),
        duration_seconds=duration,
    ).pk


def _job_metrics(client) -> dict[str, float]:
    """The job samples of /metrics: {'name{labels}': value}."""
    lines = client.get("/metrics").content.decode().splitlines()
    samples = (line.rsplit(" ", 1) for line in lines if line.startswith("mlregistry_job_"))
    return {name: float(value) for name, value in samples}


def test_old_job_runs_are_pruned_and_recent_ones_kept():
    old = [_run("backup", days_old=d) for d in (200, 120, 91)]
    recent = [_run("backup", days_old=d) for d in (89, 1)]

    assert services.job_runs_prune(older_than=NOW - timedelta(days=90)) == 3

    assert sorted(JobRun.objects.values_list("pk", flat=True)) == sorted(recent)
    assert not JobRun.objects.filter(pk__in=old).exists()


def test_the_newest_run_of_each_job_and_outcome_is_kept_however_old():
    _run("drift", days_old=400)
    newest_drift = _run("drift", days_old=300)
    _run("backup", days_old=300, outcome="success")
    last_success = _run("backup", days_old=200, outcome="success")
    last_failure = _run("backup", days_old=150, outcome="failure")

    assert services.job_runs_prune(older_than=NOW - timedelta(days=90)) == 2

    assert set(JobRun.objects.values_list("pk", flat=True)) == {
        newest_drift,
        last_success,
        last_failure,
    }


def test_a_run_still_in_progress_is_never_pruned():
    # job_run records a run when it ends; a row with any other outcome is not over yet.
    running = _run("retraining", days_old=300, outcome="running")
    _run("retraining", days_old=299, outcome="success")
    _run("retraining", days_old=250, outcome="success")

    assert services.job_runs_prune(older_than=NOW - timedelta(days=90)) == 1

    assert JobRun.objects.filter(pk=running).exists()


def test_job_runs_are_pruned_in_batches_and_each_is_tallied_once():
    for day in range(7):
        _run("backup", days_old=100 + day, duration=0.3)
        _run("backup", days_old=100 + day, outcome="failure", duration=20)

    assert services.job_runs_prune(older_than=NOW - timedelta(days=90), batch_size=3) == 12

    tallies = {t.outcome: t for t in JobRunTally.objects.all()}
    assert (tallies["success"].runs, tallies["failure"].runs) == (6, 6)
    assert tallies["success"].duration_seconds_sum == pytest.approx(1.8)
    assert tallies["failure"].duration_buckets["15"] == 0
    assert tallies["failure"].duration_buckets["60"] == 6


FAILURES = 'mlregistry_job_runs_total{job="backup",outcome="failure"}'


def test_pruning_leaves_the_job_counters_in_metrics_unchanged(anon_api):
    """A counter that goes down is a reset to Prometheus, and increase() would count every
    pruned failure again: the JobFailures alert would fire for a three-month-old failure."""
    for day in range(5):
        _run("backup", days_old=100 + day, duration=0.3)
        _run("backup", days_old=100 + day, outcome="failure", duration=20)
        _run("drift", days_old=100 + day, duration=4000)
    _run("backup", days_old=1, duration=2)
    before = _job_metrics(anon_api)
    assert before[FAILURES] == 5

    # All but the newest failure and the newest drift run.
    assert services.job_runs_prune(older_than=NOW - timedelta(days=90)) == 13
    assert _job_metrics(anon_api) == pytest.approx(before)

    # Pruning again (tallied runs already folded in) and new runs keep it monotonic.
    _run("backup", days_old=95, outcome="failure", duration=20)
    services.job_runs_prune(older_than=NOW - timedelta(days=90))
    assert _job_metrics(anon_api)[FAILURES] == 6


@pytest.mark.postgres
def test_concurrent_prunes_tally_every_run_exactly_once():
    for day in range(40):
        _run("backup", days_old=100 + day / 10)
    _run("backup", days_old=1)
    results: list[int] = []
    start = threading.Barrier(2)

    def prune():
        start.wait()
        try:
            results.append(
                services.job_runs_prune(older_than=NOW - timedelta(days=90), batch_size=2)
            )
        finally:
            connection.close()

    threads = [threading.Thread(target=prune) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(results) == 40
    assert JobRunTally.objects.get().runs == 40
    assert JobRun.objects.count() == 1


# --- the hourly cleanup -------------------------------------------------------------------------


@pytest.fixture
def operational_rows(registry):
    """Something of every kind the cleanup deletes, old, next to the same kind kept."""
    version = ModelVersion.objects.get(model__name="iris", version=1)
    now = timezone.now()
    for days_old in (91, 89):
        JobRun.objects.create(
            job="backup",
            outcome="success",
            started_at=now - timedelta(days=days_old),
            duration_seconds=1,
        )
    JobRun.objects.create(job="backup", outcome="success", started_at=now, duration_seconds=1)
    for days_old in (181, 179, 0):
        report = DriftReport.objects.create(
            model_id=version.model_id,
            version=version,
            status=DriftStatus.OK,
            window_start=now - timedelta(days=days_old, hours=24),
            window_end=now - timedelta(days=days_old),
            threshold=0.05,
        )
        DriftReport.objects.filter(pk=report.pk).update(created_at=report.window_end)
    PredictionLog.objects.bulk_create(
        PredictionLog(
            request_id=f"r-{days_old}",
            model_id=version.model_id,
            version=version,
            output=0,
            created_at=now - timedelta(days=days_old),
        )
        for days_old in (31, 29)
    )
    client = factories.user_create("client")
    AuthToken.objects.create(user=client, expiry=timedelta(hours=-1))
    live = factories.token_create(client)
    old = services.backup_create(slot="old", actor="tests", now=now - timedelta(days=8))
    services.backup_create(slot="new", actor="tests")
    parked = Path(settings.MODEL_STORE_DIR) / "pending/tok/abc.upload"
    parked.parent.mkdir(parents=True, exist_ok=True)
    parked.write_bytes(b"x")
    orphan = Path(settings.MODEL_STORE_DIR) / "sha256/00/orphan.skops"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"left by a deleted version")
    stamp = (now - timedelta(days=2)).timestamp()
    for path in (parked, orphan):
        os.utime(path, (stamp, stamp))
    return {"live_token": live, "old_backup": old, "files": [parked, orphan]}


EXPECTED_COUNTS = {
    "backups_deleted": 1,
    "prediction_logs_pruned": 1,
    "artifacts_swept": 1,
    "pending_uploads_pruned": 1,
    "job_runs_pruned": 1,
    "drift_reports_pruned": 1,
    "expired_tokens_deleted": 1,
    "batch_jobs_pruned": 0,
    "webhook_deliveries_pruned": 0,
}


def _table_sizes() -> dict[str, int]:
    return {
        "backups": Backup.objects.count(),
        "job runs": JobRun.objects.count(),
        "drift reports": DriftReport.objects.count(),
        "prediction logs": PredictionLog.objects.count(),
        "tokens": AuthToken.objects.count(),
    }


def test_cleanup_applies_each_retention_with_its_default_and_counts_it(operational_rows):
    assert services.retention_cleanup_counts(services.retention_cleanup_run()) == EXPECTED_COUNTS
    assert _table_sizes() == {
        "backups": 1,
        "job runs": 2,
        "drift reports": 2,
        "prediction logs": 1,
        "tokens": 1,
    }
    assert not any(path.exists() for path in operational_rows["files"])


def test_cleanup_task_records_every_count_in_its_job_run(operational_rows):
    tasks.cleanup_retention_task.apply().get()
    run = JobRun.objects.filter(job="cleanup_retention").get()
    assert run.outcome == "success"
    assert run.details == EXPECTED_COUNTS


def test_cleanup_command_prints_and_records_every_count(operational_rows):
    out = StringIO()
    call_command("cleanup_retention", stdout=out)

    output = out.getvalue()
    assert output.startswith("Deleted:\n")
    for label in ("backups", "job runs", "drift reports", "expired API tokens"):
        assert f"  {label}: 1\n" in output
    run = JobRun.objects.filter(job="cleanup_retention").get()
    assert run.details == {"source": "command", **EXPECTED_COUNTS}


def test_cleanup_dry_run_reports_what_it_would_delete_and_deletes_nothing(operational_rows):
    sizes = _table_sizes()
    out = StringIO()

    call_command("cleanup_retention", "--dry-run", stdout=out)

    output = out.getvalue()
    assert output.startswith("Dry run: nothing deleted. Would delete:\n")
    for label in (
        "backups",
        "prediction logs",
        "unreferenced artifact files",
        "parked uploads",
        "job runs",
        "drift reports",
        "expired API tokens",
    ):
        assert f"  {label}: 1\n" in output
    assert _table_sizes() == sizes
    assert all(path.exists() for path in operational_rows["files"])
    assert services.backup_directory(operational_rows["old_backup"]).is_dir()
    assert not JobRun.objects.filter(job="cleanup_retention").exists()
    assert not JobRunTally.objects.exists()


def test_every_app_registers_its_prunes_and_the_cleanup_runs_exactly_those():
    from config.retention import prunes

    keys = [prune.key for prune in prunes()]
    assert set(keys) == set(EXPECTED_COUNTS)
    # Rows first, files after: a sweep in the same run collects what the row prunes freed.
    assert keys[0] == "backups_deleted"
    assert keys[-1] == "artifacts_swept"
    assert all(prune.label for prune in prunes())


def test_a_prune_registered_by_an_app_runs_with_the_cleanup(operational_rows, monkeypatch):
    from config import retention

    monkeypatch.setattr(retention, "_PRUNES", dict(retention._PRUNES))
    calls = []

    def extra(*, now, dry_run, actor):
        calls.append((dry_run, actor))
        return 3

    retention.prune_register("extra_pruned", extra, label="extras")
    summary = services.retention_cleanup_run(dry_run=True, actor="job:test")

    assert summary["extra_pruned"] == 3
    assert calls == [(True, "job:test")]


def test_each_prune_that_deletes_rows_is_audited_as_the_job(operational_rows):
    from mlregistry.models import AuditEvent

    services.retention_cleanup_run(actor="job:retention")

    events = AuditEvent.objects.filter(verb="prune")
    assert {event.actor_name for event in events} == {"job:retention"}
    assert {event.object_type for event in events} == {
        "backups.backup",
        "backups.jobrun",
        "quality.driftreport",
        "predictions.predictionlog",
        "knox.authtoken",
    }
    backup_event = events.get(object_type="backups.backup")
    assert (
        backup_event.object_id
        == f"{operational_rows['old_backup'].pk}..{operational_rows['old_backup'].pk}"
    )
    assert all(event.changes["rows"] == [1, 0] for event in events)
    # A dry run audits nothing: it deletes nothing.
    AuditEvent.objects.all().delete()
    services.retention_cleanup_run(dry_run=True)
    assert not AuditEvent.objects.filter(verb="prune").exists()
