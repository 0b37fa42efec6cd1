"""Backups, their verification, restore and retention: every caller (admin, commands, Celery
tasks) goes through these functions.

A backup is a folder in the backup storage (storages["backups"]: BACKUP_DIR, or the bucket
of BACKUP_STORAGE_URL) holding the database dump (pg_dump custom format on PostgreSQL,
SQLite's online backup API on SQLite), a tar of every file in the artifact storage
(storages["artifacts"]) and a manifest.json with the sha256 and size of every file and the
registry's row counts. It is assembled in a local spool folder, stored file by file with the
manifest last (a folder without its manifest is an unfinished attempt), then verified by
re-reading it from the store. Artifacts are read from, and restored into, the artifact
storage only through Django's storage API, so any backend pair works, in either direction.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import uuid
import zlib
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import IO, Any

from django.apps import apps
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files import File
from django.core.files.storage import FileSystemStorage, Storage
from django.core.management.color import no_style
from django.db import IntegrityError, connection, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.migrations.recorder import MigrationRecorder
from django.db.models import F, Q, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from backups.models import (
    DURATION_BUCKETS,
    FINISHED_OUTCOMES,
    Backup,
    BackupStatus,
    JobRun,
    JobRunTally,
)
from config.archives import ArchiveError, ArchiveLimits, tar_check
from config.errors import ConflictError, DomainError, NotFoundError
from config.events import event_publish
from config.job_heartbeats import STALLED_JOB_KINDS, StalledJobKind, job_heartbeat
from mlregistry.audit import audit_record, audit_rows_pruned, fields_snapshot
from mlregistry.storage import (
    TEMPORARY_PREFIX,
    get_artifact_storage,
    get_backup_storage,
    storage_delete_folder,
    storage_walk,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
ARTIFACTS_ARCHIVE = "artifacts.tar.gz"
DATABASE_FILES = {"postgresql": "database.dump", "sqlite": "database.sqlite3"}
# Apps whose row counts go into the manifest and are compared after a restore.
COUNTED_APPS = ("auth", "mlregistry", "predictions", "quality")
# Models that changed app (same table, same rows): a backup taken before the move counts them
# under their old label.
MOVED_MODEL_LABELS = {
    "mlregistry.dataset": "quality.dataset",
    "mlregistry.trainingjob": "quality.trainingjob",
    "predictions.driftreport": "quality.driftreport",
}
CHUNK_SIZE = 1024 * 1024


class BackupError(DomainError):
    status_code = 409
    error_type = "backup_error"


class BackupInProgress(ConflictError):
    """Another live process holds this slot; the caller may retry later."""

    error_type = "backup_in_progress"


class BackupCorrupt(BackupError):
    """A backup whose files do not match its manifest: never restored."""

    error_type = "backup_corrupt"

    def __init__(self, message: str, *, problems: list[str]):
        super().__init__(message, fields={"backup": problems})
        self.problems = problems


# --- files ---------------------------------------------------------------------------------


def _stream_digest(handle: IO[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := handle.read(CHUNK_SIZE):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _file_digest(path: Path) -> tuple[str, int]:
    with open(path, "rb") as handle:
        return _stream_digest(handle)


def _slot_tag(slot: str) -> str:
    """A file-name-safe name for the slot; the hash keeps "a/b" and "a_b" (or "x" and "y-x")
    apart, so cleaning up one slot's leftovers can never touch another's."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", slot)[:60]
    return f"{readable}-{hashlib.sha256(slot.encode()).hexdigest()[:10]}"


def backup_root() -> Path:
    """The local working folder: backups are assembled here before they are stored, and on
    SQLite the slot locks live here. Not where backups are kept (that is the backup storage)."""
    return Path(settings.BACKUP_DIR)


@dataclass(frozen=True)
class BackupLocation:
    """One backup's folder: `name` in `storage` (the backup storage, or a local folder holding
    an off-site copy). Every file is read through the storage API."""

    storage: Storage
    name: str

    def file(self, filename: str) -> str:
        return f"{self.name}/{filename}"

    def exists(self, filename: str) -> bool:
        return self.storage.exists(self.file(filename))

    def open(self, filename: str) -> IO[bytes]:
        return self.storage.open(self.file(filename), "rb")

    def __str__(self) -> str:
        try:
            return self.storage.path(self.name)
        except NotImplementedError:
            bucket = getattr(self.storage, "bucket_name", None)
            if bucket is None:
                return f"{type(self.storage).__name__}:{self.name}"
            prefix = str(getattr(self.storage, "location", "")).strip("/")
            return f"s3://{bucket}/{prefix + '/' if prefix else ''}{self.name}"


def backup_location(backup: Backup) -> BackupLocation:
    """Where a catalogued backup's files are, in the backup storage."""
    if not backup.path:
        raise BackupError(f"Backup {backup.pk} has no files (status {backup.status}).")
    return BackupLocation(get_backup_storage(), backup.path)


def backup_directory(backup: Backup) -> Path:
    """A catalogued backup's folder on this machine, for a backup storage that is a local
    folder (operators copying it off-site; tests). NotImplementedError on an object store."""
    return Path(get_backup_storage().path(backup_location(backup).name))


def _as_location(source: BackupLocation | Path | str) -> BackupLocation:
    if isinstance(source, BackupLocation):
        return source
    path = Path(source).resolve()
    return BackupLocation(FileSystemStorage(location=str(path.parent)), path.name)


def _in_backup_store(location: BackupLocation) -> bool:
    store = get_backup_storage()
    if location.storage is store:
        return True
    try:
        return Path(location.storage.path(location.name)).parent == Path(store.path("")).resolve()
    except NotImplementedError:
        return False


def _location_digest(location: BackupLocation, filename: str) -> tuple[str, int]:
    with location.open(filename) as handle:
        return _stream_digest(handle)


def _location_fetch(location: BackupLocation, filename: str, target: Path) -> tuple[str, int]:
    """Copies one backup file to a local `target` (tar and pg_restore need a seekable local
    file); returns its sha256 and size as copied."""
    digest = hashlib.sha256()
    size = 0
    with location.open(filename) as source, open(target, "wb") as out:
        while chunk := source.read(CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return digest.hexdigest(), size


def _spool_directory(prefix: str) -> Path:
    root = backup_root()
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=root, prefix=prefix))


