"""Backups, their verification, restore and retention: every caller (admin, commands, Celery
tasks) goes through these functions.

A backup is a folder under BACKUP_DIR holding the database dump (pg_dump custom format on
PostgreSQL, SQLite's online backup API on SQLite), a tar of MODEL_STORE_DIR and a
manifest.json with the sha256 and size of every file and the registry's row counts. It is
written under a temporary name, fsynced, renamed into place, then verified by re-reading it.
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
from mlregistry.audit import fields_snapshot

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
ARTIFACTS_ARCHIVE = "artifacts.tar.gz"
DATABASE_FILES = {"postgresql": "database.dump", "sqlite": "database.sqlite3"}
# Apps whose row counts go into the manifest and are compared after a restore.
COUNTED_APPS = ("auth", "mlregistry", "predictions")
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


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _slot_tag(slot: str) -> str:
    """A file-name-safe name for the slot; the hash keeps "a/b" and "a_b" (or "x" and "y-x")
    apart, so cleaning up one slot's leftovers can never touch another's."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", slot)[:60]
    return f"{readable}-{hashlib.sha256(slot.encode()).hexdigest()[:10]}"


def backup_root() -> Path:
    return Path(settings.BACKUP_DIR)


def backup_directory(backup: Backup) -> Path:
    if not backup.path:
        raise BackupError(f"Backup {backup.pk} has no files (status {backup.status}).")
    return backup_root() / backup.path


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
    if not root.exists():
        return
    for path in sorted(root.rglob("*")):
        # Temporary files are uploads in flight; links are never followed into a backup.
        if path.is_symlink() or not path.is_file() or path.name.startswith(".tmp-"):
            continue
        yield path.relative_to(root).as_posix(), path


def _artifacts_archive_write(target: Path) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    # Level 1: skops and joblib files are mostly compressed already; more would only cost time.
    with tarfile.open(target, "w:gz", compresslevel=1) as tar:
        for name, path in _artifact_files(Path(settings.MODEL_STORE_DIR)):
            sha256, size = _file_digest(path)
            entries[name] = {"sha256": sha256, "size": size}
            tar.add(path, arcname=name, recursive=False)
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


