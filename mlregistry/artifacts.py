"""Reading, checking and loading model artifacts.

Rules: an artifact is hashed while it streams in; a skops artifact is opened only with the
trusted types (skops' defaults plus SKOPS_TRUSTED_TYPES), after its zip members' sizes are
checked; a pickle is scanned statically and then opened, at upload as at every load, only by an
unpickler that imports the same exact allow-list the scan checks (so an upload is checked as the
estimator it will serve); every load re-hashes the exact bytes it then deserialises.
"""

from __future__ import annotations

import _compat_pickle
import hashlib
import importlib
import io
import pickle
import platform
import tempfile
from dataclasses import dataclass
from typing import IO, Any

from django.conf import settings

from config.archives import ArchiveError, ArchiveUnreadable, zip_check
from config.errors import PayloadTooLarge, UnavailableError, ValidationFailed
from mlregistry.artifact_structures import StructureError, check_structures
from mlregistry.pickle_globals import PICKLE_ALLOWED_GLOBALS

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


# A file read by byte ranges (a batch job's Parquet input) is verified in blocks of at least
# this many bytes, and at most BLOCKS_MAX blocks: a reader of a range fetches at most two
# blocks more than it needs, and a row holds at most 128 KiB of digests.
BLOCK_MIN = 64 * 1024
BLOCKS_MAX = 4096


def block_size_for(size: int) -> int:
    """Bytes per verified block of a `size`-byte file: BLOCK_MIN, doubled until at most
    BLOCKS_MAX blocks cover the file."""
    block = BLOCK_MIN
    while block * BLOCKS_MAX < size:
        block *= 2
    return block


class BlockDigests:
    """SHA-256 of consecutive `block_size`-byte blocks of a stream fed in pieces of any size
    (the last block may be shorter)."""

    def __init__(self, block_size: int):
        self.block_size = block_size
        self._digests = bytearray()
        self._current = hashlib.sha256()
        self._filled = 0

    def update(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), self.block_size - self._filled)
            self._current.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == self.block_size:
                self._digests += self._current.digest()
                self._current, self._filled = hashlib.sha256(), 0

    def digests(self) -> bytes:
        """The 32-byte digests, in order, the last (shorter) block's included."""
        tail = self._current.digest() if self._filled else b""
        return bytes(self._digests) + tail


def block_digests(data: bytes | IO[bytes], size: int | None = None) -> tuple[int, bytes]:
    """(block size, the blocks' concatenated SHA-256 digests) of a file: bytes in memory, or
    a binary file of `size` bytes read from where it stands, in CHUNK_SIZE pieces."""
    if isinstance(data, bytes | bytearray | memoryview):
        blocks = BlockDigests(block_size_for(len(data)))
        blocks.update(data)
    else:
        blocks = BlockDigests(block_size_for(size or 0))
        for piece in iter(lambda: data.read(CHUNK_SIZE), b""):
            blocks.update(piece)
    return blocks.block_size, blocks.digests()


def _skops_zip_check(data: bytes) -> None:
    """A skops file is a zip: its members' sizes and ratios are checked before skops reads one."""
    try:
        zip_check(data, what="The skops file", field="artifact")
    except ArchiveUnreadable as exc:
        raise ArtifactError(f"Not a readable skops file: {exc.message}") from None
    except ArchiveError as exc:
        raise ArtifactError(exc.message) from None


# skops parses a file's schema.json whole before it checks a single type, and JSON costs
# far more in memory than on disk: ~30x for nested empty lists (a 63 MB schema.json took
# 1.8 GB). Real models write ~250 bytes per object (a 500-tree gradient boosting model:
# 10.5 MB, 40,000 objects, 10 times fewer values than the limit below).
SKOPS_SCHEMA_MAX_BYTES = 128 * 1024 * 1024
SKOPS_SCHEMA_MAX_VALUES = 4_000_000


