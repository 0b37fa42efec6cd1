"""Size checks for compressed containers, run before anything opens them for real.

A file of a megabyte can inflate to gigabytes (a "bomb"): one zip member of zeros, a tar.gz,
a Parquet column. Every reader of such a file (skops artifacts, MLflow model zips, datasets,
backups) first passes it through one of these functions, which check each member's declared
size, then stream it (nothing is held in memory past one chunk) and stop as soon as its actual
size, the archive's total or the compression ratio passes the limits in settings:

    ARCHIVE_MAX_MEMBER_SIZE  bytes one member may inflate to
    ARCHIVE_MAX_TOTAL_SIZE   bytes all members together may inflate to
    ARCHIVE_MAX_RATIO        inflated / compressed size, checked once a member (or a tar
                             stream) is past ARCHIVE_RATIO_GRACE_SIZE, so small members of
                             constant values are not refused for compressing well

A refusal is an ArchiveError (400) naming the member and the limit it passed.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import re
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from django.conf import settings

from config.errors import ValidationFailed

CHUNK_SIZE = 1024 * 1024
# Rows of a Parquet file decoded at a time: small enough that one batch of wide rows stays far
# below the memory the limits protect.
BATCH_ROWS = 16384


class ArchiveError(ValidationFailed):
    error_type = "archive_refused"

    def __init__(self, message: str, *, field: str, member: str = ""):
        super().__init__(message, fields={field: [message]})
        self.member = member


class ArchiveUnreadable(ArchiveError):
    """Not an archive of the expected kind at all (or a truncated or corrupt one)."""

    error_type = "archive_unreadable"


@dataclass(frozen=True)
class ArchiveLimits:
    max_member_size: int
    max_total_size: int | None  # None: bounded only per member and by the ratio
    max_ratio: float
    ratio_grace_size: int

    @classmethod
    def from_settings(cls, **overrides: Any) -> ArchiveLimits:
        limits = cls(
            max_member_size=settings.ARCHIVE_MAX_MEMBER_SIZE,
            max_total_size=settings.ARCHIVE_MAX_TOTAL_SIZE,
            max_ratio=settings.ARCHIVE_MAX_RATIO,
            ratio_grace_size=settings.ARCHIVE_RATIO_GRACE_SIZE,
        )
        return dataclasses.replace(limits, **overrides)


class _Guard:
    """Counts inflated bytes against the limits; `what` and `field` name the refusal."""

    def __init__(self, limits: ArchiveLimits, *, what: str, field: str):
        self.limits = limits
        self.what = what
        self.field = field
        self.total = 0

    def refuse(self, member: str, problem: str) -> ArchiveError:
        return ArchiveError(
            f"{self.what}: member {member!r} {problem}.", field=self.field, member=member
        )

    def size(self, member: str, size: int) -> None:
        if size > self.limits.max_member_size:
            raise self.refuse(
                member,
                f"inflates to more than {self.limits.max_member_size} bytes "
                "(ARCHIVE_MAX_MEMBER_SIZE)",
            )

    def add_total(self, member: str, size: int) -> None:
        self.total += size
        limit = self.limits.max_total_size
        if limit is not None and self.total > limit:
            raise self.refuse(
                member,
                f"takes the archive past {limit} bytes inflated (ARCHIVE_MAX_TOTAL_SIZE)",
            )

    def ratio(self, member: str, inflated: int, compressed: int) -> None:
        if inflated <= self.limits.ratio_grace_size:
            return
        if inflated > self.limits.max_ratio * max(compressed, 1):
            raise self.refuse(
                member,
                f"inflates more than {self.limits.max_ratio:g} times its compressed size "
                "(ARCHIVE_MAX_RATIO)",
            )


def _as_file(source: bytes | IO[bytes]) -> IO[bytes]:
    return io.BytesIO(source) if isinstance(source, bytes | bytearray | memoryview) else source


def zip_check(
    source: bytes | IO[bytes],
    *,
    what: str,
    field: str,
    limits: ArchiveLimits | None = None,
) -> None:
    """Checks every member of a zip before anyone reads it; ArchiveError names the first one
    past a limit, or says the zip is unreadable.

    Declared sizes come first (free); then each compressed member is inflated in chunks and
    counted, stopping at the limit, since a member may lie about its size. A stored member
    cannot inflate: its bytes are the ones in the file.
    """
    guard = _Guard(limits or ArchiveLimits.from_settings(), what=what, field=field)
    try:
        with zipfile.ZipFile(_as_file(source)) as archive:
            members = [info for info in archive.infolist() if not info.is_dir()]
            declared = _Guard(guard.limits, what=what, field=field)
            for info in members:
                declared.size(info.filename, info.file_size)
                declared.add_total(info.filename, info.file_size)
                declared.ratio(info.filename, info.file_size, info.compress_size)
            for info in members:
                if info.compress_type == zipfile.ZIP_STORED:
                    guard.add_total(info.filename, info.compress_size)
                    continue
                inflated = 0
                with archive.open(info) as member:
                    while chunk := member.read(CHUNK_SIZE):
                        inflated += len(chunk)
                        guard.size(info.filename, inflated)
                        guard.add_total(info.filename, len(chunk))
                        guard.ratio(info.filename, inflated, info.compress_size)
    except ArchiveError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError) as exc:
        raise ArchiveUnreadable(
            f"{what} is not a readable zip archive ({type(exc).__name__}: {exc}).", field=field
        ) from None
    except (NotImplementedError, RuntimeError) as exc:  # unknown method, encrypted member
        raise ArchiveUnreadable(f"{what} cannot be read: {exc}.", field=field) from None


class _InflateCounter(io.RawIOBase):
    """A gzip (or plain) stream read through the guard: the ratio of bytes inflated so far to
    compressed bytes consumed so far is checked on every read, so the tar reader's own header
    buffering (pax and long-name headers are read whole) cannot inflate past the limits."""

    def __init__(self, raw: IO[bytes], guard: _Guard):
        self.raw = raw
        head = raw.read(2)
        raw.seek(0)
        # mode="rb": a spooled upload is opened w+b, which GzipFile would take for a write.
        gzipped = head == b"\x1f\x8b"
        self.stream: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
        self.guard = guard
        self.inflated = 0
        self.member = "(archive header)"

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.stream.read(min(len(buffer), CHUNK_SIZE))
        buffer[: len(data)] = data
        self.inflated += len(data)
        self.guard.ratio(self.member, self.inflated, self.raw.tell())
        return len(data)


def member_name_problem(name: str) -> str | None:
    """Why an archive member's name may not be unpacked below a folder (an absolute path, a
    drive letter, a `..` step, a NUL), or None. Links and devices are the reader's to refuse:
    each archive format marks them its own way."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return f"{name!r}: absolute path"
    if ".." in parts:
        return f"{name!r}: path escapes the archive (..)"
    if "\x00" in name:
        return f"{name!r}: NUL in the name"
    return None


