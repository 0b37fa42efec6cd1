"""Jobs whose worker died: heartbeats, the reaper, the broker's visibility timeout."""

import os
import subprocess
import sys
import time
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone

from backups import services, tasks
from backups.models import Backup, BackupStatus, JobRun
from config import celery as celery_config
from config.job_heartbeats import STALLED_JOB_KINDS, StalledJobKind, job_heartbeat
from config.schedules import DEFAULT_SCHEDULES
from quality import training
from quality.models import TrainingJob, TrainingStatus
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)

REPO = Path(__file__).resolve().parents[2]


def _backup(slot: str, *, heartbeat_age: float | None, status=BackupStatus.RUNNING) -> Backup:
    now = timezone.now()
    heartbeat = None if heartbeat_age is None else now - timedelta(seconds=heartbeat_age)
    return Backup.objects.create(
        slot=slot,
        actor="tests",
        status=status,
        started_at=now - timedelta(hours=1),
        heartbeat_at=heartbeat,
    )


def _training_job(*, heartbeat_age: float | None, started_age: float = 3600) -> TrainingJob:
    model = factories.registered_model_create(f"m{TrainingJob.objects.count()}")
    dataset = factories.iris_dataset_create(f"d{TrainingJob.objects.count()}", actor="tests")
    job = training.training_job_create(
        model=model, dataset=dataset, actor="tests", estimator="LogisticRegression", enqueue=False
    )
    now = timezone.now()
    TrainingJob.objects.filter(pk=job.pk).update(
        status=TrainingStatus.RUNNING,
        started_at=now - timedelta(seconds=started_age),
        heartbeat_at=None if heartbeat_age is None else now - timedelta(seconds=heartbeat_age),
    )
    return job


def test_the_reaper_fails_running_backups_whose_heartbeat_stopped(settings):
    settings.JOB_STALLED_AFTER_SECONDS = 180
    dead = _backup("dead", heartbeat_age=600)
    alive = _backup("alive", heartbeat_age=20)
    done = _backup("done", heartbeat_age=600, status=BackupStatus.VERIFIED)

    reaped = services.stalled_jobs_reap(actor="tests")

    assert reaped["backup"] == [dead.pk]
    dead.refresh_from_db()
    assert dead.status == BackupStatus.FAILED
    assert "no heartbeat since" in dead.error
    assert dead.finished_at is not None
    assert Backup.objects.get(pk=alive.pk).status == BackupStatus.RUNNING
    assert Backup.objects.get(pk=done.pk).status == BackupStatus.VERIFIED
    # Audited like every state change: one row, for the job it failed, with its actor.
    from mlregistry.models import AuditEvent

    event = AuditEvent.objects.get(verb="fail", object_type="backups.backup")
    assert (event.object_id, event.actor_name) == (str(dead.pk), "tests")
    assert event.changes == {"status": ["running", "failed"]}


def test_a_failed_slot_is_taken_over_by_its_next_attempt(registry, settings):
    _backup("killed-slot", heartbeat_age=600)
    services.stalled_jobs_reap(actor="tests")
    backup = services.backup_create(slot="killed-slot", actor="tests")
    assert backup.status == BackupStatus.VERIFIED
    assert backup.attempts == 2
    assert backup.error == ""


def test_the_reaper_fails_training_jobs_whose_worker_died_even_before_the_first_beat(settings):
    settings.JOB_STALLED_AFTER_SECONDS = 180
    stale = _training_job(heartbeat_age=900)
    never_beat = _training_job(heartbeat_age=None, started_age=900)
    just_started = _training_job(heartbeat_age=None, started_age=10)

    reaped = services.stalled_jobs_reap(actor="tests")

    assert sorted(reaped["training"]) == sorted([stale.pk, never_beat.pk])
    for job in (stale, never_beat):
        job.refresh_from_db()
        assert job.status == TrainingStatus.FAILED
        assert job.error_type == "worker_lost"
        assert "stopped" in job.error
    assert TrainingJob.objects.get(pk=just_started.pk).status == TrainingStatus.RUNNING
    # A redelivered message of a reaped job leaves it failed: no second candidate.
    assert training.training_job_run(job_id=stale.pk).status == TrainingStatus.FAILED


def test_other_job_kinds_join_the_reaper_by_registering(monkeypatch, settings):
    # A kind registered the way another app's ready() would, for a model with the fields.
    monkeypatch.setitem(
        STALLED_JOB_KINDS,
        "backup-as-another-kind",
        StalledJobKind(name="backup-as-another-kind", model="backups.Backup", failed="corrupt"),
    )
    monkeypatch.delitem(STALLED_JOB_KINDS, "backup")
    dead = _backup("dead", heartbeat_age=600)
    assert services.stalled_jobs_reap(actor="tests")["backup-as-another-kind"] == [dead.pk]
    assert Backup.objects.get(pk=dead.pk).status == "corrupt"