def _skops_schema_check(data: bytes) -> None:
    """ArtifactError when the skops file's schema.json is larger than SKOPS_SCHEMA_MAX_BYTES or
    holds more than SKOPS_SCHEMA_MAX_VALUES values (counted from its brackets and commas, an
    upper bound) before anything parses it."""
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        try:
            member = archive.open("schema.json")
        except KeyError:
            return  # skops refuses a file without one
        with member:
            schema = member.read(SKOPS_SCHEMA_MAX_BYTES + 1)
    if len(schema) > SKOPS_SCHEMA_MAX_BYTES:
        raise ArtifactError(
            f"The skops file's schema.json is larger than {SKOPS_SCHEMA_MAX_BYTES} bytes."
        )
    values = schema.count(b"[") + schema.count(b"{") + schema.count(b",")
    if values > SKOPS_SCHEMA_MAX_VALUES:
        raise ArtifactError(
            f"The skops file's schema.json holds about {values} values; a model may have "
            f"{SKOPS_SCHEMA_MAX_VALUES}."
        )


def skops_trusted_types(data: bytes) -> list[str]:
    """The types in this skops file that may be loaded: all of them, or ArtifactError.

    skops refuses every type outside its own defaults; a type it refuses is admitted only when
    SKOPS_TRUSTED_TYPES names it exactly (a string compare: no prefixes, no wildcards) and
    picklescan does not flag it as dangerous, whatever the setting says.
    """
    import skops.io as sio

    _skops_zip_check(data)
    _skops_schema_check(data)
    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:
        raise ArtifactError(f"Not a readable skops file: {exc.__class__.__name__}.") from None
    allowed = set(settings.SKOPS_TRUSTED_TYPES)
    dangerous = sorted(t for t in untrusted if t in allowed and _skops_type_dangerous(t))
    if dangerous:
        # Not offered as types to trust: no setting admits them.
        raise ArtifactError(
            "The skops file contains types picklescan flags as dangerous, refused even though "
            "SKOPS_TRUSTED_TYPES lists them: " + ", ".join(dangerous)
        )
    refused = sorted(t for t in untrusted if t not in allowed)
    if refused:
        raise ArtifactError(
            "The skops file contains types outside the trusted list: " + ", ".join(refused),
            untrusted_types=refused,
        )
    return list(untrusted)


def _skops_type_dangerous(qualified: str) -> bool:
    module, _, name = qualified.rpartition(".")
    return pickle_global_dangerous(module, name)


def load_skops(data: bytes) -> Any:
    import skops.io as sio

    trusted = skops_trusted_types(data)
    try:
        loaded = sio.loads(data, trusted=trusted)
    except Exception as exc:
        raise ArtifactError(f"The skops file could not be loaded: {exc}") from None
    return _well_formed(loaded)


# --- pickles -------------------------------------------------------------------------------


