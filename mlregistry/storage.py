"""Artifact and backup storage: Django's storage API only (a folder or S3, chosen by
ARTIFACT_STORAGE_URL / BACKUP_STORAGE_URL), atomic local writes, a read-through disk cache of
verified bytes keyed by SHA-256, and presigned download URLs where the store can sign them.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings
from django.core.files.storage import FileSystemStorage, Storage, storages
from storages.backends.s3 import S3Storage

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024


def get_artifact_storage() -> Storage:
    """Where version artifacts, datasets, parked uploads and batch-job files live."""
    return storages["artifacts"]


def get_backup_storage() -> Storage:
    """Where backups (dump, artifacts archive, manifest) live."""
    return storages["backups"]


def storage_walk(storage: Storage, prefix: str = "") -> Iterator[str]:
    """Every file name under `prefix` (a folder name, "" for all), depth first, sorted; names
    of temporary files (".tmp-*", uploads in flight on a local disk) are left out. A missing
    prefix yields nothing."""
    try:
        folders, files = storage.listdir(prefix)
    except FileNotFoundError:
        return
    base = f"{prefix.rstrip('/')}/" if prefix else ""
    for filename in sorted(files):
        if not filename.startswith(".tmp-"):
            yield base + filename
    for folder in sorted(folders):
        if not folder.startswith(".tmp-"):
            yield from storage_walk(storage, base + folder)


def storage_delete_folder(storage: Storage, prefix: str) -> int:
    """Deletes every file under `prefix`, and on a local disk the emptied folders; returns how
    many files went."""
    removed = 0
    for name in list(storage_walk(storage, prefix)):
        storage.delete(name)
        removed += 1
    with contextlib.suppress(NotImplementedError, OSError):
        # Object stores have no folders; a local disk keeps empty ones until removed.
        root = Path(storage.path(prefix))
        for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
            folder.rmdir()
        root.rmdir()
    return removed


def presigned_url(
    name: str, *, filename: str | None = None, expires_seconds: int | None = None
) -> str | None:
    """A time-limited URL that downloads artifact-store file `name` straight from the object
    store (as attachment `filename` when given), or None when the store cannot sign one (a
    local folder): the caller then streams the file itself. Lifetime: `expires_seconds`, by
    default STORAGE_PRESIGNED_URL_SECONDS."""
    storage = get_artifact_storage()
    if not isinstance(storage, S3Storage):
        return None
    parameters = {}
    if filename:
        parameters["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
    return storage.url(
        name,
        parameters=parameters or None,
        expire=expires_seconds or settings.STORAGE_PRESIGNED_URL_SECONDS,
    )


class S3ArtifactStorage(S3Storage):
    """django-storages' S3 backend with the content-addressed naming of the local one."""

    def get_available_name(self, name, max_length=None):
        # The same name holds the same bytes: never invent "name_abc123".
        return name


# --- read-through cache ------------------------------------------------------------------------


class ArtifactChecksumError(Exception):
    """The store's bytes do not hash to the SHA-256 recorded for them (`actual` is theirs)."""

    def __init__(self, name: str, actual: str):
        super().__init__(name)
        self.actual = actual