def _actor_name(actor: AbstractBaseUser | str) -> str:
    return actor if isinstance(actor, str) else actor.get_username()


def applied_migrations() -> list[str]:
    """Every migration applied to the database, as "app.name", sorted."""
    return sorted(
        f"{app}.{name}" for app, name in MigrationRecorder(connection).applied_migrations()
    )


def registry_row_counts() -> dict[str, int]:
    """Rows per table of the registry apps, keyed by model label (`mlregistry.modelversion`)."""
    counts: dict[str, int] = {}
    for label in COUNTED_APPS:
        for model in apps.get_app_config(label).get_models():
            if label == "auth" and model._meta.model_name != "user":
                continue
            counts[model._meta.label_lower] = model._base_manager.count()
    return dict(sorted(counts.items()))


def database_has_schema() -> bool:
    """Whether migrations have created this app's tables: false for a new, empty database."""
    return Backup._meta.db_table in connection.introspection.table_names()


def _schema_create(migrations: list[str]) -> None:
    """Migrates an empty database to the schema the backup was taken with (its applied
    migrations, as far as this code knows them), so restoring replaces every table and none
    from later migrations is left behind without its record."""
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    graph = executor.loader.graph
    wanted = {tuple(name.split(".", 1)) for name in migrations} & set(graph.nodes)
    targets = [
        node
        for node in wanted
        if not any(
            other != node and other[0] == node[0] and node in graph.forwards_plan(other)
            for other in wanted
        )
    ]
    if not targets:
        # A manifest without its migrations (or none known here): the whole current schema.
        targets = executor.loader.graph.leaf_nodes()
    executor.migrate(targets)


def _schema_complete() -> None:
    """Applies what this code adds to a restored schema, and Django's post-migrate rows."""
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)


# --- database dump and restore ---------------------------------------------------------


def _pg_binary(name: str) -> str:
    """pg_dump/pg_restore of the server's major version: an older client refuses a newer server."""
    if settings.PG_BIN_DIR:
        return str(Path(settings.PG_BIN_DIR) / name)
    connection.ensure_connection()
    major = connection.pg_version // 10000
    candidate = Path(f"/usr/lib/postgresql/{major}/bin/{name}")
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise BackupError(f"{name} not found: install the PostgreSQL {major} client tools.")
    return found


def _pg_command(binary: str, *args: str) -> list[str]:
    db = settings.DATABASES["default"]
    command = [_pg_binary(binary), "--no-password"]
    if db.get("HOST"):
        command += ["--host", str(db["HOST"])]
    if db.get("PORT"):
        command += ["--port", str(db["PORT"])]
    if db.get("USER"):
        command += ["--username", str(db["USER"])]
    return [*command, *args, "--dbname", str(db["NAME"])]


_PG_ENV_OPTIONS = {
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "connect_timeout": "PGCONNECT_TIMEOUT",
}


def _pg_run(command: list[str]) -> None:
    env = dict(os.environ)
    db = settings.DATABASES["default"]
    if db.get("PASSWORD"):
        env["PGPASSWORD"] = str(db["PASSWORD"])  # never on the command line, where ps shows it
    for option, variable in _PG_ENV_OPTIONS.items():
        # `?sslmode=require` in DATABASE_URL must hold for pg_dump's connection too.
        if db.get("OPTIONS", {}).get(option):
            env[variable] = str(db["OPTIONS"][option])
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    except FileNotFoundError:
        raise BackupError(f"{command[0]} not found: check PG_BIN_DIR.") from None
    if result.returncode != 0:
        raise BackupError(f"{Path(command[0]).name} failed: {result.stderr.strip()[-2000:]}")


def _database_dump(target: Path) -> None:
    if connection.vendor == "postgresql":
        _pg_run(_pg_command("pg_dump", "--format=custom", "--no-owner", "--file", str(target)))
    elif connection.vendor == "sqlite":
        connection.ensure_connection()
        destination = sqlite3.connect(target)
        try:
            # The online backup API copies a consistent snapshot while others keep writing.
            connection.connection.backup(destination)
        finally:
            destination.close()
    else:
        raise BackupError(f"Backups of a {connection.vendor} database are not supported.")


def _database_restore(source: Path, vendor: str) -> None:
    if vendor != connection.vendor:
        raise BackupError(
            f"This backup holds a {vendor} database; the configured one is {connection.vendor}."
        )
    if vendor == "postgresql":
        # Our own session must not hold locks on the tables pg_restore is about to drop.
        connection.close()
        _pg_run(
            _pg_command(
                "pg_restore",
                "--clean",
                "--if-exists",
                "--no-owner",
                "--no-privileges",
                "--single-transaction",
                "--exit-on-error",
                str(source),
            )
        )
        connection.close()
    else:
        connection.ensure_connection()
        backup_db = sqlite3.connect(source)
        try:
            # Copying into the live connection (rather than the file) also works for an
            # in-memory database and leaves no other connection reading a half-copied file.
            backup_db.backup(connection.connection)
        finally:
            backup_db.close()


# --- artifacts archive -------------------------------------------------------------------------


def _artifact_files(root: Path) -> Iterator[tuple[str, Path]]:
    """Files of a local folder (an extracted archive), by name relative to it."""
    if not root.exists():
        return
    for path in sorted(root.rglob("*")):
        # Links are never followed into a restore.
        if path.is_symlink() or not path.is_file() or path.name.startswith(TEMPORARY_PREFIX):
            continue
        yield path.relative_to(root).as_posix(), path


