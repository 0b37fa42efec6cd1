import hashlib
import io
import json
import subprocess
import tarfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import connection, connections, transaction
from django.utils import timezone

from backups import services
from backups.models import Backup, BackupStatus
from mlregistry import retention
from mlregistry.models import ModelVersion, RegisteredModel, StageTransition
from mlregistry.storage import get_artifact_storage, get_backup_storage
from tests import factories
from tests.backups.conftest import (
    artifact_digests,
    backup_folders,
    backup_manifest,
    backup_read,
    backup_ref,
    backup_write,
    production_predictions,
)
from tests.storage import is_local, store_clear, store_corrupt, store_write

POSTGRES = pytest.mark.postgres
# Backups read the database from outside the test's transaction (pg_dump, SQLite's backup
# API), so the rows must be committed.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.storage]


def _wipe_registry() -> None:
    """What a lost server looks like: no registry rows, no artifact files."""
    StageTransition.objects.all().delete()
    ModelVersion.objects.all().delete()
    RegisteredModel.objects.all().delete()
    store_clear()


def _round_trip(registry) -> Backup:
    digests = artifact_digests()
    counts = services.registry_row_counts()
    predictions = production_predictions("iris")

    backup = services.backup_create(actor="tests")
    _wipe_registry()
    assert services.registry_row_counts()["mlregistry.modelversion"] == 0
    result = services.backup_restore(directory=backup_ref(backup), backup=backup, actor="tests")

    assert artifact_digests() == digests
    assert services.registry_row_counts() == counts
    assert result.mismatches == []
    np.testing.assert_array_equal(production_predictions("iris"), predictions)
    return backup


def test_restore_on_sqlite_brings_back_rows_artifacts_and_predictions(registry):
    if connection.vendor != "sqlite":
        pytest.skip("the SQLite round trip; the PostgreSQL one is marked postgres")
    backup = _round_trip(registry)
    assert backup_read(backup, "database.sqlite3")[:6] == b"SQLite"


@POSTGRES
def test_restore_on_postgres_brings_back_rows_artifacts_and_predictions(registry):
    backup = _round_trip(registry)
    # pg_dump's custom format, restorable with pg_restore.
    assert backup_read(backup, "database.dump")[:5] == b"PGDMP"


def test_restore_keeps_the_backup_catalogue_written_after_the_dump(registry):
    first = services.backup_create(slot="first", actor="tests")
    second = services.backup_create(slot="second", actor="tests")
    services.backup_restore(directory=backup_ref(first), actor="tests")
    assert set(Backup.objects.values_list("slot", flat=True)) == {"first", "second"}
    # The id sequence moved past the kept rows: a new backup gets a fresh id.
    third = services.backup_create(slot="third", actor="tests")
    assert third.pk > second.pk


def test_backup_writes_manifest_with_checksums_sizes_and_row_counts(registry):
    backup = services.backup_create(actor="tests")

    location = services.backup_location(backup)
    manifest = backup_manifest(backup)
    assert backup.status == BackupStatus.VERIFIED
    assert set(manifest["files"]) == {manifest["database"]["file"], "artifacts.tar.gz"}
    for name, entry in manifest["files"].items():
        assert location.storage.size(location.file(name)) == entry["size"]
        assert backup.checksums[name] == entry["sha256"]
    assert {n: e["sha256"] for n, e in manifest["artifacts"].items()} == artifact_digests()
    assert manifest["row_counts"]["mlregistry.modelversion"] == 3
    assert manifest["row_counts"]["mlregistry.registeredmodel"] == 2
    assert backup.artifact_count == 3
    assert not list(Path(settings.BACKUP_DIR).glob(".tmp-*"))  # the local spool is emptied


def test_a_slot_run_twice_yields_one_backup(registry):
    first = services.backup_create(slot="scheduled-2026-01-01T02", actor="tests")
    again = services.backup_create(slot="scheduled-2026-01-01T02", actor="tests")
    assert again.pk == first.pk
    assert Backup.objects.count() == 1
    assert len(backup_folders()) == 1