def pickle_global_name(module: str, name: str) -> tuple[str, str]:
    """The Python 3 name of a global as pickle protocols 0-2 spell it (`__builtin__.set`,
    `copy_reg._reconstructor`), mapped as the stock unpickler maps it; other names unchanged."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def pickle_global_dangerous(module: str, name: str) -> bool:
    """True when picklescan's own verdict on this global is "dangerous".

    Uses picklescan's verdict function for one global (a private name, pinned by a test), so
    its list of known gadgets (numpy.testing's runstring, builtins.eval, os, subprocess, ...)
    refuses a global whatever the allow-list says.
    """
    from picklescan.scanner import SafetyLevel, _build_scan_result_from_raw_globals

    verdicts = {(module, name), pickle_global_name(module, name)}
    result = _build_scan_result_from_raw_globals(verdicts, "check")
    return any(g.safety == SafetyLevel.Dangerous for g in result.globals)


def pickle_global_allowed(module: str, name: str) -> bool:
    """The one rule for a pickle's globals, used by the static scan and by the unpickler alike:
    exactly on the committed list (mlregistry/pickle_globals.py) and not flagged by picklescan."""
    if pickle_global_name(module, name) not in PICKLE_ALLOWED_GLOBALS:
        return False
    return not pickle_global_dangerous(module, name)


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
        f"{g.module}.{g.name}"
        for g in result.globals
        if not pickle_global_allowed(g.module, g.name)
    )
    if refused:
        # No untrusted_types: the admin offers those for SKOPS_TRUSTED_TYPES, which pickles
        # never consult; the exact pickle list changes only through scripts/pickle_allowlist.py.
        raise ArtifactError(
            "The pickle imports names outside the allow-list: " + ", ".join(refused)
        )
    return imported


class _RestrictedUnpickler(pickle.Unpickler):
    """Imports nothing but the allow-listed globals, whatever the opcodes ask for."""

    def find_class(self, module: str, name: str) -> Any:
        if not pickle_global_allowed(module, name):
            raise pickle.UnpicklingError(f"global {module}.{name} is not on the allow-list")
        module, name = pickle_global_name(module, name)
        target: Any = importlib.import_module(module)
        for part in name.split("."):
            target = getattr(target, part)
        return target

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def load_pickle(data: bytes) -> Any:
    """Unpickles through the restricted unpickler after the static scan; ArtifactError when
    either refuses (the two apply the same rule, so a refusal names the global)."""
    scan_pickle(data)
    try:
        loaded = _RestrictedUnpickler(io.BytesIO(data)).load()
    except Exception as exc:
        raise ArtifactError(f"The pickle could not be loaded: {exc}") from None
    return _well_formed(loaded)


def _well_formed(loaded: Any) -> Any:
    """`loaded` once its native structures (trees, KD-trees, sparse matrices) are checked: their
    compiled code trusts the indexes they hold, so crafted state would crash the worker."""
    try:
        check_structures(loaded)
    except StructureError as exc:
        raise ArtifactError(f"The artifact's estimator is malformed: {exc}") from None
    return loaded


def verify_sha256(data: bytes, expected: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ArtifactIntegrityError(
            f"Artifact checksum mismatch (expected sha256 {expected[:12]}…, got {actual[:12]}…); "
            "refusing to load it."
        )


def deserialize(data: bytes, artifact_format: str) -> Any:
    """The object in skops or pickle bytes (ArtifactError when refused); never runs the joblib
    or stock pickle loaders, which import whatever the bytes name."""
    if artifact_format == "skops":
        return load_skops(data)
    if artifact_format == "joblib":
        return load_pickle(data)
    raise ArtifactError(f"Unknown artifact format {artifact_format!r}.")


class ArtifactInvalidError(UnavailableError):
    """A stored artifact that verified but cannot serve: refused by the loaders' rules, or not
    an estimator with predict(). 503: the version cannot answer until it is replaced."""

    error_type = "artifact_invalid"


def deserialize_estimator(data: bytes, artifact_format: str, *, what: str) -> Any:
    """The estimator in verified stored bytes, or ArtifactInvalidError (never a 500)."""
    try:
        estimator = deserialize(data, artifact_format)
    except ArtifactError as exc:
        raise ArtifactInvalidError(f"{what} cannot be loaded: {exc.message}") from None
    if not callable(getattr(estimator, "predict", None)):
        raise ArtifactInvalidError(
            f"{what} cannot be loaded: its artifact holds a {type(estimator).__name__}, "
            "not an estimator with predict()."
        )
    return estimator


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
    """A stored file's bytes, streamed from the store (or the local read-through cache) and
    checked against the SHA-256 recorded for them; callers deserialise exactly these bytes."""
    from mlregistry.storage import ArtifactChecksumError, artifact_read

    try:
        return artifact_read(name, sha256)
    except FileNotFoundError:
        raise ArtifactMissingError(
            f"{what} could not be loaded: its file is missing from the store."
        ) from None
    except ArtifactChecksumError as exc:
        raise ArtifactIntegrityError(
            f"Artifact checksum mismatch (expected sha256 {sha256[:12]}…, got {exc.actual[:12]}…); "
            "refusing to load it."
        ) from None


def load_version_estimator(version: Any) -> Any:
    """A version's estimator, from verified bytes."""
    data = read_verified(version.artifact.name, version.artifact_sha256, what=str(version))
    return deserialize_estimator(data, version.artifact_format, what=str(version))