def _artifacts_archive_write(target: Path) -> dict[str, dict[str, Any]]:
    """Tars every file of the artifact storage into `target`, read through the storage API."""
    storage = get_artifact_storage()
    entries: dict[str, dict[str, Any]] = {}
    # Level 1: skops and joblib files are mostly compressed already; more would only cost time.
    with tarfile.open(target, "w:gz", compresslevel=1) as tar:
        for name in storage_walk(storage):
            # Spooled first: a tar header needs the size before the bytes, and an object store's
            # size may change under us (a re-upload); the hash is of exactly what is archived.
            with tempfile.TemporaryFile(dir=target.parent) as spool:
                try:
                    with storage.open(name, "rb") as handle:
                        digest = hashlib.sha256()
                        size = 0
                        while chunk := handle.read(CHUNK_SIZE):
                            digest.update(chunk)
                            size += len(chunk)
                            spool.write(chunk)
                except FileNotFoundError:
                    continue  # deleted (swept, discarded) since it was listed
                spool.seek(0)
                info = tarfile.TarInfo(name)
                info.size = size
                info.mode = 0o644
                info.mtime = int(timezone.now().timestamp())
                tar.addfile(info, spool)
            entries[name] = {"sha256": digest.hexdigest(), "size": size}
    return entries


def archive_member_problem(member: tarfile.TarInfo) -> str | None:
    """Why a tar member may not be extracted (absolute, `..`, link, device), or None."""
    name = member.name
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return f"{name}: absolute path"
    if ".." in path.parts or ".." in name.split("\\"):
        return f"{name}: path escapes the archive (..)"
    if not (member.isfile() or member.isdir()):
        return f"{name}: not a regular file (links and devices are refused)"
    return None


def _archive_check(archive: Path, expected: dict[str, dict[str, Any]]) -> list[str]:
    # Sizes and ratios first: a small archive may inflate to fill the disk on extraction.
    # Backups hold every artifact, so only the per-member limit and the ratio bound them.
    try:
        tar_check(
            archive,
            what=ARTIFACTS_ARCHIVE,
            field="backup",
            limits=ArchiveLimits.from_settings(max_total_size=None),
        )
    except ArchiveError as exc:
        return [exc.message]
    problems: list[str] = []
    seen: set[str] = set()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                problem = archive_member_problem(member)
                if problem:
                    problems.append(f"{ARTIFACTS_ARCHIVE}: {problem}")
                    continue
                if member.isdir():
                    continue
                sha256, _ = _stream_digest(tar.extractfile(member))
                seen.add(member.name)
                want = expected.get(member.name)
                if want is None:
                    problems.append(f"{ARTIFACTS_ARCHIVE}: {member.name} is not in the manifest")
                elif sha256 != want["sha256"]:
                    problems.append(f"{ARTIFACTS_ARCHIVE}: {member.name} sha256 mismatch")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        return [f"{ARTIFACTS_ARCHIVE}: unreadable ({type(exc).__name__}: {exc})"]
    problems += [f"{ARTIFACTS_ARCHIVE}: {name} missing" for name in sorted(set(expected) - seen)]
    return problems


def _artifacts_extract(archive: Path, staging: Path) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        problems = [p for p in map(archive_member_problem, members) if p]
        if problems:
            raise BackupCorrupt("The artifacts archive has unsafe members.", problems=problems)
        # The "data" filter is a second guard: it too refuses links, devices and escapes.
        tar.extractall(staging, members=members, filter="data")


# --- create and verify ---------------------------------------------------------------------