def test_a_backup_whose_worker_keeps_dying_is_failed_instead_of_started_again(registry, settings):
    settings.JOB_MAX_ATTEMPTS = 3
    # Three attempts whose worker was killed mid-run: the row says running, nothing else.
    Backup.objects.create(slot="nightly", actor="tests", started_at=datetime.now(UTC), attempts=3)
    with pytest.raises(services.BackupError, match="started 3 times without finishing"):
        services.backup_create(slot="nightly", actor="tests")
    backup = Backup.objects.get(slot="nightly")
    assert (backup.status, backup.attempts) == (BackupStatus.FAILED, 3)
    assert backup.finished_at is not None and not backup.path


def test_a_failed_attempt_is_taken_over_by_the_retry_of_its_slot(registry, monkeypatch):
    # Fault injected on purpose: the first attempt's archive step dies half-way.
    original = services._artifacts_archive_write

    def broken(target):
        target.write_bytes(b"half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(services, "_artifacts_archive_write", broken)
    with pytest.raises(OSError, match="disk full"):
        services.backup_create(slot="nightly", actor="tests")
    failed = Backup.objects.get(slot="nightly")
    assert failed.status == BackupStatus.FAILED
    assert "disk full" in failed.error

    monkeypatch.setattr(services, "_artifacts_archive_write", original)
    retried = services.backup_create(slot="nightly", actor="tests")
    assert retried.pk == failed.pk
    assert retried.status == BackupStatus.VERIFIED
    assert retried.attempts == 2
    assert backup_folders() == [retried.path]


def test_an_attempt_killed_mid_write_is_taken_over_without_leftovers(registry, monkeypatch):
    # Fault injected on purpose: a BaseException skips every `except Exception`, as a SIGKILL
    # would, leaving the row "running" and a temporary folder behind.
    def killed(target):
        raise KeyboardInterrupt

    monkeypatch.setattr(services, "_database_dump", killed)
    with pytest.raises(KeyboardInterrupt):
        services.backup_create(slot="nightly", actor="tests")
    assert Backup.objects.get(slot="nightly").status == BackupStatus.RUNNING
    Path(settings.BACKUP_DIR, f".tmp-{services._slot_tag('nightly')}-leftover").mkdir()
    # Killed while storing, before the row was updated: a stored folder the row doesn't know.
    unknown = f"20260101T020000Z-{services._slot_tag('nightly')}"
    store_write(f"{unknown}/database.dump", b"stored before the kill", get_backup_storage())
    # A slot whose name ends like this one's must keep its leftovers: they are not ours.
    others = Path(settings.BACKUP_DIR, f".tmp-{services._slot_tag('x-nightly')}-running")
    others.mkdir()
    monkeypatch.undo()

    backup = services.backup_create(slot="nightly", actor="tests")
    assert backup.status == BackupStatus.VERIFIED
    assert Backup.objects.count() == 1
    assert backup_folders() == [backup.path]
    spooled = {p.name for p in Path(settings.BACKUP_DIR).iterdir() if p.name.startswith(".tmp-")}
    assert spooled == {others.name}


def test_a_slot_held_by_another_live_process_is_refused(registry):
    other = connections.create_connection("default")
    try:
        # Another process holds the slot: its own database session, its own file handle.
        with services._slot_lock("busy", using=other) as acquired:
            assert acquired
            with pytest.raises(services.BackupInProgress):
                services.backup_create(slot="busy", actor="tests")
        backup = services.backup_create(slot="busy", actor="tests")
    finally:
        other.close()
    assert backup.status == BackupStatus.VERIFIED


def test_verify_finds_a_flipped_byte_and_marks_the_backup_corrupt(registry):
    backup = services.backup_create(actor="tests")
    store_corrupt(services.backup_location(backup).file("artifacts.tar.gz"), get_backup_storage())
    with pytest.raises(services.BackupCorrupt) as caught:
        services.backup_verify(backup=backup)
    assert caught.value.problems == ["artifacts.tar.gz: sha256 mismatch"]
    backup.refresh_from_db()
    assert backup.status == BackupStatus.CORRUPT
    assert backup.verified_at is None


def test_verify_refuses_an_edited_manifest(registry):
    backup = services.backup_create(actor="tests")
    manifest = backup_manifest(backup)
    manifest["row_counts"]["mlregistry.modelversion"] = 99
    backup_write(backup, "manifest.json", json.dumps(manifest).encode())
    with pytest.raises(services.BackupCorrupt, match="failed verification"):
        services.backup_verify(backup=backup)
    # Without the row, the files are still checked against the (edited) manifest.
    assert services.backup_verify(path=backup_ref(backup))["row_counts"]


def test_restore_refuses_a_corrupted_database_dump_and_changes_nothing(registry):
    backup = services.backup_create(actor="tests")
    location = services.backup_location(backup)
    store_corrupt(location.file(backup_manifest(backup)["database"]["file"]), location.storage)
    digests, counts = artifact_digests(), services.registry_row_counts()

    with pytest.raises(services.BackupCorrupt):
        services.backup_restore(directory=backup_ref(backup), backup=backup, actor="tests")
    assert artifact_digests() == digests
    assert services.registry_row_counts() == counts


def _rewrite_archive(backup: Backup, add) -> None:
    """Swaps in a crafted archive and re-signs it, as someone with write access could."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        add(tar)
    data = archive.getvalue()
    backup_write(backup, "artifacts.tar.gz", data)
    manifest = backup_manifest(backup)
    manifest["files"]["artifacts.tar.gz"] = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    backup_write(backup, "manifest.json", json.dumps(manifest).encode())


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        ("../escape.skops", "escapes"),
        ("/etc/evil.skops", "absolute"),
        ("link", "not a regular file"),
    ],
)
def test_restore_refuses_archive_members_with_unsafe_paths(registry, member, reason, tmp_path):
    backup = services.backup_create(actor="tests")

    def add(tar):
        info = tarfile.TarInfo(member)
        if member == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info, None if member == "link" else io.BytesIO(b""))

    _rewrite_archive(backup, add)
    with pytest.raises(services.BackupCorrupt) as caught:
        services.backup_restore(directory=backup_ref(backup), actor="tests")
    assert reason in " ".join(caught.value.problems)
    assert not (tmp_path / "escape.skops").exists()
    assert services.registry_row_counts()["mlregistry.modelversion"] == 3


@pytest.mark.parametrize(
    ("member", "problem"),
    [
        ("../x", "../x: path escapes the archive (..)"),
        ("a/../../x", "a/../../x: path escapes the archive (..)"),
        ("/abs", "/abs: absolute path"),
        ("C:/win", "C:/win: absolute path"),
        ("sha256/ab/ok.skops", None),
    ],
)
def test_archive_member_check_names_the_problem(member, problem):
    assert services.archive_member_problem(tarfile.TarInfo(member)) == problem


def test_archive_member_check_refuses_hard_links():
    info = tarfile.TarInfo("sha256/ab/x.skops")
    info.type = tarfile.LNKTYPE
    assert "not a regular file" in services.archive_member_problem(info)


def test_backup_and_restore_refuse_to_run_inside_a_transaction(registry):
    backup = services.backup_create(actor="tests")
    with transaction.atomic():
        with pytest.raises(services.BackupError, match="transaction"):
            services.backup_create(actor="tests")
        with pytest.raises(services.BackupError, match="transaction"):
            services.backup_restore(directory=backup_ref(backup), actor="tests")


def test_restore_refuses_a_dump_of_another_database_engine():
    other = "postgresql" if connection.vendor == "sqlite" else "sqlite"
    with pytest.raises(services.BackupError, match=f"holds a {other} database"):
        services._database_restore(Path("unused"), other)


def test_resolve_finds_a_backup_by_id_folder_name_or_manifest(registry):
    backup = services.backup_create(actor="tests")
    location = services.backup_location(backup)
    assert services.backup_resolve(str(backup.pk)) == (backup, location)
    # By folder name alone: how an operator names a backup kept in a bucket.
    assert services.backup_resolve(backup.path) == (backup, location)
    if is_local("backups"):
        directory = services.backup_directory(backup)
        assert services.backup_resolve(str(directory)) == (backup, location)
        assert services.backup_resolve(str(directory / "manifest.json")) == (backup, location)
    with pytest.raises(services.NotFoundError):
        services.backup_resolve("999999")
    with pytest.raises(services.NotFoundError):
        services.backup_resolve("/nonexistent/backup")


# --- retention ------------------------------------------------------------------------------

NOW = datetime(2026, 3, 10, 3, 0, tzinfo=UTC)


def _daily_backups(days: int) -> list[Backup]:
    """One real backup per day at 02:00 for `days` days, the newest today."""
    return [
        services.backup_create(
            slot=f"day-{age}", actor="tests", now=NOW.replace(hour=2) - timedelta(days=age)
        )
        for age in range(days)
    ]


def test_retention_over_ten_days_keeps_exactly_the_last_seven(registry):
    backups = _daily_backups(10)

    deleted = services.backup_retention_apply(now=NOW, retention_days=7)

    kept = set(Backup.objects.values_list("slot", flat=True))
    assert kept == {f"day-{age}" for age in range(7)}
    assert sorted(deleted) == sorted(b.pk for b in backups[7:])
    assert set(backup_folders()) == {b.path for b in backups[:7]}


def test_retention_never_deletes_the_newest_verified_backup(registry):
    backups = _daily_backups(3)
    # The two newest are failures: the only verified backup left is 2 days old.
    Backup.objects.filter(pk__in=[backups[0].pk, backups[1].pk]).update(status=BackupStatus.FAILED)

    services.backup_retention_apply(now=NOW + timedelta(days=30), retention_days=7)

    assert list(Backup.objects.values_list("pk", flat=True)) == [backups[2].pk]
    assert services.backup_location(backups[2]).exists("manifest.json")


def test_retention_removes_leftover_temporary_folders_past_the_cutoff(registry):
    leftover = Path(settings.BACKUP_DIR, ".tmp-dead-attempt")
    leftover.mkdir(parents=True)
    services.backup_retention_apply(now=NOW, retention_days=7)
    assert leftover.exists()  # young: it may be an attempt still running
    services.backup_retention_apply(now=datetime.now(UTC) + timedelta(days=8), retention_days=7)
    assert not leftover.exists()


def _later(**delta: float) -> datetime:
    """A sweep's clock moved on: the store dates its files itself (an object store's dates
    cannot be set), so files are made old by sweeping later, not by backdating them."""
    return timezone.now() + timedelta(**delta)


def test_sweep_removes_only_old_unreferenced_artifacts(registry):
    storage = get_artifact_storage()
    referenced = [v.artifact.name for v in ModelVersion.objects.all()]
    orphan = storage.save("sha256/00/orphan.skops", ContentFile(b"left by a deleted version"))

    # Younger than ARTIFACT_SWEEP_MIN_AGE_SECONDS (an hour) it may be an upload in flight.
    assert retention.artifacts_sweep() == []
    removed = retention.artifacts_sweep(now=_later(hours=2))

    assert removed == ["sha256/00/orphan.skops"] == [orphan]
    assert not storage.exists(orphan)
    assert all(storage.exists(name) for name in referenced)


def test_sweep_removes_what_crashed_writers_left_once_no_task_can_still_be_writing(registry):
    """A write killed between its temporary file and the rename, and a batch merge killed in
    its work folder, leave ".tmp-*" entries that every walk of the store skips: the sweep
    removes them once older than the longest task time limit, and a folder whose newest
    entry is young stays (a merge still writing)."""
    import os

    storage = get_artifact_storage()
    if not is_local():
        assert retention.artifacts_sweep(now=_later(days=30)) == []  # one PUT: nothing left
        return
    kept = [v.artifact.name for v in ModelVersion.objects.all()]
    root = Path(storage.path(""))
    part = root / "sha256" / "00" / ".tmp-dead.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(b"half an artifact")
    work = root / "batch-jobs" / "7" / ".tmp-merge"
    work.mkdir(parents=True)
    (work / "merged").write_bytes(b"half a merge")
    writing = root / "batch-jobs" / "8" / ".tmp-merge"
    writing.mkdir(parents=True)
    (writing / "merged").write_bytes(b"a merge going on")
    long_ago = time.time() - 3 * 24 * 3600
    os.utime(writing, (long_ago, long_ago))  # the folder is old, what is written in it is not
    # A link named like a work folder is judged, and removed, by itself: never followed.
    outside = Path(storage.path("")).parent / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "fresh").write_bytes(b"not the store's")
    link = root / "batch-jobs" / ".tmp-link"
    link.symlink_to(outside, target_is_directory=True)

    assert retention.artifacts_sweep() == []  # young: their writers may be alive
    limit = _longest_task_seconds()
    assert retention.artifacts_sweep(now=_later(seconds=limit - 60)) == []
    later = _later(seconds=limit + 60)
    os.utime(writing / "merged", (later.timestamp(), later.timestamp()))  # still writing
    os.utime(link, (long_ago, long_ago), follow_symlinks=False)
    os.utime(outside / "fresh", (later.timestamp(), later.timestamp()))
    expected = ["batch-jobs/.tmp-link", "batch-jobs/7/.tmp-merge", "sha256/00/.tmp-dead.part"]
    assert retention.artifacts_sweep(now=later, dry_run=True) == expected
    assert part.exists() and work.exists()
    assert retention.artifacts_sweep(now=later) == expected
    assert not part.exists() and not work.exists() and not link.is_symlink()
    assert (outside / "fresh").read_bytes() == b"not the store's"
    assert (writing / "merged").exists()
    assert all(storage.exists(name) for name in kept)


def _longest_task_seconds() -> int:
    from config.celery import app, longest_task_time_limit

    return longest_task_time_limit(app)


def test_sweep_collects_artifacts_of_a_deleted_model_only(registry):
    from mlregistry import services as registry_services

    storage = get_artifact_storage()
    other = RegisteredModel.objects.get(name="iris-other")
    doomed = other.versions.get().artifact.name
    registry_services.registered_model_delete(model=other, actor="tests")

    removed = retention.artifacts_sweep(now=_later(hours=48))

    assert removed == [doomed]
    assert ModelVersion.objects.count() == 2
    assert all(storage.exists(v.artifact.name) for v in ModelVersion.objects.all())


def test_sweep_keeps_dataset_files_and_parked_uploads(registry):
    """Dataset files and the admin's parked uploads share the store: only orphans of the
    swept namespaces go."""
    from quality import training

    storage = get_artifact_storage()
    dataset = training.dataset_create(
        name="flowers",
        file=io.BytesIO(b"a,b,y\n1,2,0\n3,4,1\n"),
        file_format="csv",
        target_column="y",
        feature_columns=["a", "b"],
        actor="tests",
    )
    kept = [dataset.file.name, storage.save("pending/tok/abc.upload", ContentFile(b"x"))]
    storage.save("datasets/00/orphan.csv", ContentFile(b"x"))

    removed = retention.artifacts_sweep(now=_later(hours=48))

    assert removed == ["datasets/00/orphan.csv"]
    assert all(storage.exists(name) for name in kept)


def test_cleanup_prunes_parked_uploads_after_a_day(registry):
    storage = get_artifact_storage()
    parked = storage.save("pending/tok/abc.upload", ContentFile(b"x"))
    assert services.retention_cleanup_run(now=_later(hours=20))["pending_uploads_pruned"] == 0
    summary = services.retention_cleanup_run(now=_later(hours=30))
    assert summary["pending_uploads_pruned"] == 1 and not storage.exists(parked)


def test_cleanup_run_reports_each_part(registry):
    _daily_backups(1)
    summary = services.retention_cleanup_run(now=NOW)
    assert summary["backups_deleted"] == []
    assert summary["artifacts_swept"] == []
    assert "prediction_logs_pruned" in summary


def _delete(backup: Backup, filename: str) -> None:
    location = services.backup_location(backup)
    location.storage.delete(location.file(filename))


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda b: _delete(b, "manifest.json"), "manifest.json missing"),
        (lambda b: backup_write(b, "manifest.json", b"{not json"), "manifest.json: unreadable"),
        (lambda b: _delete(b, "artifacts.tar.gz"), "artifacts.tar.gz: missing"),
    ],
)
def test_verify_by_path_names_what_is_wrong(registry, damage, problem):
    backup = services.backup_create(actor="tests")
    damage(backup)
    with pytest.raises(services.BackupCorrupt) as caught:
        services.backup_verify(path=backup_ref(backup))
    assert problem in caught.value.problems[0]


def test_verify_refuses_a_re_signed_archive_whose_artifacts_differ(registry):
    backup = services.backup_create(actor="tests")
    name = next(iter(backup_manifest(backup)["artifacts"]))

    def add(tar):
        data = b"not the model that was registered"
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("sha256/ff/extra.skops")
        tar.addfile(info, io.BytesIO(b""))

    _rewrite_archive(backup, add)
    with pytest.raises(services.BackupCorrupt) as caught:
        services.backup_verify(path=backup_ref(backup))
    problems = " ".join(caught.value.problems)
    assert f"{name} sha256 mismatch" in problems
    assert "extra.skops is not in the manifest" in problems
    assert "missing" in problems  # the other two artifacts are gone from the archive


def test_verify_needs_a_backup_or_a_path():
    with pytest.raises(services.BackupError, match="Name a backup"):
        services.backup_verify()


def test_a_backup_row_without_files_cannot_be_opened():
    backup = Backup.objects.create(slot="empty", actor="tests", started_at=NOW)
    with pytest.raises(services.BackupError, match="has no files"):
        services.backup_directory(backup)


@POSTGRES
def test_pg_tools_come_from_pg_bin_dir_when_set(registry, settings, tmp_path):
    settings.PG_BIN_DIR = str(tmp_path / "nowhere")
    with pytest.raises(services.BackupError, match="not found"):
        services.backup_create(slot="no-tools", actor="tests")
    assert Backup.objects.get(slot="no-tools").status == BackupStatus.FAILED


def test_restore_plan_warns_when_backup_and_database_schemas_differ(registry):
    backup = services.backup_create(actor="tests")
    manifest = backup_manifest(backup)
    assert "backups.0001_backups_and_job_runs" in manifest["migrations"]

    plan = services.restore_plan(directory=backup_ref(backup))
    assert plan.schema_warnings() == []
    plan.manifest["migrations"] = [*manifest["migrations"][1:], "mlregistry.9999_future"]
    warnings = " ".join(plan.describe())
    assert "newer code" in warnings
    assert "9999_future" in warnings
    assert "manage.py migrate" in warnings


def test_pg_tools_get_the_ssl_options_of_database_url(monkeypatch):
    seen = {}

    def run(command, env, **kwargs):
        # Stand-in for the subprocess: this test checks only the environment it is given.
        seen.update(env)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(services.subprocess, "run", run)
    database = settings.DATABASES["default"]
    monkeypatch.setitem(database, "PASSWORD", "s3cret")
    monkeypatch.setitem(database, "OPTIONS", {**database.get("OPTIONS", {}), "sslmode": "require"})
    services._pg_run(["pg_dump", "--version"])
    assert (seen["PGSSLMODE"], seen["PGPASSWORD"]) == ("require", "s3cret")


def test_an_identical_upload_in_flight_keeps_its_orphaned_file_from_the_sweep(registry):
    storage = get_artifact_storage()
    version = ModelVersion.objects.get(model__name="iris", version=2)
    name = version.artifact.name
    version.delete()  # now an orphan
    stored_at = storage.get_modified_time(name)
    # Swept as of its own date, with no margin: it goes.
    as_stored = {"now": stored_at, "min_age": timedelta(0)}
    assert retention.artifacts_sweep(dry_run=True, **as_stored) == [name]
    # An object store dates to the second: the upload below must land in a later one.
    time.sleep(max(0.0, (stored_at + timedelta(seconds=1) - timezone.now()).total_seconds()))

    # An upload of the same bytes has stored its (content-addressed) file, and its row is not
    # committed yet: the sweep must not take the file from under it.
    storage.save(name, ContentFile(factories.iris_classifier_bytes(0.1)))

    assert retention.artifacts_sweep(**as_stored) == []
    assert storage.exists(name)


def test_restoring_a_backup_taken_before_the_quality_app_counts_its_rows_as_moved(registry):
    from quality.models import Dataset

    factories.iris_dataset_create()
    backup = services.backup_create(actor="tests")
    manifest = backup_manifest(backup)
    assert manifest["row_counts"]["quality.dataset"] == 1
    # As such a backup's manifest counts them: under the app the model used to live in.
    manifest["row_counts"]["mlregistry.dataset"] = manifest["row_counts"].pop("quality.dataset")
    backup_write(backup, "manifest.json", json.dumps(manifest).encode())
    result = services.backup_restore(directory=backup_ref(backup), backup=None, actor="tests")
    assert result.mismatches == []
    assert Dataset.objects.count() == 1


def test_a_slot_that_failed_by_itself_is_tried_again_whatever_its_attempts(registry, settings):
    """JOB_MAX_ATTEMPTS stops a backup whose worker keeps dying, not one that failed (a full
    disk, a database error): Celery's retries of that slot go on."""
    settings.JOB_MAX_ATTEMPTS = 3
    Backup.objects.create(
        slot="retried",
        actor="tests",
        started_at=datetime.now(UTC),
        attempts=3,
        status=BackupStatus.FAILED,
        error="OSError: disk full",
    )
    backup = services.backup_create(slot="retried", actor="tests")
    assert (backup.status, backup.attempts) == (BackupStatus.VERIFIED, 4)
