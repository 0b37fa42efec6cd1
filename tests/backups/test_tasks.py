from types import SimpleNamespace

import pytest
from celery.exceptions import Retry

from backups import services, tasks
from backups.models import Backup, BackupStatus, JobRun

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.storage]


def _runs(job: str, outcome: str) -> int:
    return JobRun.objects.filter(job=job, outcome=outcome).count()


def test_scheduled_slot_is_the_hour_the_task_was_published():
    request = SimpleNamespace(published_at="2026-03-10T02:00:07.5+00:00", id="abc")
    assert tasks.scheduled_slot(request) == "scheduled-2026-03-10T02"


def test_scheduled_slot_without_the_header_is_stable_across_redelivery():
    assert tasks.scheduled_slot(SimpleNamespace(id="abc")) == "task-abc"
    assert tasks.scheduled_slot(SimpleNamespace(published_at="junk", id="x")) == "task-x"


def test_backup_task_writes_one_backup_per_slot_and_counts_the_runs(registry):
    before = _runs("backup", "success")
    first = tasks.backup_create_task.apply(kwargs={"slot": "s1"}).get()
    again = tasks.backup_create_task.apply(kwargs={"slot": "s1"}).get()
    assert first == again
    assert Backup.objects.get().status == BackupStatus.VERIFIED
    assert _runs("backup", "success") == before + 2


def test_backup_task_retries_later_when_the_slot_is_busy(registry, monkeypatch):
    # Fault injected on purpose: another process holds the slot.
    def busy(**kwargs):
        raise services.BackupInProgress("busy")

    monkeypatch.setattr(services, "backup_create", busy)
    monkeypatch.setattr(tasks.backup_create_task, "retry", _retry_raises)
    retries = _runs("backup", "retry")
    with pytest.raises(Retry):
        tasks.backup_create_task.run(slot="s2")
    assert _runs("backup", "retry") == retries + 1


def _retry_raises(*, exc=None, kwargs=None, countdown=None, **options):
    assert kwargs == {"slot": "s2"}
    raise Retry(exc=exc, when=countdown)


def test_cleanup_task_runs_the_retention_service(registry):
    before = _runs("cleanup_retention", "success")
    summary = tasks.cleanup_retention_task.apply().get()
    assert summary["backups_deleted"] == []
    assert _runs("cleanup_retention", "success") == before + 1
