"""Reading, checking and loading model artifacts.

Rules: an artifact is hashed while it streams in; a skops artifact is opened only with the
trusted types (skops' defaults plus SKOPS_TRUSTED_TYPES); a pickle is never unpickled at upload,
only scanned statically; every load re-hashes the exact bytes it then deserialises.
"""

from __future__ import annotations

import hashlib
import io
import platform
import tempfile
from dataclasses import dataclass
from typing import IO, Any

from django.conf import settings

from config.errors import PayloadTooLarge, UnavailableError, ValidationFailed

CHUNK_SIZE = 1024 * 1024


class ArtifactError(ValidationFailed):
    error_type = "artifact_error"

    def __init__(self, message: str, *, untrusted_types: list[str] | None = None):
        super().__init__(message, fields={"artifact": [message]})
        self.untrusted_types = untrusted_types or []


class ArtifactIntegrityError(UnavailableError):
    """The stored bytes are not the bytes that were registered: never load them."""

    error_type = "artifact_integrity_error"


@dataclass
class SpooledArtifact:
    file: IO[bytes]
    sha256: str
    size: int

    def read(self) -> bytes:
        self.file.seek(0)
        return self.file.read()


def spool_upload(source: IO[bytes], *, max_size: int | None = None) -> SpooledArtifact:
    """Copies an upload to a temporary file in chunks, hashing as it goes; 413 past max_size."""
    limit = max_size or settings.MAX_ARTIFACT_SIZE
    digest = hashlib.sha256()
    spooled = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)  # noqa: SIM115
    size = 0
    chunks = (
        source.chunks(CHUNK_SIZE)
        if hasattr(source, "chunks")
        else iter(lambda: source.read(CHUNK_SIZE), b"")
    )
    for chunk in chunks:
        size += len(chunk)
        if size > limit:
            spooled.close()
            raise PayloadTooLarge(
                f"Artifact is larger than the limit of {limit} bytes (MAX_ARTIFACT_SIZE).",
                fields={"artifact": [f"larger than {limit} bytes"]},
            )
        digest.update(chunk)
        spooled.write(chunk)
    if size == 0:
        spooled.close()
        raise ArtifactError("The artifact file is empty.")
    spooled.seek(0)
    return SpooledArtifact(file=spooled, sha256=digest.hexdigest(), size=size)


def skops_trusted_types(data: bytes) -> list[str]:
    """The types in this skops file that may be loaded: all of them, or ArtifactError."""
    import skops.io as sio

    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:
        raise ArtifactError(f"Not a readable skops file: {exc.__class__.__name__}.") from None
    allowed = set(settings.SKOPS_TRUSTED_TYPES)
    refused = sorted(t for t in untrusted if t not in allowed)
    if refused:
        raise ArtifactError(
            "The skops file contains types outside the trusted list: " + ", ".join(refused),
            untrusted_types=refused,
        )
    return list(untrusted)


def load_skops(data: bytes) -> Any:
    import skops.io as sio

    trusted = skops_trusted_types(data)
    try:
        return sio.loads(data, trusted=trusted)
    except Exception as exc:
        raise ArtifactError(f"The skops file could not be loaded: {exc}") from None


def _global_allowed(module: str, name: str) -> bool:
    qualified = f"{module}.{name}"
    for entry in settings.PICKLE_ALLOWED_GLOBALS:
        if entry.endswith(".*"):
            prefix = entry[:-2]
            if module == prefix or module.startswith(prefix + "."):
                return True
        elif qualified == entry:
            return True
    return False


def scan_pickle(data: bytes) -> list[str]:
    """Statically lists the globals a pickle would import; refuses any outside the allow-list.

    picklescan reads the opcodes without executing them. A file it cannot read to the end
    (joblib.dump writes numpy arrays as raw bytes between pickle opcodes) is refused too:
    what follows unread bytes could import anything.
    """
    from picklescan.scanner import scan_pickle_bytes

    result = scan_pickle_bytes(io.BytesIO(data), "upload")
    imported = sorted({f"{g.module}.{g.name}" for g in result.globals})
    if result.scan_err:
        raise ArtifactError(
            "The pickle could not be scanned to the end, so it is refused. joblib.dump stores "
            "numpy arrays outside the pickle stream; save the model with skops (recommended) or "
            "with pickle.dump(model, f, protocol=5)."
        )
    if not result.globals:
        raise ArtifactError("Not a pickle file, or a pickle that holds no model.")
    refused = sorted(
        f"{g.module}.{g.name}" for g in result.globals if not _global_allowed(g.module, g.name)
    )
    if refused:
        raise ArtifactError(
            "The pickle imports names outside the allow-list: " + ", ".join(refused),
            untrusted_types=refused,
        )
    return imported


def verify_sha256(data: bytes, expected: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ArtifactIntegrityError(
            f"Artifact checksum mismatch (expected sha256 {expected[:12]}…, got {actual[:12]}…); "
            "refusing to load it."
        )


def deserialize(data: bytes, artifact_format: str) -> Any:
    if artifact_format == "skops":
        return load_skops(data)
    if artifact_format == "joblib":
        import joblib

        scan_pickle(data)  # defence in depth: the bytes were scanned at upload too
        return joblib.load(io.BytesIO(data))
    raise ArtifactError(f"Unknown artifact format {artifact_format!r}.")


def library_versions() -> dict[str, str]:
    import joblib
    import numpy
    import scipy
    import sklearn
    import skops

    return {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "skops": skops.__version__,
        "joblib": joblib.__version__,
    }


class ArtifactMissingError(ArtifactIntegrityError):
    error_type = "artifact_missing"


def read_verified(name: str, sha256: str, *, what: str) -> bytes:
    """A stored file's bytes, read once and checked against the SHA-256 recorded for them;
    callers deserialise exactly these bytes."""
    from mlregistry.storage import get_artifact_storage

    try:
        with get_artifact_storage().open(name, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise ArtifactMissingError(
            f"{what} could not be loaded: its file is missing from the store."
        ) from None
    verify_sha256(data, sha256)
    return data


def load_version_estimator(version: Any) -> Any:
    """A version's estimator, from verified bytes."""
    data = read_verified(version.artifact.name, version.artifact_sha256, what=str(version))
    return deserialize(data, version.artifact_format)