@contextmanager
def _slot_lock(slot: str, *, using: BaseDatabaseWrapper | None = None) -> Iterator[bool]:
    """Holds a lock on the slot that dies with its holder, so a killed worker never blocks it.

    PostgreSQL: a session advisory lock (released when the connection drops). SQLite: an
    flock on a file in BACKUP_DIR (released when the process exits); SQLite is one machine.
    """
    using = using or connection
    if using.vendor == "postgresql":
        digest = hashlib.sha256(f"mlregistry-backup:{slot}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        with using.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
            acquired = bool(cursor.fetchone()[0])
        try:
            yield acquired
        finally:
            if acquired:
                with using.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
        return
    lock_dir = backup_root() / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_dir / f"{_slot_tag(slot)}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            acquired = True
        except BlockingIOError:
            acquired = False
        yield acquired
    finally:
        os.close(fd)


# How the reaper's reason for failing a job starts (how a slot tells a death from a failure).
REAPED_REASON = "The worker running this job stopped"


def _backup_claim(*, slot: str, actor: str, now: datetime) -> Backup:
    try:
        with transaction.atomic():
            return Backup.objects.create(
                slot=slot, actor=actor, started_at=now, heartbeat_at=timezone.now()
            )
    except IntegrityError:
        backup = Backup.objects.get(slot=slot)
    died = backup.status == BackupStatus.RUNNING or (
        backup.status == BackupStatus.FAILED and backup.error.startswith(REAPED_REASON)
    )
    if died and backup.attempts >= settings.JOB_MAX_ATTEMPTS:
        # Every earlier attempt died mid-run (a backup that kills its worker is redelivered at
        # once, or after the reaper failed it): failed, or it would run, die and say "running"
        # for ever. Announced once: a row the reaper failed was announced then. A backup that
        # failed by itself (a full disk) is tried again as before.
        error = (
            f"The backup started {backup.attempts} times without finishing: its worker stopped "
            "during each run (out of memory?). Not started again (JOB_MAX_ATTEMPTS)."
        )
        if backup.status == BackupStatus.RUNNING:
            with transaction.atomic():
                backup.status = BackupStatus.FAILED
                backup.error = error
                backup.finished_at = now
                backup.save(update_fields=["status", "error", "finished_at"])
                backup_failed_publish(backup)
            logger.error("backup failed: its worker keeps dying", extra={"slot": slot})
        raise BackupError(error)
    if backup.status != BackupStatus.VERIFIED:
        # Holding the slot lock, a row still "running" (or failed by the reaper) belongs to an
        # attempt that died: this attempt takes the slot over rather than adding a second one.
        backup.status = BackupStatus.RUNNING
        backup.attempts += 1
        backup.error = ""
        backup.started_at = now
        backup.finished_at = None
        backup.heartbeat_at = timezone.now()
        backup.save(
            update_fields=[
                "status",
                "attempts",
                "error",
                "started_at",
                "finished_at",
                "heartbeat_at",
            ]
        )
    return backup


def _stale_attempts_remove(root: Path, slot: str) -> None:
    """What a killed attempt of this slot left: its local spool folder, or a stored folder
    whose row was never updated."""
    tag = _slot_tag(slot)
    for path in root.glob(f".tmp-{tag}-*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
    storage = get_backup_storage()
    try:
        folders, _ = storage.listdir("")
    except FileNotFoundError:
        return
    for folder in folders:
        if folder.endswith(f"-{tag}") and not folder.startswith("."):
            storage_delete_folder(storage, folder)


def _backup_store(staging: Path, name: str, filenames: list[str]) -> None:
    """Stores the spooled files as folder `name` of the backup storage, the manifest last."""
    storage = get_backup_storage()
    for filename in filenames:
        with open(staging / filename, "rb") as handle:
            stored = storage.save(f"{name}/{filename}", File(handle, name=filename))
        if stored != f"{name}/{filename}":
            raise BackupError(f"The backup storage renamed {name}/{filename} to {stored}.")


def _backup_write(backup: Backup) -> None:
    root = backup_root()
    root.mkdir(parents=True, exist_ok=True)
    name = f"{backup.started_at:%Y%m%dT%H%M%SZ}-{_slot_tag(backup.slot)}"
    _stale_attempts_remove(root, backup.slot)
    staging = _spool_directory(f".tmp-{_slot_tag(backup.slot)}-")
    try:
        vendor = connection.vendor
        row_counts = registry_row_counts()
        database_file = staging / DATABASE_FILES.get(vendor, "database")
        _database_dump(database_file)
        artifacts = _artifacts_archive_write(staging / ARTIFACTS_ARCHIVE)
        files = {}
        for path in (database_file, staging / ARTIFACTS_ARCHIVE):
            sha256, size = _file_digest(path)
            files[path.name] = {"sha256": sha256, "size": size}
        manifest = {
            "format": FORMAT_VERSION,
            "slot": backup.slot,
            "created_at": backup.started_at.isoformat(),
            "database": {"vendor": vendor, "file": database_file.name},
            "files": files,
            "artifacts": artifacts,
            "row_counts": row_counts,
            "migrations": applied_migrations(),
        }
        manifest_path = staging / MANIFEST_NAME
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        _backup_store(staging, name, [*files, MANIFEST_NAME])
        manifest_sha256 = _file_digest(manifest_path)[0]
    except BaseException:
        storage_delete_folder(get_backup_storage(), name)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    backup.path = name
    backup.database_vendor = vendor
    backup.database_size = files[database_file.name]["size"]
    backup.artifacts_size = files[ARTIFACTS_ARCHIVE]["size"]
    backup.artifact_count = len(artifacts)
    backup.checksums = {file_name: entry["sha256"] for file_name, entry in files.items()}
    backup.row_counts = row_counts
    backup.manifest_sha256 = manifest_sha256
    backup.finished_at = timezone.now()
    # Named fields: a full save would put back the heartbeat this object was loaded with.
    backup.save(
        update_fields=[
            "path",
            "database_vendor",
            "database_size",
            "artifacts_size",
            "artifact_count",
            "checksums",
            "row_counts",
            "manifest_sha256",
            "finished_at",
        ]
    )


# What a backup.failed event says of the backup (webhooks).
_EVENT_FIELDS = ("slot", "status", "error", "actor", "attempts", "started_at", "finished_at")


def backup_failed_publish(backup: Backup) -> None:
    """Announces a failed backup (`backup.failed`, data: the backup's id and _EVENT_FIELDS):
    from its own failure path, and from the reaper when its worker died."""
    event_publish("backup.failed", data={"id": backup.pk, **fields_snapshot(backup, _EVENT_FIELDS)})


def backup_create(
    *, slot: str | None = None, actor: AbstractBaseUser | str, now: datetime | None = None
) -> Backup:
    """Writes and verifies one backup; a slot that already has a verified backup returns it."""
    if connection.in_atomic_block:
        # pg_dump would not see this transaction's rows; SQLite's backup would wait on it.
        raise BackupError("A backup must run outside a transaction.")
    if not database_has_schema():
        raise BackupError(
            "The database has no tables: nothing to back up (run migrate, or restore_backup "
            "PATH --yes to bring one back)."
        )
    now = now or timezone.now()
    slot = slot or f"manual-{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    with _slot_lock(slot) as acquired:
        if not acquired:
            raise BackupInProgress(f"A backup for slot {slot!r} is running in another process.")
        backup = _backup_claim(slot=slot, actor=_actor_name(actor), now=now)
        if backup.status == BackupStatus.VERIFIED:
            logger.info("backup slot already done", extra={"slot": slot, "backup": backup.pk})
            return backup
        with job_heartbeat(backup):
            try:
                _backup_write(backup)
            except Exception as exc:
                backup.status = BackupStatus.FAILED
                backup.error = f"{type(exc).__name__}: {exc}"[:5000]
                backup.finished_at = timezone.now()
                with transaction.atomic():
                    # Only a row still running: one the reaper failed meanwhile (its worker
                    # was stalled, not dead) keeps that end, announced once.
                    if (
                        Backup.objects.filter(pk=backup.pk, status=BackupStatus.RUNNING).update(
                            status=backup.status, error=backup.error, finished_at=backup.finished_at
                        )
                        == 1
                    ):
                        backup_failed_publish(backup)
                raise
            backup_verify(backup=backup)
    return backup


def _verify_directory(
    location: BackupLocation, *, manifest_sha256: str = ""
) -> tuple[dict, list[str]]:
    if not location.exists(MANIFEST_NAME):
        return {}, [f"{MANIFEST_NAME} missing in {location}"]
    with location.open(MANIFEST_NAME) as handle:
        manifest_bytes = handle.read()
    if manifest_sha256 and hashlib.sha256(manifest_bytes).hexdigest() != manifest_sha256:
        return {}, [f"{MANIFEST_NAME}: sha256 differs from the one recorded at backup time"]
    try:
        manifest = json.loads(manifest_bytes)
        files = manifest["files"]
        artifacts = manifest["artifacts"]
        if not manifest["database"]["vendor"]:
            raise ValueError("no database vendor")
    except (ValueError, KeyError, TypeError) as exc:
        return {}, [f"{MANIFEST_NAME}: unreadable ({type(exc).__name__}: {exc})"]
    problems = []
    spool = _spool_directory(".tmp-verify-")
    try:
        for name, expected in sorted(files.items()):
            if (
                PurePosixPath(name).name != name
                or name.startswith(".")
                or not location.exists(name)
            ):
                problems.append(f"{name}: missing")
                continue
            if name == ARTIFACTS_ARCHIVE:
                sha256, size = _location_fetch(location, name, spool / name)
            else:
                sha256, size = _location_digest(location, name)
            if size != expected["size"]:
                problems.append(f"{name}: size {size} != {expected['size']}")
            if sha256 != expected["sha256"]:
                problems.append(f"{name}: sha256 mismatch")
        if ARTIFACTS_ARCHIVE in files and not problems:
            problems += _archive_check(spool / ARTIFACTS_ARCHIVE, artifacts)
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    return manifest, problems


def backup_verify(
    *, backup: Backup | None = None, path: BackupLocation | Path | str | None = None
) -> dict[str, Any]:
    """Re-reads every checksum of a backup (the row's folder in the backup storage, else
    `path`: a location, or a local folder); returns its manifest or raises BackupCorrupt."""
    if backup is None and path is None:
        raise BackupError("Name a backup or a path to verify.")
    location = backup_location(backup) if backup is not None else _as_location(path)
    manifest, problems = _verify_directory(
        location, manifest_sha256=backup.manifest_sha256 if backup is not None else ""
    )
    if backup is not None:
        backup.status = BackupStatus.CORRUPT if problems else BackupStatus.VERIFIED
        # When it was last found intact: a backup that fails a later check is not verified.
        backup.verified_at = None if problems else timezone.now()
        backup.error = "\n".join(problems)[:5000]
        backup.save(update_fields=["status", "verified_at", "error"])
    if problems:
        logger.error("backup verification failed", extra={"path": str(location)})
        raise BackupCorrupt(
            f"Backup {location.name} failed verification: {len(problems)} problem(s).",
            problems=problems,
        )
    return manifest


def backup_resolve(reference: str) -> tuple[Backup | None, BackupLocation]:
    """A backup named by id, by folder name in the backup storage, by its location there as
    backup_create prints it (`s3://bucket/prefix/folder`), or by a local folder or manifest
    path (an off-site copy); the row too when the catalogue knows the folder."""
    has_schema = database_has_schema()
    if "://" in reference:
        root = str(BackupLocation(get_backup_storage(), ""))
        if "://" not in root or not reference.startswith(root):
            raise NotFoundError(f"No backup folder at {reference}: the backup storage is {root}.")
        reference = reference[len(root) :].strip("/") or reference
    if reference.isdigit():
        if not has_schema:
            raise NotFoundError(
                f"The database has no tables yet, so no backup has the id {reference}: name "
                "the backup's folder instead."
            )
        backup = Backup.objects.filter(pk=int(reference)).first()
        if backup is None:
            raise NotFoundError(f"No backup with id {reference}.")
        return backup, backup_location(backup)
    path = Path(reference)
    if path.name == MANIFEST_NAME:
        path = path.parent
    stored = BackupLocation(get_backup_storage(), path.name)
    if path.is_dir():
        location = _as_location(path)
        if _in_backup_store(location):
            location = stored
    elif reference == path.name and not path.name.startswith(".") and stored.exists(MANIFEST_NAME):
        location = stored
    else:
        raise NotFoundError(f"No backup folder at {reference}.")
    backup = None
    if has_schema and location.storage is stored.storage:
        backup = Backup.objects.filter(path=location.name).first()
    return backup, location


# --- restore -------------------------------------------------------------------------------------


@dataclass
class RestorePlan:
    directory: BackupLocation
    manifest: dict[str, Any]
    current_counts: dict[str, int]
    current_artifacts: int
    current_migrations: list[str] = field(default_factory=list)
    # False for a new database without tables: the restore creates the schema first.
    has_schema: bool = True

    @property
    def backup_counts(self) -> dict[str, int]:
        return self.manifest["row_counts"]

    @property
    def database_is_empty(self) -> bool:
        return not any(self.current_counts.values()) and not self.current_artifacts

    def describe(self) -> list[str]:
        lines = [
            f"Backup {self.directory.name} ({self.manifest['database']['vendor']}, "
            f"taken {self.manifest['created_at']}): checksums verified.",
            f"Artifacts: {self.current_artifacts} file(s) in the artifact storage "
            f"replaced by {len(self.manifest['artifacts'])} from the backup.",
            "Tables (now -> after restore):",
        ]
        for label in sorted(set(self.current_counts) | set(self.backup_counts)):
            lines.append(
                f"  {label}: {self.current_counts.get(label, 0)} -> "
                f"{self.backup_counts.get(label, 0)}"
            )
        return lines + self.schema_warnings()

    def schema_warnings(self) -> list[str]:
        """What differs between the backup's migrations and this database's."""
        if not self.has_schema:
            return [
                "The database has no tables: the restore creates the backup's schema first "
                "(migrate), restores into it, then applies this code's later migrations."
            ]
        backup = set(self.manifest.get("migrations", []))
        current = set(self.current_migrations)
        warnings = []
        if backup - current:
            warnings.append(
                "Warning: the backup was taken by newer code (migrations unknown here: "
                f"{', '.join(sorted(backup - current)[:5])}); deploy that version first."
            )
        if current - backup:
            warnings.append(
                "Note: the backup predates migrations applied here; run `manage.py migrate` "
                "after the restore."
            )
        return warnings


@dataclass
class RestoreResult:
    manifest: dict[str, Any]
    row_counts: dict[str, int]
    mismatches: list[str] = field(default_factory=list)


def restore_plan(*, directory: BackupLocation | Path, backup: Backup | None = None) -> RestorePlan:
    """Verifies the backup and says what a restore would replace; changes nothing."""
    location = _as_location(directory)
    manifest = backup_verify(path=location) if backup is None else backup_verify(backup=backup)
    current_artifacts = sum(1 for _ in storage_walk(get_artifact_storage()))
    has_schema = database_has_schema()
    return RestorePlan(
        location,
        manifest,
        registry_row_counts() if has_schema else {},
        current_artifacts,
        applied_migrations(),
        has_schema=has_schema,
    )


def backup_restore(
    *, directory: BackupLocation | Path, actor: AbstractBaseUser | str, backup: Backup | None = None
) -> RestoreResult:
    """Replaces the database and the artifact storage's files with a verified backup's contents.

    Into a database without tables (disaster recovery) it first creates the backup's schema,
    and afterwards applies this code's later migrations. Either way the backup catalogue keeps
    its rows and lists the backup restored from (BackupError, BackupCorrupt otherwise). The
    artifacts go into whatever storage is configured now, whichever the backup came from.
    """
    if connection.in_atomic_block:
        raise BackupError("A restore replaces whole tables; it cannot run inside a transaction.")
    plan = restore_plan(directory=directory, backup=backup)
    location = plan.directory
    manifest = plan.manifest
    if not plan.has_schema:
        _schema_create(manifest.get("migrations", []))
    staging = _spool_directory(".tmp-restore-")
    try:
        database_file = manifest["database"]["file"]
        for filename in (database_file, ARTIFACTS_ARCHIVE):
            sha256, _ = _location_fetch(location, filename, staging / filename)
            if sha256 != manifest["files"][filename]["sha256"]:
                raise BackupCorrupt(
                    "The backup changed while it was restored.", problems=[f"{filename}: sha256"]
                )
        extracted = staging / "artifacts"
        extracted.mkdir()
        _artifacts_extract(staging / ARTIFACTS_ARCHIVE, extracted)
        _, problems = _verify_extracted(extracted, manifest["artifacts"])
        if problems:
            raise BackupCorrupt("Extracted artifacts do not match the manifest.", problems=problems)
        # Files first: content-addressed names only add, so the current database keeps working
        # until its rows are replaced; files the backup lacks go after the database.
        _artifacts_store(extracted)
        # The backup catalogue describes the backup storage, not the registry: it survives.
        catalogue = list(Backup.objects.values())
        _database_restore(staging / database_file, manifest["database"]["vendor"])
        if not plan.has_schema:
            _schema_complete()
        _catalogue_replace(catalogue, source=_catalogue_source_row(location, manifest))
        _artifacts_remove_others(set(manifest["artifacts"]))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _routing_invalidate_all()
    counts = registry_row_counts()
    expected_counts = {
        MOVED_MODEL_LABELS.get(label, label): expected
        for label, expected in manifest["row_counts"].items()
    }
    mismatches = [
        f"{label}: {counts.get(label, 0)} rows, the backup had {expected}"
        for label, expected in expected_counts.items()
        if counts.get(label, 0) != expected
    ]
    logger.warning(
        "backup restored",
        extra={"backup": location.name, "actor": _actor_name(actor), "mismatches": mismatches},
    )
    return RestoreResult(manifest=manifest, row_counts=counts, mismatches=mismatches)


def _artifacts_store(root: Path) -> None:
    """Writes every extracted file into the artifact storage under its name."""
    storage = get_artifact_storage()
    for name, path in _artifact_files(root):
        with open(path, "rb") as handle:
            stored = storage.save(name, File(handle, name=PurePosixPath(name).name))
        if stored != name:
            raise BackupError(f"The artifact storage renamed {name} to {stored}.")


def _artifacts_remove_others(keep: set[str]) -> None:
    """Deletes the artifact storage's files the restored backup does not hold."""
    storage = get_artifact_storage()
    for name in list(storage_walk(storage)):
        if name not in keep:
            storage.delete(name)


def _verify_extracted(root: Path, expected: dict[str, dict[str, Any]]) -> tuple[int, list[str]]:
    found = dict(_artifact_files(root))
    problems = [f"{name}: missing after extraction" for name in expected if name not in found]
    for name, path in found.items():
        want = expected.get(name)
        if want is None or _file_digest(path)[0] != want["sha256"]:
            problems.append(f"{name}: not the file the manifest lists")
    return len(found), problems


def _catalogue_source_row(location: BackupLocation, manifest: dict[str, Any]) -> dict[str, Any]:
    """The catalogue row of the backup being restored, as its verified files describe it.

    A folder outside the backup storage (a copy brought back from off-site) is copied in
    first, so the row names a folder that retention, verification and the next restore find.
    """
    store = get_backup_storage()
    with location.open(MANIFEST_NAME) as handle:
        manifest_sha256 = hashlib.sha256(handle.read()).hexdigest()
    name = location.name
    if not _in_backup_store(location):
        target = BackupLocation(store, name)
        same = target.exists(MANIFEST_NAME) and (
            _location_digest(target, MANIFEST_NAME)[0] == manifest_sha256
        )
        if not same:
            if target.exists(MANIFEST_NAME) or any(storage_walk(store, name)):
                name = f"{location.name}-restored-{uuid.uuid4().hex[:8]}"
            spool = _spool_directory(".tmp-copy-")
            try:
                filenames = [*manifest["files"], MANIFEST_NAME]
                for filename in filenames:
                    _location_fetch(location, filename, spool / filename)
                _backup_store(spool, name, filenames)
            finally:
                shutil.rmtree(spool, ignore_errors=True)
    files = manifest["files"]
    database_file = manifest["database"]["file"]
    now = timezone.now()
    created_at = datetime.fromisoformat(manifest["created_at"])
    return {
        "slot": manifest.get("slot") or f"restored-{name}",
        "status": BackupStatus.VERIFIED,
        "path": name,
        "database_vendor": manifest["database"]["vendor"],
        "database_size": files.get(database_file, {}).get("size", 0),
        "artifacts_size": files.get(ARTIFACTS_ARCHIVE, {}).get("size", 0),
        "artifact_count": len(manifest["artifacts"]),
        "manifest_sha256": manifest_sha256,
        "checksums": {name: entry["sha256"] for name, entry in files.items()},
        "row_counts": manifest["row_counts"],
        "started_at": created_at,
        "verified_at": now,
        "error": "",
    }


def _catalogue_replace(rows: list[dict[str, Any]], *, source: dict[str, Any]) -> None:
    """Puts back the catalogue as it was before the restore, adds the restored database's rows
    of other backups whose folders are here (after disaster recovery, the history), registers
    the backup restored from under the id it had, and never lets ids go back."""
    store = get_backup_storage()
    restored = {row["slot"]: row for row in Backup.objects.values()}
    floor = max([row["id"] for row in [*rows, *restored.values()]] + [_id_sequence_value(Backup)])
    merged = {row["slot"]: row for row in rows}
    taken_ids = {row["id"] for row in rows}
    for slot, row in restored.items():
        present = slot == source["slot"] or (
            row["path"] and BackupLocation(store, row["path"]).exists(MANIFEST_NAME)
        )
        if present and slot not in merged and row["id"] not in taken_ids:
            merged[slot] = row
            taken_ids.add(row["id"])
    # The dump was taken while its own row said "running", without files: now it is known.
    own = merged.get(source["slot"])
    if own is not None:
        finished_at = own["finished_at"] or source["started_at"]
        own.update(source, actor=own["actor"], finished_at=finished_at)
    else:
        merged[source["slot"]] = {**source, "actor": "restore", "finished_at": source["started_at"]}
    with transaction.atomic():
        Backup.objects.all().delete()
        Backup.objects.bulk_create(Backup(**row) for row in merged.values() if "id" in row)
        _id_sequence_move_past(Backup, floor)
        Backup.objects.bulk_create(Backup(**row) for row in merged.values() if "id" not in row)


def _id_sequence_value(model: type[Backup]) -> int:
    """The last id PostgreSQL's sequence handed out (0 elsewhere: SQLite's AUTOINCREMENT
    counter is restored with the file and never goes back by itself)."""
    if connection.vendor != "postgresql":
        return 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [model._meta.db_table])
        (sequence,) = cursor.fetchone()
        cursor.execute(f"SELECT last_value FROM {sequence}")  # noqa: S608 - a name Postgres gave
        return int(cursor.fetchone()[0])


def _id_sequence_move_past(model: type[Backup], floor: int) -> None:
    """Makes the next id larger than `floor` and than every row's."""
    if connection.vendor != "postgresql":
        with connection.cursor() as cursor:
            for sql in connection.ops.sequence_reset_sql(no_style(), [model]):
                cursor.execute(sql)
        return
    table = connection.ops.quote_name(model._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT setval(pg_get_serial_sequence(%s, 'id'), "  # noqa: S608 - quoted model table
            f"GREATEST(%s, (SELECT COALESCE(MAX(id), 0) FROM {table}), 1))",
            [model._meta.db_table, floor],
        )


def _routing_invalidate_all() -> None:
    from mlregistry.models import RegisteredModel
    from mlregistry.selectors import routing_invalidate

    for name in RegisteredModel.objects.values_list("name", flat=True):
        routing_invalidate(name)


# --- retention ---------------------------------------------------------------------------


def backup_retention_apply(
    *,
    now: datetime | None = None,
    retention_days: int | None = None,
    dry_run: bool = False,
    actor: AbstractBaseUser | str = "job:retention",
) -> list[int]:
    """Deletes backups older than the retention (their files in the backup storage, then their
    rows, each audited as `actor`), never the newest verified one; returns their ids (with
    `dry_run`, the ids it would delete, deleting nothing)."""
    now = now or timezone.now()
    days = retention_days if retention_days is not None else settings.BACKUP_RETENTION_DAYS
    cutoff = now - timedelta(days=days)
    newest_verified = (
        Backup.objects.filter(status=BackupStatus.VERIFIED).order_by("-started_at", "-id").first()
    )
    expired = Backup.objects.filter(started_at__lt=cutoff)
    if newest_verified is not None:
        expired = expired.exclude(pk=newest_verified.pk)
    if dry_run:
        return list(expired.values_list("pk", flat=True))
    deleted = []
    store = get_backup_storage()
    for backup in expired:
        if backup.path and "/" not in backup.path and not backup.path.startswith("."):
            storage_delete_folder(store, backup.path)
        deleted.append(backup.pk)
        with transaction.atomic():
            audit_rows_pruned(actor=actor, model=Backup, ids=[backup.pk])
            backup.delete()
    # Local spool folders of attempts that died before they were cleaned up.
    root = backup_root()
    if root.exists():
        for path in root.glob(".tmp-*"):
            if path.stat().st_mtime < cutoff.timestamp():
                shutil.rmtree(path, ignore_errors=True)
    return deleted


def _newest_job_run_ids() -> set[int]:
    """Ids of the newest run of each job and outcome: the admin's and the metrics' last
    success (and last failure) of every job, however old."""
    ranked = JobRun.objects.annotate(
        rank=Window(
            RowNumber(),
            partition_by=[F("job"), F("outcome")],
            order_by=[F("started_at").desc(), F("id").desc()],
        )
    )
    return set(ranked.filter(rank=1).values_list("id", flat=True))


def _job_run_tally_add(rows: list[tuple[str, str, float]]) -> None:
    """Adds deleted runs (job, outcome, duration) to JobRunTally, in the deleting transaction."""
    per_key: dict[tuple[str, str], list[tuple[str, str, float]]] = defaultdict(list)
    for row in rows:
        per_key[row[0], row[1]].append(row)
    # Sorted, so two prunes lock tally rows in the same order and cannot deadlock.
    for (job, outcome), runs in sorted(per_key.items()):
        created, _ = JobRunTally.objects.get_or_create(job=job, outcome=outcome)
        tally = JobRunTally.objects.select_for_update().get(pk=created.pk)
        tally.runs += len(runs)
        tally.duration_seconds_sum += sum(duration for _, _, duration in runs)
        buckets = dict(tally.duration_buckets)
        for bound in DURATION_BUCKETS:
            within = sum(1 for _, _, duration in runs if duration <= bound)
            buckets[str(bound)] = buckets.get(str(bound), 0) + within
        tally.duration_buckets = buckets
        tally.save(update_fields=["runs", "duration_seconds_sum", "duration_buckets"])


def job_runs_prune(
    *,
    older_than: datetime,
    batch_size: int = 1000,
    dry_run: bool = False,
    actor: AbstractBaseUser | str = "job:retention",
) -> int:
    """Deletes finished job runs started before `older_than`, in batches audited as `actor`,
    except the newest run of each job and outcome; adds them to JobRunTally so /metrics
    counters never go down. Returns how many went (with `dry_run`, how many would, deleting
    nothing)."""
    expired = JobRun.objects.filter(
        started_at__lt=older_than, outcome__in=FINISHED_OUTCOMES
    ).exclude(id__in=_newest_job_run_ids())
    if dry_run:
        return expired.count()
    deleted = 0
    while True:
        ids = list(expired.order_by("id").values_list("id", flat=True)[:batch_size])
        if not ids:
            return deleted
        with transaction.atomic():
            # Locked, so a concurrent prune waits and then finds them gone: each run is
            # tallied exactly once.
            rows = list(
                JobRun.objects.select_for_update()
                .filter(id__in=ids)
                .values_list("id", "job", "outcome", "duration_seconds")
            )
            if rows:
                audit_rows_pruned(actor=actor, model=JobRun, ids=[row[0] for row in rows])
            JobRun.objects.filter(id__in=[row[0] for row in rows]).delete()
            _job_run_tally_add([row[1:] for row in rows])
        deleted += len(rows)


def retention_cleanup_run(
    *, now: datetime | None = None, dry_run: bool = False, actor: str = "job:retention"
) -> dict[str, Any]:
    """The hourly cleanup: runs every prune the apps registered with config.retention (old
    backups and job runs here; prediction logs, drift reports, expired tokens, parked uploads
    and unreferenced artifact files in their apps), each deletion of rows audited as `actor`.
    Returns {prune key: how many or which}.

    With `dry_run` it deletes nothing and reports what it would delete.
    """
    from config.retention import prunes_run

    return prunes_run(now=now or timezone.now(), dry_run=dry_run, actor=actor)


def retention_cleanup_counts(summary: dict[str, Any]) -> dict[str, int]:
    """How many of each kind a cleanup summary holds (its lists of ids or names counted)."""
    return {key: len(value) if isinstance(value, list) else value for key, value in summary.items()}


# --- stalled jobs ----------------------------------------------------------------------------


def _stalled(kind: StalledJobKind, cutoff: datetime):
    model = apps.get_model(kind.model)
    return model._base_manager.filter(
        Q(heartbeat_at__lt=cutoff)
        | Q(heartbeat_at__isnull=True, **{f"{kind.started_field}__lt": cutoff}),
        **{f"{kind.status_field}__in": kind.running},
    )


def stalled_jobs_reap(
    *, actor: AbstractBaseUser | str, now: datetime | None = None, dry_run: bool = False
) -> dict[str, list[int]]:
    """Fails every running job (of each kind in config.job_heartbeats.STALLED_JOB_KINDS) whose
    heartbeat is older than JOB_STALLED_AFTER_SECONDS: the worker running it is gone. Returns
    their ids by kind (with `dry_run`, the ids it would fail, changing nothing).

    Each row is failed by a conditional update, so a job whose heartbeat comes back in the
    meantime (a worker paused, not dead) is left running.
    """
    now = now or timezone.now()
    stalled_after = settings.JOB_STALLED_AFTER_SECONDS
    cutoff = now - timedelta(seconds=stalled_after)
    reaped: dict[str, list[int]] = {}
    for name, kind in sorted(STALLED_JOB_KINDS.items()):
        candidates = list(
            _stalled(kind, cutoff).values_list(
                "pk", "heartbeat_at", kind.started_field, kind.status_field
            )
        )
        if dry_run:
            reaped[name] = [pk for pk, _, _, _ in candidates]
            continue
        reaped[name] = []
        for pk, heartbeat_at, started_at, status in candidates:
            last = heartbeat_at or started_at
            reason = (
                f"{REAPED_REASON}: no heartbeat since {last:%Y-%m-%d %H:%M:%S} "
                f"UTC (more than {stalled_after} s before {now:%H:%M:%S}); failed by "
                f"{_actor_name(actor)}. {kind.next_run}"
            )
            try:
                updated = _stalled_job_fail(kind, cutoff, pk, status, reason, actor, now)
            except Exception:
                # This job stays running and is tried again next run; the others go on.
                logger.exception("failing a stalled job", extra={"job_kind": name, "job_id": pk})
                continue
            if updated:
                reaped[name].append(pk)
                logger.error(
                    "stalled job failed",
                    extra={"job_kind": name, "job_id": pk, "last_heartbeat": str(last)},
                )
    return reaped


def _stalled_job_fail(
    kind: StalledJobKind,
    cutoff: datetime,
    pk: Any,
    status: str,
    reason: str,
    actor: AbstractBaseUser | str,
    now: datetime,
) -> bool:
    """Fails job `pk` of `kind` if it is still stalled, audits it and runs the kind's
    on_failed, all in one transaction; whether it failed it."""
    with transaction.atomic():
        updated = (
            _stalled(kind, cutoff)
            .filter(pk=pk)
            .update(
                **{
                    kind.status_field: kind.failed,
                    kind.error_field: reason,
                    kind.finished_field: now,
                    **kind.extra,
                }
            )
        )
        if not updated:
            return False
        job = apps.get_model(kind.model)._base_manager.get(pk=pk)
        # Like every state change, with its actor: the job's history says who ended it and
        # why, not only that it stopped.
        audit_record(
            actor=actor,
            verb="fail",
            obj=job,
            changes={
                kind.status_field: [status, kind.failed],
                **{name: ["", value] for name, value in kind.extra.items()},
            },
        )
        if kind.on_failed is not None:
            kind.on_failed(job)
    return True
