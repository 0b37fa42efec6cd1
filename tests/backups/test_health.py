from datetime import timedelta

import pytest
from django.utils import timezone

from backups import services
from backups.models import Backup, BackupStatus, JobRun

pytestmark = pytest.mark.django_db(transaction=True)


def _ready(client) -> dict:
    response = client.get("/health/ready")
    assert response.status_code == 200  # degraded, never down
    return response.json()


def test_a_fresh_install_is_ready_and_says_there_is_no_backup_yet(anon_api):
    body = _ready(anon_api)
    assert body["checks"]["backup"]["status"] == "ok"
    assert body["checks"]["backup"]["detail"]["info"] == "no backup yet"
    assert body["status"] == "ok"


def test_without_any_backup_readiness_degrades_once_one_is_overdue(anon_api):
    from django.db.migrations.recorder import MigrationRecorder

    applied = dict(MigrationRecorder.Migration.objects.values_list("pk", "applied"))
    MigrationRecorder.Migration.objects.update(applied=timezone.now() - timedelta(hours=27))
    try:
        check = _ready(anon_api)["checks"]["backup"]
    finally:  # the migrations table outlives this test's data
        for pk, when in applied.items():
            MigrationRecorder.Migration.objects.filter(pk=pk).update(applied=when)
    assert check["status"] == "degraded"
    assert check["detail"]["info"] == "no backup yet"
    assert "overdue" in check["detail"]["reason"]


def test_readiness_is_ok_with_a_fresh_backup(anon_api, registry):
    services.backup_create(actor="tests")
    assert _ready(anon_api)["checks"]["backup"]["status"] == "ok"


def test_readiness_is_degraded_when_the_newest_backup_is_older_than_26_hours(anon_api, registry):
    backup = services.backup_create(actor="tests")
    Backup.objects.filter(pk=backup.pk).update(finished_at=timezone.now() - timedelta(hours=27))
    check = _ready(anon_api)["checks"]["backup"]
    assert check["status"] == "degraded"
    assert check["detail"]["age_hours"] > 26


def test_metrics_report_the_time_of_the_last_verified_backup(anon_api, registry):
    assert _samples(anon_api) == []
    backup = services.backup_create(actor="tests")
    Backup.objects.create(
        slot="later-failure", actor="tests", started_at=timezone.now(), status=BackupStatus.FAILED
    )
    assert _samples(anon_api) == [pytest.approx(backup.finished_at.timestamp())]


def _samples(client) -> list[float]:
    lines = client.get("/metrics").content.decode().splitlines()
    prefix = "mlregistry_backup_last_success_timestamp_seconds "
    return [float(line.split()[1]) for line in lines if line.startswith(prefix)]


def test_metrics_count_job_runs_by_outcome_and_their_durations(anon_api):
    JobRun.objects.create(
        job="backup", outcome="success", started_at=timezone.now(), duration_seconds=0.3
    )
    JobRun.objects.create(
        job="backup", outcome="failure", started_at=timezone.now(), duration_seconds=20
    )
    lines = set(anon_api.get("/metrics").content.decode().splitlines())
    assert 'mlregistry_job_runs_total{job="backup",outcome="success"} 1.0' in lines
    assert 'mlregistry_job_runs_total{job="backup",outcome="failure"} 1.0' in lines
    assert 'mlregistry_job_duration_seconds_bucket{job="backup",le="0.5"} 1.0' in lines
    assert 'mlregistry_job_duration_seconds_bucket{job="backup",le="+Inf"} 2.0' in lines
    assert 'mlregistry_job_duration_seconds_count{job="backup"} 2.0' in lines
    assert 'mlregistry_job_duration_seconds_sum{job="backup"} 20.3' in lines
