"""Artifact and backup storage: Django's storage API only (a folder or S3, chosen by
ARTIFACT_STORAGE_URL / BACKUP_STORAGE_URL), atomic local writes, a read-through disk cache of
verified bytes keyed by SHA-256, presigned download URLs where the store can sign them, and
random-access (ranged) reads of stored files for pyarrow.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.files.base import ContentFile, File
from django.core.files.storage import FileSystemStorage, Storage, storages
from storages.backends.s3 import S3Storage
from storages.utils import clean_name

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024


def get_artifact_storage() -> Storage:
    """Where version artifacts, datasets, parked uploads and batch-job files live."""
    return storages["artifacts"]


def get_backup_storage() -> Storage:
    """Where backups (dump, artifacts archive, manifest) live."""
    return storages["backups"]


# What every writer of a local storage names a file or folder that is not whole yet: walks
# (backups, sweeps, prunes) leave such names out, and the artifact sweep removes the ones a
# killed writer left (storage_temporaries).
TEMPORARY_PREFIX = ".tmp-"


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
        if not filename.startswith(TEMPORARY_PREFIX):
            yield base + filename
    for folder in sorted(folders):
        if not folder.startswith(TEMPORARY_PREFIX):
            yield from storage_walk(storage, base + folder)


def storage_delete_folder(storage: Storage, prefix: str) -> int:
    """Deletes every file under `prefix`, and on a local disk the folder itself, with any
    temporary files left in it; returns how many (non-temporary) files went."""
    removed = 0
    for name in list(storage_walk(storage, prefix)):
        storage.delete(name)
        removed += 1
    if prefix.strip("/"):  # never the storage's own root
        with contextlib.suppress(NotImplementedError):
            # Object stores have no folders. On a local disk the folder goes whole, with what
            # storage_walk leaves out: the temporary files of a writer that crashed mid-write.
            shutil.rmtree(storage.path(prefix), ignore_errors=True)
    return removed


def storage_temporaries(storage: Storage, *, older_than: float) -> list[str]:
    """Names, under the storage's root, of the temporary files (".tmp-*.part") and work
    folders (".tmp-*/") that writers killed mid-write left on a local disk, with nothing in
    them changed since `older_than` (a POSIX timestamp): storage_walk, and so every sweep,
    backup and prune, leaves them out, so without this they stay for ever. A folder is judged
    by its newest entry: a merge still writing keeps it young. None on an object store, where
    an upload is one request (a multipart one that dies is for the bucket's lifecycle rule to
    abort, docs/scaling.md)."""
    try:
        root = storage.path("")
    except NotImplementedError:
        return []
    found = []
    for folder, folders, files in os.walk(root):
        for name in [n for n in folders if n.startswith(TEMPORARY_PREFIX)]:
            folders.remove(name)  # judged whole, not walked into
            if _newest_change(os.path.join(folder, name)) < older_than:
                found.append(os.path.relpath(os.path.join(folder, name), root))
        for name in files:
            if name.startswith(TEMPORARY_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    if os.lstat(os.path.join(folder, name)).st_mtime < older_than:
                        found.append(os.path.relpath(os.path.join(folder, name), root))
    return sorted(found)


def storage_temporary_delete(storage: Storage, name: str) -> None:
    """Deletes a temporary file or work folder that storage_temporaries named."""
    path = storage.path(name)
    if not os.path.basename(path).startswith(TEMPORARY_PREFIX):
        raise ValueError(f"{name} is not a temporary file or folder")
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _newest_change(path: str) -> float:
    """The latest mtime of a folder and of everything in it (0 when it is gone); a link is
    judged by itself, never by what it points to."""
    newest = 0.0
    with contextlib.suppress(FileNotFoundError):
        newest = os.lstat(path).st_mtime
    if os.path.islink(path):
        return newest
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
        with contextlib.suppress(FileNotFoundError):
            newest = max(newest, os.lstat(folder).st_mtime)
    return newest


def storage_work_folder(storage: Storage, name: str) -> tempfile.TemporaryDirectory:
    """A temporary folder to write a file in that is then saved as storage file `name`: next
    to it for a folder storage, so that saving a MovableFile renames it into place instead of
    copying it; the system's temporary folder otherwise. Named ".tmp-*", which storage_walk
    leaves out (backups, sweeps); a crash's leftover goes with storage_delete_folder, or with
    the artifact sweep (storage_temporaries)."""
    try:
        storage.path(name)
    except NotImplementedError:
        return tempfile.TemporaryDirectory(prefix=TEMPORARY_PREFIX)
    folder = os.path.dirname(name)
    if isinstance(storage, AtomicFileSystemStorage):
        near = storage.folder_create(folder)
    else:
        near = storage.path(folder)
        os.makedirs(near, exist_ok=True)
    return tempfile.TemporaryDirectory(dir=near, prefix=TEMPORARY_PREFIX)


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


# --- random-access reads for pyarrow ------------------------------------------------------------

# The process that started pyarrow's S3 support (the AWS SDK for C++) here, if any. The SDK is
# not fork-safe: a child forked after it started inherits its state without its threads, and
# may hang or fail to sign. Prefork servers (Celery, gunicorn) fork before any request or task,
# so each child starts its own; a child that inherited one reads whole objects instead.
_arrow_s3_pid: int | None = None
_arrow_s3_fallback_logged = False


def arrow_input(storage: Storage, name: str) -> Any:
    """Storage file `name` as pyarrow reads it with random access, so a reader of a Parquet
    footer or of a few row groups fetches only those bytes:

    - a folder storage: the file's local path (str); pyarrow opens it itself;
    - S3Storage: an open `pyarrow.NativeFile` over pyarrow's own `S3FileSystem`, built from the
      storage's settings (keys or the AWS SDK's default credential chain, endpoint, region,
      addressing style, CA bundle, proxy, timeouts) and naming the object by the storage's own
      key (its `location` prefix and name normalisation). Each read is one HTTP Range GET of
      the bytes asked for; opening costs one HEAD (the object's size);
    - any other storage, an S3 setting pyarrow cannot follow (a session profile, TLS
      verification off, gzipped storage, SSE-C keys, an endpoint URL with a path), or a
      forked child whose parent already started pyarrow's S3: `storage.open(name, "rb")` (a
      whole download on S3).

    The caller closes what it gets when it has a `close` (`arrow_input_open` does). A missing
    file raises FileNotFoundError: on S3 here, locally when pyarrow opens the path."""
    try:
        return storage.path(name)
    except NotImplementedError:
        pass
    if isinstance(storage, S3Storage):
        filesystem = _arrow_s3_filesystem(storage)
        if filesystem is not None:
            key = storage._normalize_name(clean_name(name))  # the key S3Storage itself uses
            return filesystem.open_input_file(f"{storage.bucket_name}/{key}")
    return storage.open(name, "rb")


@contextlib.contextmanager
def arrow_input_open(storage: Storage, name: str) -> Iterator[Any]:
    """`arrow_input` as a context manager: closes the file it opened, if any."""
    source = arrow_input(storage, name)
    try:
        yield source
    finally:
        if hasattr(source, "close"):
            source.close()


def _arrow_s3_filesystem(storage: S3Storage) -> Any:
    """A `pyarrow.fs.S3FileSystem` reaching what `storage` reaches, or None (see arrow_input).
    Built per call: it costs microseconds once the SDK has started, and holds nothing a
    caller must close."""
    global _arrow_s3_pid, _arrow_s3_fallback_logged
    options = _arrow_s3_options(storage)
    pid = os.getpid()
    if options is not None and _arrow_s3_pid not in (None, pid):
        options = None
        if not _arrow_s3_fallback_logged:
            _arrow_s3_fallback_logged = True
            logger.warning(
                "pyarrow's S3 was started before this process forked; "
                "reading whole objects instead of byte ranges"
            )
    if options is None:
        return None
    from pyarrow.fs import S3FileSystem

    _arrow_s3_pid = pid
    return S3FileSystem(**options)


def _arrow_s3_options(storage: S3Storage) -> dict[str, Any] | None:
    """S3FileSystem keyword arguments equivalent to the storage's boto3 client, or None when a
    setting has no pyarrow counterpart."""
    object_parameters = storage.object_parameters or {}
    endpoint = urlsplit(storage.endpoint_url or "")
    if (
        storage.session_profile
        or storage.verify is False
        or storage.gzip  # S3File un-gzips what it stored gzipped; pyarrow would not
        or any(key.startswith("SSECustomer") for key in object_parameters)
        or endpoint.path.strip("/")  # pyarrow takes a host[:port], not a URL with a path
    ):
        return None
    config = storage.client_config
    options: dict[str, Any] = {
        "access_key": storage.access_key,
        "secret_key": storage.secret_key,
        "session_token": storage.security_token,
        "scheme": "https" if storage.use_ssl else "http",
        "force_virtual_addressing": (config.s3 or {}).get("addressing_style") == "virtual",
        "connect_timeout": config.connect_timeout,
        "request_timeout": config.read_timeout,
    }
    if endpoint.netloc:
        options["scheme"] = endpoint.scheme or options["scheme"]
        options["endpoint_override"] = endpoint.netloc
    # boto3's region when none is set (AWS_DEFAULT_REGION, the config file, else us-east-1):
    # the AWS SDK for C++ guesses differently.
    options["region"] = storage.region_name or storage.connection.meta.client.meta.region_name
    ca_bundle = (
        storage.verify if isinstance(storage.verify, str) else os.environ.get("AWS_CA_BUNDLE")
    )
    if ca_bundle:
        options["tls_ca_file_path"] = ca_bundle
    proxy = (config.proxies or {}).get(options["scheme"])
    if proxy:
        options["proxy_options"] = proxy
    return options


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
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMPORARY_PREFIX, suffix=".part")
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


class ScratchFile(ContentFile):
    """Content its writer can make again (a batch chunk's part, checked when it is read back):
    AtomicFileSystemStorage still writes it to a temporary name and renames it, but does not
    wait for the disk (fsync), which cost more than scoring a chunk on a slow disk. A crash may
    lose it; nothing else is weakened. Object stores ignore the difference."""

    durable = False


class MovableFile(File):
    """A finished local file its writer hands over (a batch job's merged output):
    AtomicFileSystemStorage fsyncs it and renames it into place when the rename can be done
    (the same filesystem), instead of copying its bytes; otherwise (another filesystem, an
    object store, a name that already holds these bytes) it is read like any other content.
    Use it in a `with` block: a file that was not moved is closed there."""

    movable = True

    def __init__(self, path: str):
        super().__init__(open(path, "rb"), name=os.path.basename(path))  # noqa: SIM115
        self.path = path


class WriteBehind:
    """Starts the disk writes of a local file while its writer is still producing it, so that
    the fsync which makes it durable at the end waits for its last megabytes rather than for
    all of them: each `nudge()` runs fdatasync in a background thread unless one is running
    already. (Linux's sync_file_range would start the writes without a thread, but Python does
    not expose it.) On the batch merge's output (76 MB then), writing plus the final fsync
    went from 0.35-0.40 s to 0.17-0.20 s. Nothing is promised by it: the fsync at the end is.

    When `durable`, `path` is opened first (created empty when missing, for its writer to open
    after); otherwise it is a no-op: a file an object store uploads, or a folder storage does
    not fsync, gains nothing from being written early. Use it in a `with` block, which waits
    for the flush still running and raises its OSError."""

    def __init__(self, path: str, *, durable: bool = True):
        # Open for writing (never truncated here): POSIX lets fdatasync refuse a read-only
        # descriptor, and some network filesystems do.
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600) if durable else None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="write-behind")
        self._running: Future | None = None
        # macOS has no fdatasync; fsync does the same and a little more.
        self._sync = getattr(os, "fdatasync", os.fsync)

    def nudge(self) -> None:
        """Starts writing what the file holds so far, unless that is under way; OSError when a
        previous flush failed."""
        if self._fd is None:
            return
        if self._running is not None:
            if not self._running.done():
                return
            # Raised here, not left to the final fsync: Linux reports a writeback error once
            # per open file, and the final fsync may come through one opened after it.
            self._running.result()
        self._running = self._pool.submit(self._sync, self._fd)

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        try:
            self._pool.shutdown(wait=True)
            if exc_type is None and self._running is not None:
                self._running.result()
        finally:
            if self._fd is not None:
                os.close(self._fd)


def storage_fsyncs(storage: Storage) -> bool:
    """Whether `storage` makes the files it saves durable on a local disk itself (fsync)."""
    return isinstance(storage, AtomicFileSystemStorage)


class AtomicFileSystemStorage(FileSystemStorage):
    """Writes to a temporary file in the target folder, fsyncs, then renames into place.

    A crash mid-write leaves a stray temporary file, never a truncated artifact under its
    real name. Names are content-addressed, so an existing name should already hold these
    bytes: it is kept only when its bytes hash like the new content, else (a disk fault, a
    tampered file) it is replaced atomically and the repair logged, so uploading the good
    bytes again repairs a corrupted artifact or dataset.
    """

    def _save(self, name, content):
        durable = getattr(content, "durable", True)
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
        if getattr(content, "movable", False) and self._moved(content, full_path, durable):
            return name
        fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=TEMPORARY_PREFIX, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as tmp:
                if hasattr(content, "seek"):
                    content.seek(0)
                for chunk in content.chunks():
                    tmp.write(chunk)
                tmp.flush()
                if durable:
                    os.fsync(tmp.fileno())
            os.chmod(tmp_path, self.file_permissions_mode or 0o644)
            os.replace(tmp_path, full_path)
            if durable:
                _folder_sync(directory)
        except BaseException:
            if os.path.exists(tmp_path):
                os.unlink(tmp_path)
            raise
        return name

    def _moved(self, content: MovableFile, full_path: str, durable: bool) -> bool:
        """Renames a MovableFile into place, its bytes on disk first when `durable`; False
        (nothing done, the file still open to be copied) when the rename cannot cross
        filesystems (EXDEV: another disk, a bind mount)."""
        if durable:
            os.fsync(content.file.fileno())
        os.chmod(content.path, self.file_permissions_mode or 0o644)
        try:
            os.replace(content.path, full_path)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                return False
            raise
        content.close()
        if durable:
            _folder_sync(os.path.dirname(full_path))
        return True

    def folder_create(self, name: str) -> str:
        """The local folder of storage name `name` (a folder), made as the storage makes its
        folders (directory_permissions_mode); its path."""
        directory = self.path(name)
        self._folder_create(directory)
        return directory

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


def _folder_sync(directory: str) -> None:
    """fsync of a folder: a rename into it survives a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_sha256(path: str) -> str:
    """The hex SHA-256 of local file `path` (hashlib.file_digest: one reused buffer, the GIL
    released while it hashes). Not from mapped pages: a file truncated meanwhile, or a stale
    network mount, would kill the process with SIGBUS instead of raising."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def stored_sha256(storage: Storage, name: str) -> str:
    """The hex SHA-256 of storage file `name`: read from the local file for a folder storage,
    else streamed in CHUNK_SIZE blocks (one GET on S3). Raises FileNotFoundError."""
    try:
        path = storage.path(name)
    except NotImplementedError:
        digest = hashlib.sha256()
        with storage.open(name, "rb") as handle:
            while chunk := handle.read(CHUNK_SIZE):
                digest.update(chunk)
        return digest.hexdigest()
    return _file_sha256(path)


def _content_sha256(content) -> str:
    digest = hashlib.sha256()
    if hasattr(content, "seek"):
        content.seek(0)
    for chunk in content.chunks():
        digest.update(chunk)
    return digest.hexdigest()