def artifact_read(name: str, sha256: str) -> bytes:
    """The bytes of artifact-store file `name`, verified against `sha256` (hex), streamed from
    the store in 1 MiB chunks. With ARTIFACT_CACHE_MAX_BYTES > 0 they come from, or are kept
    in, a local cache folder keyed by SHA-256: content-addressed, so an entry is never stale,
    and it too is verified on every read. Raises FileNotFoundError (not in the store) and
    ArtifactChecksumError (bytes differ; nothing is cached)."""
    cache = _cache()
    if cache is not None:
        data = cache.get(sha256)
        if data is not None:
            return data
    digest = hashlib.sha256()
    buffer = bytearray()
    with get_artifact_storage().open(name, "rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
            buffer += chunk
    if digest.hexdigest() != sha256.lower():
        raise ArtifactChecksumError(name, digest.hexdigest())
    data = bytes(buffer)
    if cache is not None:
        cache.put(sha256, data)
    return data


def _cache() -> ArtifactCache | None:
    if settings.ARTIFACT_CACHE_MAX_BYTES <= 0:
        return None
    return ArtifactCache(Path(settings.ARTIFACT_CACHE_DIR), settings.ARTIFACT_CACHE_MAX_BYTES)


class ArtifactCache:
    """A folder of verified artifact bytes named by their SHA-256, bounded to `max_bytes`.

    Safe with several processes on one disk: entries are written to a temporary file and
    renamed into place (a reader sees a whole file or none), every read re-hashes the bytes,
    and eviction (least recently used first, by mtime, which a hit refreshes) tolerates files
    another process removed first. A file unlinked while another process reads it stays
    readable to that process (POSIX)."""

    def __init__(self, root: Path, max_bytes: int):
        self.root = root
        self.max_bytes = max_bytes

    def path(self, sha256: str) -> Path:
        sha256 = sha256.lower()
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError("not a SHA-256")
        return self.root / sha256[:2] / sha256

    def get(self, sha256: str) -> bytes | None:
        path = self.path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if hashlib.sha256(data).hexdigest() != sha256.lower():
            logger.warning("artifact cache entry damaged; fetching again", extra={"sha256": sha256})
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return None
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)
        return data

    def put(self, sha256: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        path = self.path(sha256)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            self.evict()
        except OSError:
            # A full or read-only cache disk costs speed, never a load.
            logger.warning("artifact cache write failed", exc_info=True)

    def evict(self) -> None:
        entries = []
        for path in self.root.glob("??/*"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            entries.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            total -= size


class AtomicFileSystemStorage(FileSystemStorage):
    """Writes to a temporary file in the target folder, fsyncs, then renames into place.

    A crash mid-write leaves a stray temporary file, never a truncated artifact under its
    real name. Names are content-addressed, so an existing name should already hold these
    bytes: it is kept only when its bytes hash like the new content, else (a disk fault, a
    tampered file) it is replaced atomically and the repair logged, so uploading the good
    bytes again repairs a corrupted artifact or dataset.
    """

    def _save(self, name, content):
        full_path = self.path(name)
        directory = os.path.dirname(full_path)
        self._folder_create(directory)
        if os.path.exists(full_path):
            stored = _file_sha256(full_path)
            incoming = _content_sha256(content)
            if stored == incoming:
                # Fresh mtime: the retention sweep leaves files younger than an hour alone, so
                # an orphan re-registered by an identical upload can't be swept before its row
                # commits.
                os.utime(full_path)
                return name
            logger.warning(
                "stored file differs from its content; replacing it",
                extra={"file": name, "stored_sha256": stored, "sha256": incoming},
            )
        fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as tmp:
                if hasattr(content, "seek"):
                    content.seek(0)
                for chunk in content.chunks():
                    tmp.write(chunk)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.chmod(tmp_path, self.file_permissions_mode or 0o644)
            os.replace(tmp_path, full_path)
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except BaseException:
            if os.path.exists(tmp_path):
                os.unlink(tmp_path)
            raise
        return name

    def get_available_name(self, name, max_length=None):
        # Content-addressed: the same name means the same bytes, so never invent "name_abc123".
        return name

    def _folder_create(self, directory: str) -> None:
        mode = self.directory_permissions_mode
        if mode is None:
            os.makedirs(directory, exist_ok=True)
            return
        # As FileSystemStorage does: the umask must not narrow the mode asked for.
        old_umask = os.umask(0o777 & ~mode)
        try:
            os.makedirs(directory, mode, exist_ok=True)
        finally:
            os.umask(old_umask)


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _content_sha256(content) -> str:
    digest = hashlib.sha256()
    if hasattr(content, "seek"):
        content.seek(0)
    for chunk in content.chunks():
        digest.update(chunk)
    return digest.hexdigest()