def _backup_claim(*, slot: str, actor: str, now: datetime) -> Backup:
    try:
        with transaction.atomic():
            return Backup.objects.create(
                slot=slot, actor=actor, started_at=now, heartbeat_at=timezone.now()
            )
    except IntegrityError:
        backup = Backup.objects.get(slot=slot)
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
    """Folders a killed attempt of this slot left: its staging folder, or a renamed folder
    whose row was never updated."""
    tag = _slot_tag(slot)
    for path in [*root.glob(f".tmp-{tag}-*"), *root.glob(f"*-{tag}")]:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def _backup_write(backup: Backup) -> None:
    root = backup_root()
    root.mkdir(parents=True, exist_ok=True)
    name = f"{backup.started_at:%Y%m%dT%H%M%SZ}-{_slot_tag(backup.slot)}"
    _stale_attempts_remove(root, backup.slot)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{_slot_tag(backup.slot)}-"))
    try:
        vendor = connection.vendor
        row_counts = registry_row_counts()
        database_file = staging / DATABASE_FILES.get(vendor, "database")
        _database_dump(database_file)
        artifacts = _artifacts_archive_write(staging / ARTIFACTS_ARCHIVE)
        files = {}
        for path in (database_file, staging / ARTIFACTS_ARCHIVE):
            _fsync_path(path)
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
        _fsync_path(manifest_path)
        _fsync_path(staging)
        os.chmod(staging, 0o700)
        os.rename(staging, root / name)
        _fsync_path(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    backup.path = name
    backup.database_vendor = vendor
    backup.database_size = files[database_file.name]["size"]
    backup.artifacts_size = files[ARTIFACTS_ARCHIVE]["size"]
    backup.artifact_count = len(artifacts)
    backup.checksums = {file_name: entry["sha256"] for file_name, entry in files.items()}
    backup.row_counts = row_counts
    backup.manifest_sha256 = _file_digest(root / name / MANIFEST_NAME)[0]
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
                backup.save(update_fields=["status", "error", "finished_at"])
                event_publish(
                    "backup.failed",
                    data={"id": backup.pk, **fields_snapshot(backup, _EVENT_FIELDS)},
                )
                raise
            backup_verify(backup=backup)
    return backup


def _verify_directory(directory: Path, *, manifest_sha256: str = "") -> tuple[dict, list[str]]:
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        return {}, [f"{MANIFEST_NAME} missing in {directory}"]
    if manifest_sha256 and _file_digest(manifest_path)[0] != manifest_sha256:
        return {}, [f"{MANIFEST_NAME}: sha256 differs from the one recorded at backup time"]
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        artifacts = manifest["artifacts"]
        if not manifest["database"]["vendor"]:
            raise ValueError("no database vendor")
    except (ValueError, KeyError, TypeError) as exc:
        return {}, [f"{MANIFEST_NAME}: unreadable ({type(exc).__name__}: {exc})"]
    problems = []
    for name, expected in sorted(files.items()):
        path = directory / name
        if PurePosixPath(name).name != name or not path.is_file():
            problems.append(f"{name}: missing")
            continue
        sha256, size = _file_digest(path)
        if size != expected["size"]:
            problems.append(f"{name}: size {size} != {expected['size']}")
        if sha256 != expected["sha256"]:
            problems.append(f"{name}: sha256 mismatch")
    if ARTIFACTS_ARCHIVE in files and not problems:
        problems += _archive_check(directory / ARTIFACTS_ARCHIVE, artifacts)
    return manifest, problems


def backup_verify(
    *, backup: Backup | None = None, path: Path | str | None = None
) -> dict[str, Any]:
    """Re-reads every checksum of a backup (the row's folder, else `path`); returns its
    manifest or raises BackupCorrupt."""
    if backup is None and path is None:
        raise BackupError("Name a backup or a path to verify.")
    directory = backup_directory(backup) if backup is not None else Path(path)
    manifest, problems = _verify_directory(
        directory, manifest_sha256=backup.manifest_sha256 if backup is not None else ""
    )
    if backup is not None:
        backup.status = BackupStatus.CORRUPT if problems else BackupStatus.VERIFIED
        # When it was last found intact: a backup that fails a later check is not verified.
        backup.verified_at = None if problems else timezone.now()
        backup.error = "\n".join(problems)[:5000]
        backup.save(update_fields=["status", "verified_at", "error"])
    if problems:
        logger.error("backup verification failed", extra={"path": str(directory)})
        raise BackupCorrupt(
            f"Backup {directory.name} failed verification: {len(problems)} problem(s).",
            problems=problems,
        )
    return manifest


def backup_resolve(reference: str) -> tuple[Backup | None, Path]:
    """A backup named by id, folder or manifest path; the row too when the folder is known."""
    has_schema = database_has_schema()
    if reference.isdigit():
        if not has_schema:
            raise NotFoundError(
                f"The database has no tables yet, so no backup has the id {reference}: name "
                "the backup's folder instead."
            )
        backup = Backup.objects.filter(pk=int(reference)).first()
        if backup is None:
            raise NotFoundError(f"No backup with id {reference}.")
        return backup, backup_directory(backup)
    path = Path(reference)
    if path.name == MANIFEST_NAME:
        path = path.parent
    if not path.is_dir():
        raise NotFoundError(f"No backup folder at {reference}.")
    backup = None
    if has_schema and path.resolve().parent == backup_root().resolve():
        backup = Backup.objects.filter(path=path.name).first()
    return backup, path


# --- restore -------------------------------------------------------------------------------------


@dataclass
class RestorePlan:
    directory: Path
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
            f"Artifacts: {self.current_artifacts} file(s) in {settings.MODEL_STORE_DIR} "
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


def restore_plan(*, directory: Path, backup: Backup | None = None) -> RestorePlan:
    """Verifies the backup and says what a restore would replace; changes nothing."""
    manifest = backup_verify(backup=backup, path=directory)
    current_artifacts = sum(1 for _ in _artifact_files(Path(settings.MODEL_STORE_DIR)))
    has_schema = database_has_schema()
    return RestorePlan(
        directory,
        manifest,
        registry_row_counts() if has_schema else {},
        current_artifacts,
        applied_migrations(),
        has_schema=has_schema,
    )


def backup_restore(
    *, directory: Path, actor: AbstractBaseUser | str, backup: Backup | None = None
) -> RestoreResult:
    """Replaces the database and the artifacts store with a verified backup's contents.

    Into a database without tables (disaster recovery) it first creates the backup's schema,
    and afterwards applies this code's later migrations. Either way the backup catalogue keeps
    its rows and lists the backup restored from (BackupError, BackupCorrupt otherwise).
    """
    if connection.in_atomic_block:
        raise BackupError("A restore replaces whole tables; it cannot run inside a transaction.")
    plan = restore_plan(directory=directory, backup=backup)
    manifest = plan.manifest
    if not plan.has_schema:
        _schema_create(manifest.get("migrations", []))
    store = Path(settings.MODEL_STORE_DIR)
    store.parent.mkdir(parents=True, exist_ok=True)
    staging = store.parent / f".{store.name}.restore-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        _artifacts_extract(directory / ARTIFACTS_ARCHIVE, staging)
        _, problems = _verify_extracted(staging, manifest["artifacts"])
        if problems:
            raise BackupCorrupt("Extracted artifacts do not match the manifest.", problems=problems)
        # The backup catalogue describes files on disk, not the registry: it survives restore.
        catalogue = list(Backup.objects.values())
        _database_restore(directory / manifest["database"]["file"], manifest["database"]["vendor"])
        if not plan.has_schema:
            _schema_complete()
        _catalogue_replace(catalogue, source=_catalogue_source_row(directory, manifest))
        previous = store.parent / f".{store.name}.replaced-{uuid.uuid4().hex[:8]}"
        if store.exists():
            os.rename(store, previous)
        os.rename(staging, store)
        shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _routing_invalidate_all()
    counts = registry_row_counts()
    mismatches = [
        f"{label}: {counts.get(label, 0)} rows, the backup had {expected}"
        for label, expected in manifest["row_counts"].items()
        if counts.get(label, 0) != expected
    ]
    logger.warning(
        "backup restored",
        extra={"backup": directory.name, "actor": _actor_name(actor), "mismatches": mismatches},
    )
    return RestoreResult(manifest=manifest, row_counts=counts, mismatches=mismatches)


def _verify_extracted(root: Path, expected: dict[str, dict[str, Any]]) -> tuple[int, list[str]]:
    found = dict(_artifact_files(root))
    problems = [f"{name}: missing after extraction" for name in expected if name not in found]
    for name, path in found.items():
        want = expected.get(name)
        if want is None or _file_digest(path)[0] != want["sha256"]:
            problems.append(f"{name}: not the file the manifest lists")
    return len(found), problems


def _catalogue_source_row(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The catalogue row of the backup being restored, as its verified files describe it.

    A folder outside BACKUP_DIR (a copy brought back from off-site) is copied in first, so the
    row names a folder that retention, verification and the next restore can find.
    """
    root = backup_root()
    manifest_sha256 = _file_digest(directory / MANIFEST_NAME)[0]
    if directory.resolve().parent != root.resolve():
        target = root / directory.name
        if not (
            target.is_dir()
            and (target / MANIFEST_NAME).is_file()
            and _file_digest(target / MANIFEST_NAME)[0] == manifest_sha256
        ):
            if target.exists():
                target = root / f"{directory.name}-restored-{uuid.uuid4().hex[:8]}"
            root.mkdir(parents=True, exist_ok=True)
            staging = root / f".tmp-copy-{uuid.uuid4().hex[:8]}"
            try:
                shutil.copytree(directory, staging)
                os.chmod(staging, 0o700)
                os.rename(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        directory = target
    files = manifest["files"]
    database_file = manifest["database"]["file"]
    now = timezone.now()
    created_at = datetime.fromisoformat(manifest["created_at"])
    return {
        "slot": manifest.get("slot") or f"restored-{directory.name}",
        "status": BackupStatus.VERIFIED,
        "path": directory.name,
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
    root = backup_root()
    restored = {row["slot"]: row for row in Backup.objects.values()}
    floor = max([row["id"] for row in [*rows, *restored.values()]] + [_id_sequence_value(Backup)])
    merged = {row["slot"]: row for row in rows}
    taken_ids = {row["id"] for row in rows}
    for slot, row in restored.items():
        present = slot == source["slot"] or (row["path"] and (root / row["path"]).is_dir())
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
    *, now: datetime | None = None, retention_days: int | None = None, dry_run: bool = False
) -> list[int]:
    """Deletes backups older than the retention, never the newest verified one; returns their
    ids (with `dry_run`, the ids it would delete, deleting nothing)."""
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
    root = backup_root().resolve()
    for backup in expired:
        if backup.path:
            directory = (root / backup.path).resolve()
            if directory.parent == root:
                shutil.rmtree(directory, ignore_errors=True)
        deleted.append(backup.pk)
        backup.delete()
    # Folders of attempts that died before their row recorded them.
    if root.exists():
        for path in root.glob(".tmp-*"):
            if path.stat().st_mtime < cutoff.timestamp():
                shutil.rmtree(path, ignore_errors=True)
    return deleted


# Content-addressed namespaces the sweep may clean, each with the rows that reference its files.
# Anything else in the store (the admin's parked uploads under pending/) has its own expiry.
def _referenced_store_files() -> set[str]:
    from mlregistry.models import Dataset, ModelVersion

    referenced = set(ModelVersion.objects.values_list("artifact", flat=True))
    referenced |= set(Dataset.objects.exclude(file="").values_list("file", flat=True))
    return referenced


def _is_referenced(name: str) -> bool:
    from mlregistry.models import Dataset, ModelVersion

    return (
        ModelVersion.objects.filter(artifact=name).exists()
        or Dataset.objects.filter(file=name).exists()
    )


SWEPT_PREFIXES = ("sha256/", "datasets/")


def artifacts_sweep(
    *, now: datetime | None = None, min_age: timedelta | None = None, dry_run: bool = False
) -> list[str]:
    """Removes version artifacts and dataset files that no row references; never young files
    (uploads in flight), never files outside those namespaces. Returns their names (with
    `dry_run`, the names it would remove, removing nothing)."""
    now = now or timezone.now()
    min_age = min_age or timedelta(seconds=settings.ARTIFACT_SWEEP_MIN_AGE_SECONDS)
    referenced = _referenced_store_files()
    newest_allowed = (now - min_age).timestamp()
    root = Path(settings.MODEL_STORE_DIR)
    removed = []
    for path in sorted(root.rglob("*")) if root.exists() else []:
        if path.is_symlink() or not path.is_file():
            continue
        name = path.relative_to(root).as_posix()
        if not name.startswith(SWEPT_PREFIXES):
            continue
        if name in referenced or path.stat().st_mtime > newest_allowed:
            continue
        # Asked again right before unlinking: an upload of the same bytes may have just
        # registered this content-addressed name.
        if _is_referenced(name):
            continue
        if not dry_run:
            path.unlink()
        removed.append(name)
    return removed


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


def job_runs_prune(*, older_than: datetime, batch_size: int = 1000, dry_run: bool = False) -> int:
    """Deletes finished job runs started before `older_than`, in batches, except the newest run
    of each job and outcome; adds them to JobRunTally so /metrics counters never go down.
    Returns how many went (with `dry_run`, how many would, deleting nothing)."""
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
            JobRun.objects.filter(id__in=[row[0] for row in rows]).delete()
            _job_run_tally_add([row[1:] for row in rows])
        deleted += len(rows)


def retention_cleanup_run(*, now: datetime | None = None, dry_run: bool = False) -> dict[str, Any]:
    """The hourly cleanup: old backups, prediction logs, job runs and drift reports, expired
    API tokens, unreferenced artifacts and parked admin uploads nobody confirmed within a day.

    With `dry_run` it deletes nothing and reports what it would delete.
    """
    from mlregistry.access import api_tokens_prune_expired
    from mlregistry.services import pending_uploads_prune
    from predictions.drift import drift_reports_prune
    from predictions.services import prediction_log_prune

    now = now or timezone.now()

    def days_ago(days: int) -> datetime:
        return now - timedelta(days=days)

    return {
        "backups_deleted": backup_retention_apply(now=now, dry_run=dry_run),
        "prediction_logs_pruned": prediction_log_prune(
            older_than=days_ago(settings.PREDICTION_LOG_RETENTION_DAYS), dry_run=dry_run
        ),
        "artifacts_swept": artifacts_sweep(now=now, dry_run=dry_run),
        "pending_uploads_pruned": pending_uploads_prune(dry_run=dry_run),
        "job_runs_pruned": job_runs_prune(
            older_than=days_ago(settings.JOB_RUN_RETENTION_DAYS), dry_run=dry_run
        ),
        "drift_reports_pruned": drift_reports_prune(
            older_than=days_ago(settings.DRIFT_REPORT_RETENTION_DAYS), dry_run=dry_run
        ),
        "expired_tokens_deleted": api_tokens_prune_expired(now=now, dry_run=dry_run),
    }


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
            _stalled(kind, cutoff).values_list("pk", "heartbeat_at", kind.started_field)
        )
        if dry_run:
            reaped[name] = [pk for pk, _, _ in candidates]
            continue
        reaped[name] = []
        for pk, heartbeat_at, started_at in candidates:
            last = heartbeat_at or started_at
            reason = (
                f"The worker running this job stopped: no heartbeat since {last:%Y-%m-%d %H:%M:%S} "
                f"UTC (more than {stalled_after} s before {now:%H:%M:%S}); failed by "
                f"{_actor_name(actor)}. The next run starts afresh."
            )
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
            if updated:
                reaped[name].append(pk)
                logger.error(
                    "stalled job failed",
                    extra={"job_kind": name, "job_id": pk, "last_heartbeat": str(last)},
                )
    return reaped
