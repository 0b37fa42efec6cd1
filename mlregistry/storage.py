"""Artifact storage: Django's storage API (so S3 can replace the disk), with atomic local writes."""

import hashlib
import logging
import os
import tempfile

from django.core.files.storage import FileSystemStorage, Storage, storages

logger = logging.getLogger(__name__)


def get_artifact_storage() -> Storage:
    return storages["artifacts"]


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
        os.makedirs(directory, exist_ok=True)
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
            os.chmod(tmp_path, 0o644)
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