def test_a_kind_whose_on_failed_raises_keeps_that_job_and_the_reaper_goes_on(monkeypatch, settings):
    settings.JOB_STALLED_AFTER_SECONDS = 180
    calls = []

    def on_failed(backup):  # fault injected on purpose for one job
        calls.append(backup.slot)
        if backup.slot == "first":
            raise RuntimeError("the announcement failed")

    monkeypatch.setitem(
        STALLED_JOB_KINDS,
        "backup",
        StalledJobKind(name="backup", model="backups.Backup", on_failed=on_failed),
    )
    first, second = _backup("first", heartbeat_age=600), _backup("second", heartbeat_age=600)
    stale = _training_job(heartbeat_age=900)
    reaped = services.stalled_jobs_reap(actor="tests")
    assert reaped["backup"] == [second.pk] and reaped["training"] == [stale.pk]
    assert sorted(calls) == ["first", "second"]
    # The one whose hook failed was rolled back whole: still running, no audit row, retried.
    assert Backup.objects.get(pk=first.pk).status == BackupStatus.RUNNING
    from mlregistry.models import AuditEvent

    assert not AuditEvent.objects.filter(
        verb="fail", object_type="backups.backup", object_id=str(first.pk)
    ).exists()
    assert services.stalled_jobs_reap(actor="tests")["backup"] == []
    assert calls.count("first") == 2


def test_dry_run_lists_stalled_jobs_and_changes_nothing():
    dead = _backup("dead", heartbeat_age=600)
    assert services.stalled_jobs_reap(actor="tests", dry_run=True)["backup"] == [dead.pk]
    assert Backup.objects.get(pk=dead.pk).status == BackupStatus.RUNNING


def test_the_command_and_the_task_fail_stalled_jobs_and_record_a_run():
    first = _backup("first", heartbeat_age=600)
    out = StringIO()
    call_command("reap_stalled_jobs", "--dry-run", stdout=out)
    assert f"#{first.pk}" in out.getvalue()
    call_command("reap_stalled_jobs", stdout=out)
    assert Backup.objects.get(pk=first.pk).status == BackupStatus.FAILED
    assert JobRun.objects.filter(job="reap_stalled_jobs", outcome="success").count() == 1

    second = _backup("second", heartbeat_age=600)
    assert tasks.stalled_jobs_reap_task.apply().get()["backup"] == [second.pk]
    assert JobRun.objects.filter(job="reap_stalled_jobs").count() == 2
    # An idle minute leaves no job run behind (the reaper runs every minute).
    assert tasks.stalled_jobs_reap_task.apply().get()["backup"] == []
    assert JobRun.objects.filter(job="reap_stalled_jobs").count() == 2


def test_the_reaper_runs_every_minute_on_the_beat_schedule():
    (entry,) = [e for e in DEFAULT_SCHEDULES if e["task"] == "backups.tasks.stalled_jobs_reap_task"]
    assert entry["crontab"] == {"minute": "*"}
    assert entry["enabled"]


def test_a_running_job_keeps_stamping_its_heartbeat_until_it_ends():
    backup = _backup("beating", heartbeat_age=600)
    with job_heartbeat(backup, interval=0.1):
        first = Backup.objects.get(pk=backup.pk).heartbeat_at
        assert timezone.now() - first < timedelta(seconds=5)
        time.sleep(0.5)
        assert Backup.objects.get(pk=backup.pk).heartbeat_at > first
    stopped = Backup.objects.get(pk=backup.pk).heartbeat_at
    time.sleep(0.3)
    assert Backup.objects.get(pk=backup.pk).heartbeat_at == stopped


def test_backups_and_training_jobs_stamp_their_heartbeat_while_they_run(registry):
    backup = services.backup_create(slot="stamped", actor="tests")
    assert backup.heartbeat_at is not None
    assert Backup.objects.get(pk=backup.pk).heartbeat_at >= backup.started_at
    job = _training_job(heartbeat_age=None, started_age=0)
    TrainingJob.objects.filter(pk=job.pk).update(status=TrainingStatus.QUEUED)
    before = timezone.now()
    training.training_job_run(job_id=job.pk)
    assert TrainingJob.objects.get(pk=job.pk).heartbeat_at >= before


def test_the_visibility_timeout_outlasts_the_longest_task_time_limit(settings):
    app = celery_config.app
    app.finalize()
    limits = [task.time_limit or app.conf.task_time_limit for task in app.tasks.values()]
    timeout = app.conf.broker_transport_options["visibility_timeout"]
    assert timeout == celery_config.visibility_timeout(app)
    assert timeout > max(limits)
    # The backup is the longest job by default; its limit decides the timeout.
    assert celery_config.longest_task_time_limit(app) == (
        settings.BACKUP_TIME_LIMIT_SECONDS + settings.JOB_TIME_LIMIT_GRACE_SECONDS
    )
    assert tasks.backup_create_task.soft_time_limit == settings.BACKUP_TIME_LIMIT_SECONDS


def test_the_visibility_timeout_follows_a_longer_time_limit_set_by_the_environment():
    code = (
        "import django; django.setup(); from config.celery import app; "
        "app.loader.import_default_modules(); app.finalize(); "
        "print(app.conf.broker_transport_options['visibility_timeout'])"
    )
    env = {
        **os.environ,
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/15",
        "TRAINING_TIME_LIMIT_SECONDS": "50000",
        "JOB_TIME_LIMIT_GRACE_SECONDS": "100",
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[-1] == str(50000 + 100 + celery_config.VISIBILITY_TIMEOUT_MARGIN_SECONDS)


def test_a_stall_window_shorter_than_two_heartbeats_is_refused_at_start_up():
    env = {**os.environ, "JOB_HEARTBEAT_SECONDS": "60", "JOB_STALLED_AFTER_SECONDS": "90"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "JOB_STALLED_AFTER_SECONDS" in result.stderr
