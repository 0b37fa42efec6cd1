from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django_celery_beat.models import PeriodicTask

from backups import services
from backups.models import Backup, BackupStatus, JobRun
from config.schedules import DEFAULT_SCHEDULES
from mlregistry.models import ModelVersion
from tests.backups.conftest import backup_manifest, backup_read, backup_write

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.storage]


def _run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=out)
    return out.getvalue()


def test_backup_create_command_writes_a_verified_backup_and_reuses_its_slot(registry):
    output = _run("backup_create", "--slot", "by-hand")
    assert "verified" in output
    # What it prints names the backup for the other commands, on a folder as in a bucket.
    printed = output.split(": ", 1)[1].rsplit(" (", 1)[0]
    assert "match the manifest" in _run("backup_verify", printed)
    _run("backup_create", "--slot", "by-hand")
    assert Backup.objects.get().status == BackupStatus.VERIFIED


def test_backup_verify_checks_the_newest_backup_when_none_is_named(registry):
    services.backup_create(slot="older", actor="tests")
    newest = services.backup_create(slot="newer", actor="tests")
    assert newest.path in _run("backup_verify")


def test_backup_verify_accepts_an_id_or_a_folder(registry):
    backup = services.backup_create(actor="tests")
    assert "match the manifest" in _run("backup_verify", str(backup.pk))
    # Where backup_create says it is (a folder, or s3://bucket/prefix/folder), or its name.
    assert "match the manifest" in _run("backup_verify", str(services.backup_location(backup)))
    assert "match the manifest" in _run("backup_verify", backup.path)


def test_backup_verify_exits_non_zero_on_a_mismatch(registry):
    backup = services.backup_create(actor="tests")
    backup_write(backup, "artifacts.tar.gz", b"truncated")
    with pytest.raises(CommandError, match="failed verification"):
        _run("backup_verify", str(backup.pk))


def test_backup_verify_without_backups_says_so(db):
    with pytest.raises(CommandError, match="no backup"):
        _run("backup_verify")


def test_backup_verify_of_an_unknown_id_fails(db):
    with pytest.raises(CommandError, match="No backup with id"):
        _run("backup_verify", "12345")


def test_restore_is_a_dry_run_by_default_that_says_what_it_replaces(registry):
    backup = services.backup_create(actor="tests")
    ModelVersion.objects.filter(version=2).delete()

    output = _run("restore_backup", str(backup.pk))

    assert "mlregistry.modelversion: 2 -> 3" in output
    assert "--yes" in output
    assert "not empty" in output
    assert ModelVersion.objects.count() == 2


def test_restore_with_yes_replaces_the_data(registry):
    backup = services.backup_create(actor="tests")
    ModelVersion.objects.filter(version=2).delete()

    output = _run("restore_backup", str(backup.pk), "--yes")

    assert "Restored" in output
    assert ModelVersion.objects.count() == 3
    assert JobRun.objects.filter(job="restore", outcome="success").count() == 1


def test_restore_refuses_a_corrupted_backup(registry):
    backup = services.backup_create(actor="tests")
    database = backup_manifest(backup)["database"]["file"]
    backup_write(backup, database, backup_read(backup, database)[:-10])

    with pytest.raises(CommandError, match="Refusing to restore"):
        _run("restore_backup", str(services.backup_location(backup)), "--yes")
    assert ModelVersion.objects.count() == 3


def test_restore_of_a_missing_folder_fails(db):
    with pytest.raises(CommandError, match="No backup folder"):
        _run("restore_backup", "/nonexistent/backup")


def test_cleanup_retention_command_reports_what_it_did(registry):
    output = _run("cleanup_retention")
    assert "  backups: 0\n" in output
    assert "  unreferenced artifact files: 0\n" in output


def test_setup_schedules_creates_the_defaults_once_and_keeps_operator_edits(db):
    assert "created schedule backup-daily" in _run("setup_schedules")
    tasks = {t.name: t for t in PeriodicTask.objects.select_related("crontab")}
    assert set(tasks) == {entry["name"] for entry in DEFAULT_SCHEDULES}
    for entry in DEFAULT_SCHEDULES:
        task = tasks[entry["name"]]
        assert (task.task, task.enabled) == (entry["task"], entry["enabled"])
        for field, value in entry["crontab"].items():
            assert getattr(task.crontab, field) == value
    assert (tasks["backup-daily"].crontab.hour, tasks["backup-daily"].crontab.minute) == ("2", "0")

    PeriodicTask.objects.filter(name="drift-check-daily").update(enabled=False)
    PeriodicTask.objects.filter(name="backup-daily").delete()
    output = _run("setup_schedules")

    assert output.strip() == "created schedule backup-daily"
    assert not PeriodicTask.objects.get(name="drift-check-daily").enabled
    assert "nothing changed" in _run("setup_schedules")