def tar_check(
    path: Path | str | IO[bytes],
    *,
    what: str,
    field: str,
    limits: ArchiveLimits | None = None,
) -> None:
    """Checks a tar or tar.gz (a path, or an open binary file from its start) member by member
    before it is extracted; ArchiveError names the first member past a limit. One gzip stream
    has no per-member compressed size, so the ratio is the whole stream's so far."""
    guard = _Guard(limits or ArchiveLimits.from_settings(), what=what, field=field)
    try:
        opened = open(path, "rb") if isinstance(path, Path | str) else nullcontext(path)  # noqa: SIM115
        with opened as raw:
            counter = _InflateCounter(raw, guard)
            with tarfile.open(fileobj=io.BufferedReader(counter), mode="r|") as archive:
                for member in archive:
                    counter.member = member.name
                    guard.size(member.name, member.size)
                    if not member.isfile():
                        continue
                    handle = archive.extractfile(member)
                    inflated = 0
                    while chunk := handle.read(CHUNK_SIZE):
                        inflated += len(chunk)
                        guard.size(member.name, inflated)
                        guard.add_total(member.name, len(chunk))
                    counter.member = f"(header after {member.name})"
    except ArchiveError:
        raise
    except (tarfile.TarError, zlib.error, EOFError, OSError) as exc:
        raise ArchiveUnreadable(
            f"{what} is not a readable tar archive ({type(exc).__name__}: {exc}).", field=field
        ) from None


def parquet_batches(
    source: bytes,
    *,
    what: str,
    field: str,
    max_rows: int,
    limits: ArchiveLimits | None = None,
) -> Iterator[Any]:
    """Yields a Parquet file's record batches after checking what its footer declares (rows,
    each column chunk's inflated size and ratio), counting the bytes each batch decodes to.

    Parquet compresses twice: a codec (zstd, gzip) and encodings (run lengths, dictionaries)
    under which a million equal values take a few bytes. The declared checks catch the first;
    counting decoded batches, which are read one at a time, catches the second.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    guard = _Guard(limits or ArchiveLimits.from_settings(), what=what, field=field)
    try:
        parquet = pq.ParquetFile(pa.BufferReader(source))
        metadata = parquet.metadata
        if metadata.num_rows > max_rows:
            raise ArchiveError(
                f"{what} declares {metadata.num_rows} rows, more than {max_rows} "
                "(DATASET_MAX_ROWS).",
                field=field,
            )
        for group in range(metadata.num_row_groups):
            row_group = metadata.row_group(group)
            for index in range(row_group.num_columns):
                column = row_group.column(index)
                member = f"row group {group}, column {column.path_in_schema}"
                guard.size(member, column.total_uncompressed_size)
                guard.ratio(member, column.total_uncompressed_size, column.total_compressed_size)
        decoded = _Guard(guard.limits, what=what, field=field)
        rows = 0
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
            member = f"rows {rows} to {rows + batch.num_rows}"
            rows += batch.num_rows
            if rows > max_rows:
                raise ArchiveError(
                    f"{what} holds more than {max_rows} rows (DATASET_MAX_ROWS).", field=field
                )
            decoded.add_total(member, batch.nbytes)
            # The whole file against what it decodes to: encodings inflate like a codec does.
            decoded.ratio(member, decoded.total, len(source))
            yield batch
    except ArchiveError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ArchiveUnreadable(
            f"{what} is not a readable Parquet file ({type(exc).__name__}: {exc}).", field=field
        ) from None
