"""Batch scoring jobs: a CSV or Parquet file scored by one version, chunk by chunk, by workers.

A job is created (`batch_job_create`, 202 from the API) over a file in the artifact storage (an
upload or a dataset's file). A Parquet file is hashed whole and block by block when it is
uploaded or registered as a dataset. A worker plans the job (`batch_job_start`): it stages a
CSV as Parquet (row groups of `chunk_rows`, read with pyarrow, checking the CSV's SHA-256 as it
reads it), reads a Parquet file's footer, and records one BatchChunk per slice of rows. Each
run of a job is a Celery chord (predictions.tasks): its header is one task per pending chunk
(`batch_chunk_run`), which any worker may take: it reads its row groups through
`_VerifiedInput`, which checks every block it hands over, validates its rows against the
version's schema column by column, scores the valid ones with the serving path's loader (the
verified artifact and the same predict arithmetic), and writes its own part. The body,
`batch_job_finish`, merges the parts into one output file and one errors file (when a chunk
did not check what it read, or the job has no block digests, while it checks the file whole,
publishing nothing unless it matches).

The job row keeps the count: a chunk is counted once, under the job's row lock, however often
it is delivered. Every task is idempotent: a done chunk is skipped, a retried one rewrites only
its own part, a finished job is left alone. Chunk tasks stamp the job's heartbeat; the
stalled-job reaper fails a job whose workers all stopped (`worker_lost`), and
`batch_job_resume` sends its remaining chunks as a new chord.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import io
import itertools
import logging
import math
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import PurePath
from typing import IO, Any

import numpy as np
from django.apps import apps
from django.conf import settings
from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import Storage
from django.db import OperationalError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from config.dispatch import Sending, send_on_commit
from config.errors import (
    ConflictError,
    DomainError,
    NotFoundError,
    PayloadTooLarge,
    ValidationFailed,
)
from config.job_heartbeats import job_heartbeat
from mlregistry.artifacts import BLOCK_MIN, BlockDigests, block_digests, block_size_for
from mlregistry.audit import Actor, audit_record, created_changes, deleted_changes
from mlregistry.models import ModelVersion, RegisteredModel, Stage
from mlregistry.selectors import model_version_by_alias_get
from mlregistry.storage import (
    MovableFile,
    ScratchFile,
    WriteBehind,
    arrow_input,
    arrow_input_open,
    get_artifact_storage,
    presigned_url,
    storage_delete_folder,
    storage_fsyncs,
    storage_work_folder,
    stored_sha256,
)
from predictions.loader import LoadedModel, model_cache
from predictions.models import (
    BATCH_FINISHED,
    BatchChunk,
    BatchFormat,
    BatchJob,
    BatchStatus,
)

# The predict arithmetic of the serving path: one import to follow if it moves.
from predictions.serving import non_finite_rows, predict_arrays, rows_without_answer, version_info
from predictions.validation import in_range, row_errors

logger = logging.getLogger(__name__)

JOB_ACTOR = "job:batch"
PREFIX = "batch-jobs"
PARQUET_MAGIC = b"PAR1"
_HASH_BLOCK = 4 * 1024 * 1024


class BatchJobFailed(DomainError):
    """The job cannot go on: `problem` names why (kept as the job's error_type)."""

    def __init__(self, problem: str, message: str):
        super().__init__(message)
        self.problem = problem


@dataclass(frozen=True)
class _InputFile:
    """A job's input file in the artifact storage. block_size is None and block_sha256 empty
    when it has no block digests (a CSV; a dataset registered without them): see
    BatchJob.parquet_block_sha256."""

    name: str
    file_format: str
    sha256: str
    size: int | None
    block_size: int | None
    block_sha256: bytes


# --- Datasets: the one place this module reads them from ---------------------------------------


def _dataset_input(dataset_id: int) -> tuple[_InputFile, str]:
    """(the file, its label) of a file dataset; ValidationFailed naming `dataset` when there is
    no such dataset or it is not a file."""
    dataset_model = apps.get_model("quality", "Dataset")
    dataset = dataset_model.objects.filter(pk=dataset_id).first()
    if dataset is None:
        raise ValidationFailed(
            f"There is no dataset {dataset_id}.",
            fields={"dataset": [f"no dataset with id {dataset_id}"]},
        )
    if not dataset.file:
        raise ValidationFailed(
            f"Dataset {dataset.name!r} is an SQL query; batch jobs read files (CSV or Parquet).",
            fields={"dataset": ["must be a file dataset (CSV or Parquet)"]},
        )
    stored = _InputFile(
        name=dataset.file.name,
        file_format=dataset.file_format,
        sha256=dataset.file_sha256,
        size=dataset.file_size,
        block_size=dataset.file_block_size,
        block_sha256=bytes(dataset.file_block_sha256),
    )
    return stored, dataset.name


# --- Versions and aliases -------------------------------------------------------------------


def batch_alias_resolve(*, model: RegisteredModel, alias: str) -> ModelVersion:
    """The version `alias` names on `model` (`latest`: the highest version that is not
    archived), as mlregistry.selectors.model_version_by_alias_get resolves it for the alias
    routes; ValidationFailed naming `alias` when it names none."""
    try:
        return model_version_by_alias_get(name=model.name, alias=alias)
    except NotFoundError:
        raise ValidationFailed(
            f"Model {model.name!r} has no alias {alias[:80]!r}.",
            fields={"alias": [f"no alias {alias[:80]!r} on this model"]},
        ) from None


def batch_version_resolve(
    *, model: RegisteredModel, version: int | None, alias: str = ""
) -> ModelVersion:
    """The version a job scores with: `version` (a number), else `alias`, else the production
    version. ValidationFailed (400) naming `version` or `alias` when it does not exist."""
    if version is not None and alias:
        raise ValidationFailed(
            "Give a version or an alias, not both.",
            fields={"alias": ["give either version or alias"]},
        )
    if alias:
        return batch_alias_resolve(model=model, alias=alias)
    if version is not None:
        found = ModelVersion.objects.filter(model=model, version=version).first()
        if found is None:
            raise ValidationFailed(
                f"Model {model.name!r} has no version {version}.",
                fields={"version": [f"no version {version} of this model"]},
            )
        return found
    found = ModelVersion.objects.filter(model=model, stage=Stage.PRODUCTION).first()
    if found is None:
        raise ValidationFailed(
            f"Model {model.name!r} has no production version: name a version or an alias.",
            fields={"version": ["no production version; give a version or an alias"]},
        )
    return found


# --- Reading inputs -------------------------------------------------------------------------


def _format_of(upload: Any, name: str) -> str:
    upload.seek(0)
    head = upload.read(4)
    upload.seek(0)
    if head == PARQUET_MAGIC:
        return BatchFormat.PARQUET
    if PurePath(name).suffix.lower() in (".parquet", ".pq"):
        raise ValidationFailed(
            "The file is named as Parquet but is not a Parquet file.",
            fields={"file": ["not a Parquet file"]},
        )
    return BatchFormat.CSV


def _input_columns(
    source: Any, file_format: str, *, field: str = "file"
) -> tuple[Any, int | None, list[int] | None]:
    """(the columns' Arrow schema, rows or None when unknown without a full read, rows per row
    group of a Parquet file); ValidationFailed naming `field` when pyarrow cannot read it or its
    footer is past BATCH_MAX_FOOTER_BYTES. A CSV's types are pyarrow's guess from its first
    block: its features are staged as text and parsed row by row."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        if file_format == BatchFormat.PARQUET:
            problem = _footer_problem(source)
            if problem:
                raise ValidationFailed(problem, fields={field: [problem]})
            meta = pq.ParquetFile(source).metadata
            groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
            return meta.schema.to_arrow_schema(), meta.num_rows, groups
        # Only the header matters here; a line with the wrong field count is an invalid row
        # of the job (_stage_csv), not an unreadable file.
        reader = pacsv.open_csv(
            source,
            read_options=pacsv.ReadOptions(block_size=1 << 20),
            parse_options=pacsv.ParseOptions(invalid_row_handler=lambda row: "skip"),
        )
        return reader.schema, None, None
    except (pa.ArrowException, OSError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise ValidationFailed(
            f"The file is not readable as {file_format}: {detail}",
            fields={field: [f"not a readable {file_format} file"]},
        ) from None


def _footer_problem(source: Any) -> str | None:
    """Why a Parquet file's footer is too large to parse in every chunk, read from its last 8
    bytes before pyarrow parses it (None when it is not, or the file is no Parquet: pyarrow
    then says why)."""
    if isinstance(source, str):
        with open(source, "rb") as handle:
            return _footer_problem(handle)
    position = source.tell()
    try:
        source.seek(-8, os.SEEK_END)
        tail = source.read(8)
    except (OSError, ValueError):
        return None
    finally:
        source.seek(position)
    if len(tail) != 8 or tail[4:] != PARQUET_MAGIC:
        return None
    length = int.from_bytes(tail[:4], "little")
    if length <= settings.BATCH_MAX_FOOTER_BYTES:
        return None
    return (
        f"The Parquet footer is {length} bytes (BATCH_MAX_FOOTER_BYTES: "
        f"{settings.BATCH_MAX_FOOTER_BYTES}): write the file with fewer, larger row groups."
    )


def _row_group_problem(groups: list[int], width: int) -> str | None:
    """Why a row group is too large for a chunk to decode (BATCH_MAX_ROW_GROUP_BYTES, counted
    as rows x `width` feature columns x 8 bytes), or None; `width` 0 checks nothing."""
    if width == 0:
        return None
    limit = settings.BATCH_MAX_ROW_GROUP_BYTES
    for i, rows in enumerate(groups):
        if rows * max(width, 1) * 8 > limit:
            most = max(1, limit // (max(width, 1) * 8))
            return (
                f"Row group {i} holds {rows} rows, about {rows * max(width, 1) * 8} bytes of "
                f"{width} features once decoded (BATCH_MAX_ROW_GROUP_BYTES: {limit}): write "
                f"the file with row groups of at most {most} rows."
            )
    return None


def _columns_check(columns: Any, version: ModelVersion, *, field: str, typed: bool) -> None:
    """ValidationFailed naming `field` when a required feature column is missing, a feature's
    column appears more than once, or (for a `typed` input: Parquet) a feature's column holds
    values it cannot take: a number or boolean feature from dates, times, binary or nested
    values (lists, structs, maps), a text feature from nested values. Each would otherwise be
    scored as something it is not (a timestamp as its nanoseconds) or fail every chunk;
    numbers, text and booleans are checked row by row, bad rows going to the errors file."""
    names = list(columns.names)
    missing = [
        f["name"]
        for f in version.input_schema
        if f.get("required", True) and f["name"] not in names
    ]
    if missing:
        raise ValidationFailed(
            f"The input lacks the required feature column(s) {', '.join(map(repr, missing))} "
            f"of v{version.version}'s schema.",
            fields={field: [f"missing columns: {', '.join(missing)}"]},
        )
    repeated = [f["name"] for f in version.input_schema if names.count(f["name"]) > 1]
    if repeated:
        raise ValidationFailed(
            f"Feature column(s) named more than once: {', '.join(map(repr, repeated))}.",
            fields={field: [f"repeated columns: {', '.join(repeated)}"]},
        )
    if not typed:
        return
    unusable = []
    for feature in version.input_schema:
        if feature["name"] not in names:
            continue  # an absent optional feature
        arrow_type = columns.field(feature["name"]).type
        if not _usable_type(arrow_type, feature.get("type", "float")):
            unusable.append(f"{feature['name']} ({_shorter(str(arrow_type))})")
    if unusable:
        raise ValidationFailed(
            f"Feature column(s) of a type their feature cannot take: {', '.join(unusable)}. "
            "Number and boolean features take numbers, text or booleans; text features any "
            "value but lists, structs and maps. Convert these columns before scoring.",
            fields={field: [f"unusable column types: {', '.join(unusable)}"]},
        )


def _usable_type(arrow_type: Any, kind: str) -> bool:
    """Whether a column of `arrow_type` can feed a feature of schema type `kind`, as
    _column_values reads it."""
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        return _usable_type(arrow_type.value_type, kind)
    if pa.types.is_nested(arrow_type):
        return False
    if kind == "string":
        return True  # cast to text
    return (
        pa.types.is_integer(arrow_type)
        or pa.types.is_floating(arrow_type)
        or pa.types.is_decimal(arrow_type)
        or pa.types.is_boolean(arrow_type)
        or pa.types.is_string(arrow_type)
        or pa.types.is_large_string(arrow_type)
        or pa.types.is_string_view(arrow_type)
        or pa.types.is_null(arrow_type)
    )


def _shorter(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _upload_store(upload: Any) -> _InputFile:
    """Saves an uploaded file content-addressed, hashing it whole and, for Parquet, block by
    block in the same read (which costs the web process a second SHA-256 of the upload, and
    spares every chunk and the finish a read of the whole file)."""
    size = getattr(upload, "size", None)
    if size is None:
        size = upload.seek(0, os.SEEK_END)
    if size > settings.BATCH_MAX_INPUT_SIZE:
        raise PayloadTooLarge(
            f"The file is {size} bytes; batch inputs may be {settings.BATCH_MAX_INPUT_SIZE} "
            "(BATCH_MAX_INPUT_SIZE).",
            fields={"file": ["too large"]},
        )
    file_format = _format_of(upload, getattr(upload, "name", "") or "")
    digest = hashlib.sha256()
    parquet = file_format == BatchFormat.PARQUET
    blocks = BlockDigests(block_size_for(size)) if parquet else None
    read = 0
    upload.seek(0)
    for block in iter(partial(upload.read, _HASH_BLOCK), b""):
        digest.update(block)
        read += len(block)
        if blocks is not None:
            blocks.update(block)
    upload.seek(0)
    sha256 = digest.hexdigest()
    name = f"{PREFIX}/inputs/{sha256}.{file_format}"
    get_artifact_storage().save(name, File(upload))
    return _InputFile(
        name=name,
        file_format=file_format,
        sha256=sha256,
        size=read,
        block_size=blocks.block_size if blocks is not None else None,
        block_sha256=blocks.digests() if blocks is not None else b"",
    )


# --- Creating, cancelling, resuming ---------------------------------------------------------

_AUDITED = (
    "model",
    "version",
    "version_number",
    "alias",
    "input_name",
    "input_format",
    "input_sha256",
    "input_label",
    "dataset_id",
    "output_format",
    "chunk_rows",
    "max_error_share",
    "created_by",
)


def _start_send(job_id: int) -> Sending:
    """Sends the job's start task once the transaction commits; if the broker does not take
    it, the job is failed `unavailable` (resumable) rather than left queued for no worker."""

    def send() -> None:
        from predictions.tasks import batch_job_start_task

        batch_job_start_task.apply_async((job_id,), queue=settings.BATCH_QUEUE or None)

    def unsent(reason: str) -> None:
        _fail(
            job_id,
            problem="unavailable",
            message=f"The job could not be sent to the workers ({reason}); resume it once the "
            "broker is back.",
        )

    return send_on_commit(send, task="batch_job_start_task", on_failure=unsent)


def _unsent_message(job: BatchJob) -> str:
    return (
        f"Batch job {job.pk} is recorded but could not be sent to the workers, so it is marked "
        f"failed; resume it (POST .../batch-jobs/{job.pk}/resume) once the broker is back"
    )


def batch_job_create(
    *,
    model: RegisteredModel,
    actor: Actor,
    dataset: int | None = None,
    upload: IO[bytes] | None = None,
    version: int | None = None,
    alias: str = "",
    output_format: str = BatchFormat.PARQUET,
    chunk_rows: int | None = None,
    max_error_share: float | None = None,
    enqueue: bool = True,
) -> BatchJob:
    """Records a batch job over an uploaded CSV/Parquet file or a file dataset (exactly one),
    scored by `version`, `alias` or the production version; a worker starts it after commit.

    chunk_rows: 1..BATCH_CHUNK_ROWS_MAX (default BATCH_CHUNK_ROWS); max_error_share: 0..1
    (default BATCH_MAX_ERROR_SHARE). ValidationFailed (400) names the offending field
    (`file`, `dataset`, `version`, `alias`, `chunk_rows`, ...); PayloadTooLarge
    (413) for a file over BATCH_MAX_INPUT_SIZE. Nothing is written when it fails, but an
    upload's content-addressed file, which retention removes with the jobs that read it.
    """
    errors: dict[str, list[str]] = {}
    if (dataset is None) == (upload is None):
        errors["file"] = errors["dataset"] = ["give exactly one of file or dataset"]
    chunk_rows = settings.BATCH_CHUNK_ROWS if chunk_rows is None else chunk_rows
    if not (isinstance(chunk_rows, int) and 1 <= chunk_rows <= settings.BATCH_CHUNK_ROWS_MAX):
        errors["chunk_rows"] = [
            f"must be an integer from 1 to {settings.BATCH_CHUNK_ROWS_MAX} (BATCH_CHUNK_ROWS_MAX)"
        ]
    share = settings.BATCH_MAX_ERROR_SHARE if max_error_share is None else max_error_share
    if not (isinstance(share, int | float) and math.isfinite(share) and 0 <= share <= 1):
        errors["max_error_share"] = ["must be a number from 0 to 1"]
    if output_format not in BatchFormat.values:
        errors["output_format"] = [f"must be one of {', '.join(BatchFormat.values)}"]
    if errors:
        raise ValidationFailed("Invalid batch job.", fields=errors)
    scored_by = batch_version_resolve(model=model, version=version, alias=alias)
    storage = get_artifact_storage()
    if upload is not None:
        file_format = _format_of(upload, getattr(upload, "name", "") or "")
        upload.seek(0)
        columns, rows, groups = _input_columns(upload, file_format)
        problem = groups and _row_group_problem(groups, len(scored_by.input_schema or []))
        if problem:
            raise ValidationFailed(problem, fields={"file": [problem]})
        if rows is not None and math.ceil(rows / chunk_rows) > settings.BATCH_MAX_CHUNKS:
            raise ValidationFailed(
                f"{rows} rows in chunks of {chunk_rows} make {math.ceil(rows / chunk_rows)} "
                f"chunks; a job may have {settings.BATCH_MAX_CHUNKS} (BATCH_MAX_CHUNKS).",
                fields={"chunk_rows": [f"at least {math.ceil(rows / settings.BATCH_MAX_CHUNKS)}"]},
            )
        _columns_check(columns, scored_by, field="file", typed=file_format == BatchFormat.PARQUET)
        stored = _upload_store(upload)
        label = PurePath(getattr(upload, "name", "") or "upload").name[:300]
    else:
        stored, label = _dataset_input(dataset)
        input_name, file_format = stored.name, stored.file_format
        if not storage.exists(input_name):
            raise ValidationFailed(
                f"The file of dataset {label!r} is gone.",
                fields={"dataset": ["the dataset's file is missing"]},
            )
        # Only the footer, by byte ranges on S3 (mlregistry.storage.arrow_input).
        with arrow_input_open(storage, input_name) as source:
            columns, _, groups = _input_columns(source, file_format, field="dataset")
        problem = groups and _row_group_problem(groups, len(scored_by.input_schema or []))
        if problem:
            raise ValidationFailed(problem, fields={"dataset": [problem]})
        _columns_check(
            columns, scored_by, field="dataset", typed=file_format == BatchFormat.PARQUET
        )
    user = None if isinstance(actor, str) else actor
    with transaction.atomic():
        job = BatchJob.objects.create(
            model=model,
            version=scored_by,
            version_number=scored_by.version,
            alias=alias,
            input_name=stored.name,
            input_format=stored.file_format,
            input_sha256=stored.sha256,
            parquet_size=stored.size if stored.block_size else None,
            parquet_block_size=stored.block_size,
            parquet_block_sha256=stored.block_sha256,
            input_label=label,
            dataset_id=dataset,
            output_format=output_format,
            chunk_rows=chunk_rows,
            max_error_share=float(share),
            created_by=user,
        )
        audit_record(actor=actor, verb="create", obj=job, changes=created_changes(job, _AUDITED))
        sending = _start_send(job.pk) if enqueue else None
    logger.info("batch job created", extra={"job": job.pk, "model": model.name})
    if sending is not None:
        sending.raise_if_failed(_unsent_message(job))
    return job


def _locked(job_id: int) -> BatchJob:
    # Without the block digests (up to 128 KiB): only chunks and planning read them.
    return BatchJob.objects.select_for_update().defer("parquet_block_sha256").get(pk=job_id)


def batch_job_cancel(*, job: BatchJob, actor: Actor) -> BatchJob:
    """Stops a queued or running job: no chunk starts after this commits, and a chunk running
    now discards its result. ConflictError (409) when the job already finished."""
    with transaction.atomic():
        job = _locked(job.pk)
        if job.status in BATCH_FINISHED:
            raise ConflictError(
                f"Batch job {job.pk} already {job.status}; only a queued or running job can "
                "be cancelled.",
                fields={"status": [f"is {job.status}"]},
            )
        before = job.status
        job.status = BatchStatus.CANCELLED
        job.finished_at = timezone.now()
        actor_name = actor if isinstance(actor, str) else actor.get_username()
        job.error = f"Cancelled by {actor_name}."
        job.save(update_fields=["status", "finished_at", "error", "updated_at"])
        audit_record(actor=actor, verb="cancel", obj=job, changes={"status": [before, job.status]})
    return job


# A job failed for one of these reasons can go on where it stopped; others would fail again.
RESUMABLE_PROBLEMS = ("worker_lost", "chunk_error", "finish_error", "unavailable", "part_lost")


def batch_job_resume(*, job: BatchJob, actor: Actor) -> BatchJob:
    """Runs a job's unfinished chunks again: a job failed because its workers stopped (the
    reaper's `worker_lost`) or a chunk crashed, or one still queued. Done chunks are kept.
    ConflictError (409) for a job that succeeded, was cancelled, or failed for its data."""
    with transaction.atomic():
        job = _locked(job.pk)
        resumable = job.status == BatchStatus.QUEUED or (
            job.status == BatchStatus.FAILED and job.error_type in RESUMABLE_PROBLEMS
        )
        if not resumable:
            raise ConflictError(
                f"Batch job {job.pk} is {job.status}"
                + (f" ({job.error_type})" if job.error_type else "")
                + "; only a queued job or one whose workers stopped can be resumed.",
                fields={"status": [f"is {job.status}"]},
            )
        before = {"status": job.status, "error_type": job.error_type}
        job.status = BatchStatus.RUNNING if job.chunks_total is not None else BatchStatus.QUEUED
        job.error_type = ""
        job.error = ""
        job.finished_at = None
        # With the status, or the reaper could judge this run by the last one's heartbeat.
        job.heartbeat_at = timezone.now()
        job.input_verified_at = None
        job.save(
            update_fields=[
                "status",
                "error_type",
                "error",
                "finished_at",
                "heartbeat_at",
                "input_verified_at",
                "updated_at",
            ]
        )
        job.chunks.exclude(status=BatchChunk.Status.DONE).update(status=BatchChunk.Status.PENDING)
        audit_record(
            actor=actor,
            verb="resume",
            obj=job,
            changes={
                "status": [before["status"], job.status],
                "error_type": [before["error_type"], ""],
            },
        )
        sending = _start_send(job.pk)
    sending.raise_if_failed(_unsent_message(job))
    return job


def _fail(job_id: int, *, problem: str, message: str) -> BatchJob | None:
    """Marks a running job failed with `message`; a job already finished is left alone."""
    with transaction.atomic():
        job = _locked(job_id)
        if job.status in BATCH_FINISHED:
            return job
        before = job.status
        job.status = BatchStatus.FAILED
        job.error_type = problem[:50]
        job.error = message
        job.finished_at = timezone.now()
        job.save(update_fields=["status", "error_type", "error", "finished_at", "updated_at"])
        audit_record(
            actor=JOB_ACTOR,
            verb="fail",
            obj=job,
            changes={"status": [before, job.status], "error_type": ["", job.error_type]},
        )
    logger.warning("batch job failed", extra={"job": job_id, "problem": problem})
    return job


# --- Planning and verifying ------------------------------------------------------------------


class _HashingReader(io.RawIOBase):
    """A read-only stream over `source` that feeds every byte read through SHA-256, so a file
    read once (a CSV being staged) is verified by that same read."""

    def __init__(self, source: IO[bytes]):
        self._source = source
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._source.read(len(buffer))
        self.digest.update(data)
        buffer[: len(data)] = data
        return len(data)

    def drain(self) -> str:
        """Reads what the consumer left unread; the hex SHA-256 of the whole stream."""
        for block in iter(partial(self._source.read, _HASH_BLOCK), b""):
            self.digest.update(block)
        return self.digest.hexdigest()


def _integrity_failed(name: str) -> BatchJobFailed:
    return BatchJobFailed(
        "input_integrity",
        f"The input file {name} no longer has the SHA-256 it was submitted with.",
    )


def _sha256_of(storage: Storage, name: str) -> str:
    try:
        return stored_sha256(storage, name)
    except FileNotFoundError:
        raise BatchJobFailed("input_missing", f"The input file {name} is gone.") from None


class _VerifiedInput(io.RawIOBase):
    """The Parquet file a job's chunks read, as pyarrow reads it (read-only, seekable), every
    byte checked before it is handed over: bytes are fetched in whole blocks (of the job's
    parquet_block_size) and each block's SHA-256 is checked against the digest recorded when
    the file was written or first hashed (BatchJob.parquet_block_sha256). So planning reads a
    footer, and a chunk scores rows, only of the bytes that were submitted, without a read of
    the whole file. A block that differs, or a file cut short, raises BatchJobFailed
    `input_integrity`; bytes past the recorded size are never read.

    `prefetch` fetches the blocks of the byte ranges a chunk is about to read (its column
    chunks), several ranges at once where the source reads by ranges (S3: pyarrow calls this
    object under one lock, so its own reads would go one at a time). A read outside what was
    fetched fetches its blocks itself, in one read of the source. `read` gives memoryviews of
    the fetched bytes, which pyarrow takes without a copy.

    `source` is a local file, a `pyarrow.NativeFile` (S3: one range request per read) or a
    storage file."""

    # Range requests in flight at once, as pyarrow's own I/O pool (8 threads) would send them.
    FETCHES = 8
    # Spans fetched outside a prefetch that are kept: pyarrow reads the footer's more than once.
    KEPT = 2

    def __init__(self, source: Any, job: BatchJob):
        self._source = source
        self._name = _staged_name(job)
        self._size = job.parquet_size or 0
        self._block = job.parquet_block_size or BLOCK_MIN
        self._digests = bytes(job.parquet_block_sha256)
        self._position = 0
        # Checked bytes held: (first block, last block, their bytes), prefetched then kept.
        self._prefetched: list[tuple[int, int, memoryview]] = []
        self._kept: list[tuple[int, int, memoryview]] = []

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence not in (os.SEEK_SET, os.SEEK_CUR, os.SEEK_END):
            raise ValueError(f"invalid whence ({whence})")
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def read(self, size: int | None = -1) -> memoryview:  # type: ignore[override]
        end = self._size if size is None or size < 0 else min(self._size, self._position + size)
        if end <= self._position:
            return memoryview(b"")
        first, last = self._position // self._block, (end - 1) // self._block
        data = self._blocks(first, last)
        offset = self._position - first * self._block
        self._position = end
        return data[offset : end - first * self._block]

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        data = self.read(len(target))
        target[: len(data)] = data
        return len(data)

    def prefetch(self, ranges: list[tuple[int, int]]) -> None:
        """Fetches and checks the blocks holding byte ranges [start, end), ranges whose blocks
        touch or overlap merged into one read; replaces what an earlier prefetch held."""
        spans: list[list[int]] = []
        for start, end in sorted(ranges):
            # Offsets from the footer: checked bytes, but of a file anyone may have written.
            start, end = max(start, 0), min(end, self._size)
            if end <= start:
                continue
            first, last = start // self._block, (end - 1) // self._block
            if spans and first <= spans[-1][1] + 1:
                spans[-1][1] = max(spans[-1][1], last)
            else:
                spans.append([first, last])
        self._prefetched = []
        if len(spans) > 1 and hasattr(self._source, "read_at"):
            with ThreadPoolExecutor(
                max_workers=min(self.FETCHES, len(spans)), thread_name_prefix="batch-read"
            ) as pool:
                self._prefetched = list(pool.map(lambda span: self._fetch(*span), spans))
        else:
            self._prefetched = [self._fetch(first, last) for first, last in spans]

    def _blocks(self, first: int, last: int) -> memoryview:
        """Blocks first..last (inclusive), checked, as one buffer."""
        for held_first, held_last, held in (*self._prefetched, *self._kept):
            if held_first <= first and last <= held_last:
                begin = (first - held_first) * self._block
                return held[begin : begin + (last - first + 1) * self._block]
        fetched = self._fetch(first, last)
        self._kept = [*self._kept[-(self.KEPT - 1) :], fetched]
        return fetched[2]

    def _fetch(self, first: int, last: int) -> tuple[int, int, memoryview]:
        begin = first * self._block
        length = min((last + 1) * self._block, self._size) - begin
        view = memoryview(self._read_source(begin, length))
        if len(view) != length:
            raise _integrity_failed(self._name)
        for i in range(first, last + 1):
            block = view[(i - first) * self._block : (i - first + 1) * self._block]
            if hashlib.sha256(block).digest() != self._digests[i * 32 : i * 32 + 32]:
                raise _integrity_failed(self._name)
        return first, last, view

    def _read_source(self, begin: int, length: int) -> bytes:
        """`length` bytes at `begin`, fewer only at the end of the file."""
        if hasattr(self._source, "read_at"):  # a pyarrow file: thread-safe positioned reads
            return self._source.read_at(length, begin)
        pieces, got = [], 0
        self._source.seek(begin)
        while got < length:
            piece = self._source.read(length - got)
            if not piece:
                break
            pieces.append(piece)
            got += len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _column_ranges(meta: Any, row_groups: list[int], columns: list[str]) -> list[tuple[int, int]]:
    """Byte ranges [start, end) of the column chunks of `columns` (top-level names) in
    `row_groups`, as pyarrow's reader finds them: from the dictionary page when there is one,
    for total_compressed_size bytes."""
    wanted = set(columns)
    ranges = []
    for i in row_groups:
        group = meta.row_group(i)
        for j in range(group.num_columns):
            column = group.column(j)
            if column.path_in_schema.split(".", 1)[0] not in wanted:
                continue
            start = column.data_page_offset
            dictionary = column.dictionary_page_offset
            if column.has_dictionary_page and dictionary and 0 < dictionary < start:
                start = dictionary
            ranges.append((start, start + column.total_compressed_size))
    return ranges


@contextlib.contextmanager
def _input_open(storage: Storage, job: BatchJob) -> Iterator[Any]:
    """The Parquet file a job's planning and chunks read (the input, or a CSV as planning
    staged it), as pyarrow opens it: through _VerifiedInput when the job has its block
    digests; otherwise (a dataset registered before them, verified whole by the finish) as
    `arrow_input` gives it. FileNotFoundError when the file is gone."""
    with arrow_input_open(storage, _staged_name(job)) as source:
        if not job.parquet_block_size:
            yield source
        elif isinstance(source, str):
            with open(source, "rb") as handle:
                yield _VerifiedInput(handle, job)
        else:
            yield _VerifiedInput(source, job)


def _staged_name(job: BatchJob) -> str:
    if job.input_format == BatchFormat.PARQUET:
        return job.input_name
    return f"{PREFIX}/{job.pk}/input.parquet"


# The staged column that holds why a CSV line was not a row (null for the rows that are): a
# name no feature can have (schema names hold no control character).
MALFORMED_COLUMN = "\x1fmalformed"
# Records per batch of the by-record CSV reader.
_RECORDS_PER_BATCH = 10_000


class _MalformedLines(Exception):
    """pyarrow met a CSV line whose field count differs from the header's."""


def _stage_csv(job: BatchJob, storage: Storage, features: list[dict[str, Any]]) -> None:
    """Writes the CSV's feature columns as Parquet, in row groups of chunk_rows, checking the
    CSV's SHA-256 on the way (BatchJobFailed `input_integrity` when it differs), and sets the
    staged file's size and block digests on `job` (parquet_*, which its caller saves). Every
    feature is read as text: one bad value must make one invalid row, not an unreadable file,
    and validation converts the columns vectorised.

    pyarrow's reader does it; but when a line has more or fewer fields than the header, it
    cannot say which line (its streaming reader reports no line number), so the file is read
    again record by record with Python's csv module, which keeps such a line as a row of
    nulls whose MALFORMED_COLUMN says why: the chunk reports it in the errors file under its
    own row number, and every later row keeps its number. About 7 times slower than pyarrow
    (200,000 rows of 20 features: 1.6 s against 0.22 s), and only for such files."""
    names = [f["name"] for f in features]
    name = _staged_name(job)
    with storage_work_folder(storage, name) as folder:
        target = os.path.join(folder, "input.parquet")
        try:
            sha256 = _csv_to_parquet(job, storage, target, partial(_csv_batches_arrow, names))
        except _MalformedLines:
            sha256 = _csv_to_parquet(job, storage, target, partial(_csv_batches_by_record, names))
        if sha256 != job.input_sha256:
            raise _integrity_failed(job.input_name)
        # The staged file is checked as an uploaded Parquet file is: chunks read it later,
        # from a storage other processes write to.
        job.parquet_size = os.path.getsize(target)
        with open(target, "rb") as handle:
            job.parquet_block_size, job.parquet_block_sha256 = block_digests(
                handle, job.parquet_size
            )
        if storage.exists(name):
            storage.delete(name)
        with MovableFile(target) as staged:
            storage.save(name, staged)


def _csv_to_parquet(job: BatchJob, storage: Storage, target: str, batches: Any) -> str:
    """Writes the record batches `batches(stream)` gives ((schema, iterator)) of the job's
    CSV to `target` in row groups of chunk_rows; the hex SHA-256 of the whole CSV.
    BatchJobFailed `input_missing`, `too_many_chunks`, `input_unreadable` (after the bytes are
    found to be the submitted ones: otherwise `input_integrity`); _MalformedLines from the
    pyarrow reader."""
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        handle = storage.open(job.input_name, "rb")
    except FileNotFoundError:
        raise BatchJobFailed("input_missing", f"The input file {job.input_name} is gone.") from None
    source = _HashingReader(handle)
    try:
        schema, reader = batches(source)
        with pq.ParquetWriter(target, schema) as writer:
            pending: list[Any] = []
            held = groups = 0
            for batch in reader:
                pending.append(batch)
                held += batch.num_rows
                while held >= job.chunk_rows:
                    groups += 1
                    if groups > settings.BATCH_MAX_CHUNKS:
                        raise BatchJobFailed("too_many_chunks", _too_many_chunks(groups, job))
                    table = pa.Table.from_batches(pending)
                    writer.write_table(table.slice(0, job.chunk_rows))
                    rest = table.slice(job.chunk_rows)
                    pending, held = rest.to_batches(), rest.num_rows
            if held:
                writer.write_table(pa.Table.from_batches(pending, schema=schema))
        return source.drain()
    except _MalformedLines:
        raise
    except (pa.ArrowException, ValueError, csv.Error) as exc:
        if source.drain() != job.input_sha256:
            raise _integrity_failed(job.input_name) from None
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise BatchJobFailed(
            "input_unreadable", f"The CSV file is not readable: {detail}"
        ) from None
    finally:
        handle.close()


def _csv_batches_arrow(names: list[str], source: Any) -> tuple[Any, Iterator[Any]]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    seen: list[Any] = []

    def malformed(row: Any) -> str:
        seen.append(row)
        return "error"

    convert = pacsv.ConvertOptions(
        column_types={name: pa.string() for name in names},
        include_columns=names,
        include_missing_columns=True,
        strings_can_be_null=True,
    )
    parse = pacsv.ParseOptions(invalid_row_handler=malformed)
    try:
        reader = pacsv.open_csv(source, convert_options=convert, parse_options=parse)
    except pa.ArrowInvalid:
        if seen:
            raise _MalformedLines() from None
        raise

    def batches() -> Iterator[Any]:
        try:
            yield from reader
        except pa.ArrowInvalid:
            if seen:
                raise _MalformedLines() from None
            raise

    return reader.schema, batches()


def _csv_batches_by_record(names: list[str], source: Any) -> tuple[Any, Iterator[Any]]:
    """The CSV as pyarrow reads it (a byte-order mark dropped, blank lines skipped, pyarrow's
    null spellings as nulls, a missing feature column all null, values as text), record by
    record, plus MALFORMED_COLUMN: why a line is not a row, or null. A line longer than
    pyarrow's block (1 MiB) makes the file unreadable, as it does for pyarrow: the csv module
    would otherwise hold a line of any length, field by field, in memory."""
    import csv

    import pyarrow as pa
    import pyarrow.csv as pacsv

    limit = pacsv.ReadOptions().block_size
    text = io.TextIOWrapper(io.BufferedReader(source), "utf-8-sig", newline="")

    def lines() -> Iterator[str]:
        for line in iter(partial(text.readline, limit + 1), ""):
            if len(line) > limit:
                raise ValueError(f"a line is longer than {limit} characters")
            yield line

    records = (record for record in csv.reader(lines()) if record)
    header = next(records, None)
    if header is None:
        raise ValueError("Empty CSV file")
    at = {name: header.index(name) for name in names if name in header}
    null_values = frozenset(pacsv.ConvertOptions().null_values)
    schema = pa.schema([(n, pa.string()) for n in [*names, MALFORMED_COLUMN]])

    def batches() -> Iterator[Any]:
        columns: list[list[Any]] = [[] for _ in range(len(names) + 1)]
        for record in records:
            if len(record) != len(header):
                for column in columns[:-1]:
                    column.append(None)
                columns[-1].append(
                    f"the line has {len(record)} fields where the header has {len(header)}"
                )
            else:
                for column, name in zip(columns, names, strict=False):
                    value = record[at[name]] if name in at else None
                    column.append(None if value is None or value in null_values else value)
                columns[-1].append(None)
            if len(columns[-1]) == _RECORDS_PER_BATCH:
                yield _record_batch(columns, schema)
                columns = [[] for _ in range(len(names) + 1)]
        if columns[-1]:
            yield _record_batch(columns, schema)

    return schema, batches()


def _record_batch(columns: list[list[Any]], schema: Any) -> Any:
    import pyarrow as pa

    arrays = [pa.array(column, pa.string()) for column in columns]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _plan(row_groups: list[int], chunk_rows: int) -> list[tuple[int, int]]:
    """(row_start, row_count) of each chunk: consecutive row groups up to chunk_rows rows,
    a larger row group split into slices of chunk_rows."""
    chunks: list[tuple[int, int]] = []
    start = position = 0
    for rows in row_groups:
        if position > start and position - start + rows > chunk_rows:
            chunks.append((start, position - start))
            start = position
        position += rows
        while position - start > chunk_rows:
            chunks.append((start, chunk_rows))
            start += chunk_rows
    if position > start:
        chunks.append((start, position - start))
    return chunks


def _row_groups(storage: Storage, job: BatchJob, width: int) -> list[int]:
    """Rows per row group, from the Parquet footer; BatchJobFailed when unreadable, or
    (`input_too_large`) when its footer or a row group of `width` features is past its limit
    (checked at creation too; here for a job made before the limits or under others)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with _input_open(storage, job) as source:
            problem = _footer_problem(source)
            if not problem:
                meta = pq.ParquetFile(source).metadata
                groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
                problem = _row_group_problem(groups, width)
            if problem:
                raise BatchJobFailed("input_too_large", problem)
            return groups
    except FileNotFoundError:
        name = _staged_name(job)
        raise BatchJobFailed("input_missing", f"The input file {name} is gone.") from None
    except (pa.ArrowException, OSError) as exc:
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise BatchJobFailed(
            "input_unreadable", f"The Parquet file is not readable: {detail}"
        ) from None


def _too_many_chunks(chunks: int, job: BatchJob) -> str:
    return (
        f"The input makes {chunks} or more chunks of at most {job.chunk_rows} rows; a job may "
        f"have {settings.BATCH_MAX_CHUNKS} (BATCH_MAX_CHUNKS): ask for a larger chunk_rows."
    )


def batch_job_start(*, job_id: int) -> list[int] | None:
    """Plans a queued job (stages a CSV input, verifying it; records its chunks) and returns
    the indexes of the chunks still to run, which the task sends to workers as a chord whose
    body is the finish; a job already planned gives its pending chunks again (none when all
    are done: the finish is then sent alone). None when the job is finished or failed while
    planning: there is nothing to send. BatchJobFailed is recorded on the job, not raised.

    A Parquet input is not hashed whole here: its footer is read through _VerifiedInput, or,
    without block digests, the file is hashed by the finish."""
    with transaction.atomic():
        job = _locked(job_id)
        if job.status in BATCH_FINISHED:
            return None
        if job.chunks_total is None:
            job.status = BatchStatus.RUNNING
            job.attempts += 1
            job.started_at = job.started_at or timezone.now()
            job.heartbeat_at = timezone.now()
            job.save(
                update_fields=["status", "attempts", "started_at", "heartbeat_at", "updated_at"]
            )
    if job.chunks_total is None:
        storage = get_artifact_storage()
        try:
            with job_heartbeat(job, stamp_now=False):
                version = ModelVersion.objects.get(pk=job.version_id)
                if job.input_format == BatchFormat.CSV:
                    _stage_csv(job, storage, version.input_schema)
                    BatchJob.objects.filter(pk=job_id).update(
                        input_verified_at=timezone.now(),
                        parquet_size=job.parquet_size,
                        parquet_block_size=job.parquet_block_size,
                        parquet_block_sha256=job.parquet_block_sha256,
                    )
                # A staged CSV's row groups are chunk_rows long (BATCH_CHUNK_ROWS_MAX bounds
                # them): only a Parquet file someone else wrote is held to the row-group limit.
                parquet = job.input_format == BatchFormat.PARQUET
                width = len(version.input_schema or []) if parquet else 0
                groups = _row_groups(storage, job, width)
        except BatchJobFailed as exc:
            _fail(job_id, problem=exc.problem, message=exc.message)
            return None
        except ModelVersion.DoesNotExist:
            _fail(job_id, problem="version_gone", message="The scoring version was deleted.")
            return None
        total = sum(groups)
        if total > settings.BATCH_MAX_ROWS:
            _fail(
                job_id,
                problem="too_many_rows",
                message=f"The input has {total} rows; a job may score {settings.BATCH_MAX_ROWS} "
                "(BATCH_MAX_ROWS).",
            )
            return None
        plan = _plan(groups, job.chunk_rows)
        if len(plan) > settings.BATCH_MAX_CHUNKS:
            _fail(job_id, problem="too_many_chunks", message=_too_many_chunks(len(plan), job))
            return None
        with transaction.atomic():
            job = _locked(job_id)
            if job.status in BATCH_FINISHED:
                return None
            if job.chunks_total is None:
                BatchChunk.objects.bulk_create(
                    BatchChunk(job=job, index=i, row_start=start, row_count=count)
                    for i, (start, count) in enumerate(plan)
                )
                job.rows_total = total
                job.chunks_total = len(plan)
                job.save(update_fields=["rows_total", "chunks_total", "updated_at"])
    # Pending only: a chunk another run's worker holds is left to it (a resume sets the
    # chunks of a dead worker back to pending), so a second start sends no duplicate work.
    return list(
        BatchChunk.objects.filter(job_id=job_id, status=BatchChunk.Status.PENDING)
        .order_by("index")
        .values_list("index", flat=True)
    )


def batch_job_unjoinable(*, job_id: int, reason: str) -> None:
    """Fails a job whose chord cannot be sent because the result backend cannot join one
    (`unavailable`, resumable once CELERY_RESULT_BACKEND is fixed)."""
    _fail(
        job_id,
        problem="unavailable",
        message=f"Batch jobs need a result backend that joins Celery chords "
        f"(CELERY_RESULT_BACKEND, e.g. the broker's Redis): {reason}",
    )


def batch_job_unsent(*, job_id: int, reason: str) -> None:
    """Fails a job whose chord could not be sent (`unavailable`, resumable): the broker or the
    result backend did not answer. `reason` names the error."""
    _fail(
        job_id,
        problem="unavailable",
        message=f"The job's chunks could not be sent to the workers: {reason[:300]}",
    )


# --- One chunk ------------------------------------------------------------------------------


@dataclass
class ChunkResult:
    output: Any  # a pyarrow Table of the scored rows
    errors: list[tuple[int, str, str]]  # (input row, field, reason)
    rows_failed: int


def _read_rows(storage: Storage, job: BatchJob, start: int, count: int, names: list[str]) -> Any:
    with _input_open(storage, job) as source:
        return _rows_from(source, start, count, names)


def _rows_from(source: Any, start: int, count: int, names: list[str]) -> Any:
    """Rows [start, start + count) of the Parquet file `source`, columns `names` (all-null
    columns for the ones it lacks), as an Arrow table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    # The chunk's column chunks in a few coalesced reads (range requests on an object
    # store). Read, not mapped: a mapped file truncated meanwhile, or a stale network
    # mount, kills the process with SIGBUS instead of raising.
    parquet = pq.ParquetFile(source, pre_buffer=True)
    meta = parquet.metadata
    wanted, position, first = [], 0, None
    for i in range(meta.num_row_groups):
        rows = meta.row_group(i).num_rows
        if position + rows > start and position < start + count:
            wanted.append(i)
            first = position if first is None else first
        position += rows
    available = set(parquet.schema_arrow.names)
    present = [n for n in names if n in available]
    if isinstance(source, _VerifiedInput):
        source.prefetch(_column_ranges(meta, wanted, present))
    # One thread: a worker process per core scores chunks side by side.
    table = parquet.read_row_groups(wanted, columns=present, use_threads=False)
    table = table.slice(start - (first or 0), count)
    for n in names:
        if n not in table.column_names:
            table = table.append_column(n, pa.nulls(table.num_rows))
    return table


_NUMBER_KINDS = "iuf"


def _column_values(column: Any, feature: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values as the model takes them, null mask, mask of values of the wrong type)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if column.null_count:
        nulls = column.is_null().to_numpy(zero_copy_only=False)
    else:
        nulls = np.zeros(len(column), dtype=bool)
    kind = feature.type
    typ = column.type
    if kind == "string":
        return pc.cast(column, pa.string()).to_numpy(zero_copy_only=False), nulls, ~nulls & False
    if kind == "boolean":
        if pa.types.is_boolean(typ):
            values = column.to_numpy(zero_copy_only=False)
            return np.where(nulls, np.nan, values).astype(np.float64), nulls, ~nulls & False
        text = pc.utf8_lower(pc.cast(column, pa.string())).to_numpy(zero_copy_only=False)
        truth = text == "true"
        wrong = ~nulls & ~truth & (text != "false")
        return np.where(nulls, np.nan, truth.astype(np.float64)), nulls, wrong
    if pa.types.is_boolean(typ):  # a boolean is not a number (validation's rule)
        return np.full(len(column), np.nan), nulls, ~nulls
    if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ):
        # Unchecked: an integer past 2**53 becomes the nearest float, as in a JSON request,
        # where Arrow's checked cast would raise and crash the chunk.
        values = pc.cast(column, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
        return values, nulls, np.zeros(len(column), dtype=bool)
    import pandas as pd

    text = column.to_pandas()
    values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return values, nulls, ~nulls & np.isnan(values)


def _python_value(column: Any, values: np.ndarray, wrong: np.ndarray, feature: Any, i: int) -> Any:
    """Row i's value as validation sees it: the number parsed from text, else the raw value."""
    raw = column[i].as_py()
    if raw is None or feature.type == "string":
        return raw
    if feature.type == "boolean":
        return (
            raw
            if isinstance(raw, bool)
            else ({"true": True, "false": False}.get(str(raw).lower(), raw))
        )
    if wrong[i] or isinstance(raw, bool):
        return raw
    value = float(values[i])
    return int(value) if feature.type == "integer" and value.is_integer() else value


def _plain_matrix(table: Any, loaded: LoadedModel) -> np.ndarray | None:
    """The chunk as the float64 matrix the model takes when every row is plainly valid (the
    common case: numeric columns without nulls, every value finite, within the schema's
    bounds, whole where the schema says integer), checked on the whole matrix at once as
    predictions.validation.in_range checks a request's; else None, and `_validate` finds
    and names the invalid rows column by column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not loaded.numeric or any(f.type not in ("float", "integer") for f in loaded.features):
        return None
    columns = [table.column(f.name) for f in loaded.features]
    if any(
        c.null_count or not (pa.types.is_integer(c.type) or pa.types.is_floating(c.type))
        for c in columns
    ):
        return None
    x = np.empty((table.num_rows, len(columns)), dtype=np.float64)
    for j, column in enumerate(columns):
        if column.type != pa.float64():
            column = pc.cast(column, pa.float64(), safe=False)  # as in _column_values
        x[:, j] = column.to_numpy()
    if not in_range(loaded, x):
        return None
    for j, feature in enumerate(loaded.features):
        if feature.type == "integer" and (np.floor(x[:, j]) != x[:, j]).any():
            return None
    return x


def _validate(
    table: Any, loaded: LoadedModel
) -> tuple[Any, np.ndarray, list[tuple[int, str, str]]]:
    """(the estimator's input for the valid rows, their positions in the chunk, errors).

    Column by column in numpy; validation's own per-row check then names the reasons of the
    (few) invalid rows, so a file and a predict request get the same messages."""
    plain = _plain_matrix(table, loaded)
    if plain is not None:
        return plain, np.arange(table.num_rows), []
    rows = table.num_rows
    bad = np.zeros(rows, dtype=bool)
    columns = []
    parsed = []
    for feature in loaded.features:
        column = table.column(feature.name).combine_chunks()
        values, nulls, wrong = _column_values(column, feature)
        parsed.append((column, values, wrong))
        bad |= wrong
        if feature.required:
            bad |= nulls
        if feature.type in ("float", "integer"):
            present = ~nulls & ~wrong
            with np.errstate(invalid="ignore"):
                out = ~np.isfinite(values)
                if feature.low != -math.inf:
                    out |= values < feature.low
                if feature.high != math.inf:
                    out |= values > feature.high
                if feature.type == "integer":
                    out |= np.isfinite(values) & (np.floor(values) != values)
            bad |= present & out
        columns.append(values)
    errors: list[tuple[int, str, str]] = []
    for i in np.flatnonzero(bad).tolist():
        row = {}
        for feature, (column, values, wrong) in zip(loaded.features, parsed, strict=True):
            if not column[i].is_valid and not feature.required:
                continue  # absent optional value: validation fills it in
            row[feature.name] = _python_value(column, values, wrong, feature, i)
        _, found = row_errors(row, loaded.features, loaded.names, "")
        for field, messages in (found or {"features": ["invalid"]}).items():
            errors.extend((i, field, message) for message in messages)
    good = np.flatnonzero(~bad)
    if loaded.numeric:
        x = np.empty((rows, len(columns)), dtype=np.float64)
        for j, values in enumerate(columns):
            x[:, j] = values
        return (x[good] if len(good) < rows else x), good, errors
    import pandas as pd

    frame = pd.DataFrame({f.name: v[good] for f, v in zip(loaded.features, columns, strict=True)})
    return frame, good, errors


def _validate_lines(
    table: Any, loaded: LoadedModel
) -> tuple[Any, np.ndarray, list[tuple[int, str, str]]]:
    """`_validate` of the rows whose CSV line was a row; a malformed line (MALFORMED_COLUMN
    says why) is an error of its own row, under the field "features"."""
    if MALFORMED_COLUMN not in table.column_names:
        return _validate(table, loaded)
    reasons = table.column(MALFORMED_COLUMN)
    table = table.drop_columns([MALFORMED_COLUMN])
    if reasons.null_count == len(reasons):
        return _validate(table, loaded)
    malformed = np.asarray(reasons.is_valid())
    lines = np.flatnonzero(~malformed)
    x, good, errors = _validate(table.take(lines), loaded)
    errors = [(int(lines[row]), field, why) for row, field, why in errors]
    errors += [(i, "features", reasons[i].as_py()) for i in np.flatnonzero(malformed).tolist()]
    errors.sort(key=lambda error: error[0])  # stable: a row's fields keep schema order
    return x, lines[good], errors


def _score(loaded: LoadedModel, x: Any) -> tuple[Any, Any, list[int], str]:
    """(predictions, probabilities or None, rows without a finite answer, why)."""
    if len(x) == 0:
        # Typed as the model answers (its classes' dtype, a probability per class): every
        # chunk's part must have the same columns, or the merge cannot concatenate them.
        classes = getattr(loaded.estimator, "classes_", None)
        if classes is None:
            return np.empty(0), None, [], ""
        probabilities = np.empty((0, len(classes))) if loaded.has_proba else None
        return np.empty(0, dtype=np.asarray(classes).dtype), probabilities, [], ""
    try:
        predictions, probabilities = predict_arrays(loaded, x)
    except ValueError:
        refused = rows_without_answer(loaded, x)
        if not refused:
            raise
        why = "the model could not compute an answer: one of its steps met NaN or infinity"
        keep = np.setdiff1d(np.arange(len(x)), refused)
        subset = x.iloc[keep] if hasattr(x, "iloc") else x[keep]
        predictions, probabilities = predict_arrays(loaded, subset)
        full_p = np.empty(len(x), dtype=np.asarray(predictions).dtype)
        full_p[keep] = predictions
        full_q = None
        if probabilities is not None:
            full_q = np.full((len(x), probabilities.shape[1]), np.nan)
            full_q[keep] = probabilities
        return full_p, full_q, list(refused), why
    refused = non_finite_rows(predictions, probabilities)
    return predictions, probabilities, refused, "the model's answer is not a finite number"


def _output_table(
    loaded: LoadedModel, rows: np.ndarray, predictions: Any, probabilities: Any, version: int
) -> Any:
    import pyarrow as pa

    values = np.asarray(predictions)
    kind = None
    if values.dtype.kind == "O":
        values = np.array([str(v) for v in values.tolist()], dtype=object)
        kind = pa.string()  # also when empty, which pyarrow would type as null
    columns = {"row": pa.array(rows, type=pa.int64()), "prediction": pa.array(values, type=kind)}
    if probabilities is not None:
        columns["confidence"] = pa.array(
            probabilities.max(axis=1) if len(rows) else [], pa.float64()
        )
        for j, label in enumerate(loaded.class_labels or []):
            columns[f"probability_{label}"] = pa.array(probabilities[:, j], type=pa.float64())
    else:
        columns["confidence"] = pa.nulls(len(rows), pa.float64())
    columns["version"] = pa.array(np.full(len(rows), version, dtype=np.int32))
    return pa.table(columns)


def _chunk_score(job: BatchJob, chunk: BatchChunk, loaded: LoadedModel) -> ChunkResult:
    storage = get_artifact_storage()
    names = [f.name for f in loaded.features]
    if job.input_format == BatchFormat.CSV:
        names.append(MALFORMED_COLUMN)  # all null (absent) unless the CSV had such lines
    table = _read_rows(storage, job, chunk.row_start, chunk.row_count, names)
    x, good, errors = _validate_lines(table, loaded)
    predictions, probabilities, refused, why = _score(loaded, x)
    if refused:
        errors.extend((int(good[i]), "prediction", why) for i in refused)
        errors.sort(key=lambda error: error[0])  # stable: a row's fields keep schema order
        keep = np.setdiff1d(np.arange(len(good)), refused)
        good, predictions = good[keep], np.asarray(predictions)[keep]
        probabilities = probabilities[keep] if probabilities is not None else None
    rows = good.astype(np.int64) + chunk.row_start
    output = _output_table(loaded, rows, predictions, probabilities, job.version_number)
    failed = len({row for row, _, _ in errors})
    errors = [(row + chunk.row_start, field, why) for row, field, why in errors]
    return ChunkResult(output=output, errors=errors, rows_failed=failed)


def _part_name(job: BatchJob, index: int, what: str) -> str:
    # A Parquet output's parts are Arrow IPC files: written and read back at memory speed,
    # they are encoded as Parquet once, by the merge, rather than once per chunk and again.
    suffix = "csv" if what == "errors" or job.output_format == BatchFormat.CSV else "arrow"
    return f"{PREFIX}/{job.pk}/parts/{index:06d}.{what}.{suffix}"


def _write(storage: Storage, name: str, data: bytes, *, durable: bool = True) -> None:
    # A retried chunk replaces its own part, never a second copy under an invented name: both
    # product storages overwrite a name (atomically on a local disk, one PUT on S3), which
    # saves a round trip or two per part over asking first.
    saved = storage.save(name, ContentFile(data) if durable else ScratchFile(data))
    if saved != name:
        raise RuntimeError(f"storage saved {name} as {saved}: batch parts need one that overwrites")


def _part_bytes(table: Any, output_format: str) -> bytes:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    if output_format == BatchFormat.CSV:
        sink = io.BytesIO()
        pacsv.write_csv(table, sink)
        return sink.getvalue()
    stream = pa.BufferOutputStream()
    with pa.ipc.new_file(stream, table.schema) as writer:
        writer.write_table(table)
    return stream.getvalue().to_pybytes()


def _parquet_options(table: Any) -> dict[str, Any]:
    """How the merge encodes the output. Integer columns (row numbers, integer labels, the
    version) in DELTA_BINARY_PACKED: consecutive row numbers and a repeated version take next
    to nothing, labels a few bits each, and it encodes faster than snappy on plain values.
    A dictionary only for text class labels: pyarrow tries one on every column by default, and
    on probabilities (all distinct) that attempt was ~90% of the write time. No compression
    but snappy on text: probabilities do not compress, and the integers are packed already.
    On 2,000,000 rows of 3 classes: 65 MB encoded in 0.12 s, against 76 MB in 0.17 s with
    snappy on plain integers. Statistics where a reader filters: row ranges, predictions,
    confidence thresholds."""
    import pyarrow as pa

    integer = [f.name for f in table.schema if pa.types.is_integer(f.type)]
    text = pa.types.is_string(table.schema.field("prediction").type)
    return {
        "use_dictionary": ["prediction"] if text else False,
        "column_encoding": dict.fromkeys(integer, "DELTA_BINARY_PACKED"),
        "compression": {
            f.name: "snappy" if pa.types.is_string(f.type) else "none" for f in table.schema
        },
        "write_statistics": ["row", "prediction", "confidence"],
    }


class BatchPartLost(Exception):
    """A done chunk's part is missing or not whole (a crash lost it before it reached the
    disk): the chunk must be scored again."""

    def __init__(self, name: str):
        super().__init__(name)
        self.index = int(PurePath(name).name.split(".")[0])


def _part_table(storage: Storage, name: str) -> Any:
    """A Parquet output's part as a table; BatchPartLost when it is missing or torn (an Arrow
    IPC file ends with a footer and magic bytes that a torn write lacks)."""
    import pyarrow as pa

    try:
        source = arrow_input(storage, name)
        if isinstance(source, str):
            source = pa.OSFile(source)  # read, not mapped: see _read_rows
    except (FileNotFoundError, pa.ArrowInvalid):
        raise BatchPartLost(name) from None
    try:
        return pa.ipc.open_file(source).read_all()
    except pa.ArrowInvalid:
        raise BatchPartLost(name) from None
    finally:
        source.close()


def _errors_bytes(errors: list[tuple[int, str, str]], *, header: bool) -> bytes:
    import csv

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(["row", "field", "reason"])
    writer.writerows(errors)
    return out.getvalue().encode()


@functools.cache
def _threadpools() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextlib.contextmanager
def _bookkeeping() -> Iterator[None]:
    """A transaction for a chunk's own bookkeeping (claimed, heartbeat, counted) that does not
    wait for PostgreSQL to flush its log to disk (synchronous_commit off, for this transaction
    only). A database crash may forget the last such commits, never corrupt them: the chunk
    then reads as not done and is scored again, which every chunk task allows. On a slow disk
    the flush was most of a chunk's time. The job's start, failure and finish still wait."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
        yield


@functools.cache
def _bookkeeping_sql(vendor: str) -> dict[str, str]:
    """A chunk's bookkeeping statements, in SQL that PostgreSQL and SQLite (3.35+) both run;
    SQLite's RETURNING names the changed table only, hence the subqueries. Written out: they
    run twice per chunk, and through the ORM the claim and the count took 13 ms of a 62 ms
    chunk, most of it building the same SQL again; a claim that returns what it changed also
    saves reading the chunk back. Only model table and column names, quoted, are formatted
    in; every value is a parameter."""
    q = connection.ops.quote_name
    chunk, job = q(BatchChunk._meta.db_table), q(BatchJob._meta.db_table)
    lock = " FOR UPDATE" if vendor == "postgresql" else ""  # SQLite locks the whole file
    claim = (
        f"UPDATE {chunk} SET status = %s, attempts = attempts + 1 "  # noqa: S608
        f"WHERE job_id = %s AND {q('index')} = %s AND status <> %s AND attempts < %s "
        f"AND EXISTS (SELECT 1 FROM {job} j WHERE j.id = {chunk}.job_id AND j.status = %s) "
        f"RETURNING row_start, row_count, "
        f"(SELECT j.version_id FROM {job} j WHERE j.id = {chunk}.job_id), "
        f"(SELECT j.created_at FROM {job} j WHERE j.id = {chunk}.job_id), "
        f"(SELECT j.heartbeat_at >= %s FROM {job} j WHERE j.id = {chunk}.job_id)"
    )
    count = (
        f"UPDATE {chunk} SET status = %s, rows_failed = %s, seconds = %s, verified = %s "  # noqa: S608
        f"WHERE job_id = %s AND {q('index')} = %s AND status <> %s RETURNING row_count"
    )
    counted = (
        f"UPDATE {job} SET rows_done = rows_done + %s, rows_failed = rows_failed + %s, "  # noqa: S608
        "chunks_done = chunks_done + 1, heartbeat_at = %s, updated_at = %s "
        "WHERE id = %s RETURNING rows_done, rows_failed"
    )
    locked = f"SELECT status, rows_total, max_error_share FROM {job} WHERE id = %s{lock}"  # noqa: S608
    return {
        # The job's row is read, not locked: the claim locks the chunk's row only, so it
        # cannot take the two tables' locks against the other writers' order (job rows first).
        "claim": claim,
        "job": locked,
        "count": count,
        "counted": counted,
    }


def _sql(name: str, params: list[Any]) -> tuple[Any, ...] | None:
    """The first row statement `name` of _bookkeeping_sql returns (None: no row)."""
    with connection.cursor() as cursor:
        cursor.execute(_bookkeeping_sql(connection.vendor)[name], params)
        return cursor.fetchone()


def _now() -> Any:
    """timezone.now() as the database takes it in a raw statement's parameters."""
    return connection.ops.adapt_datetimefield_value(timezone.now())


# When this process last stamped the heartbeats of the running jobs (time.monotonic()).
_heartbeats_stamped_at: float | None = None


def _chunk_claim(job_id: int, index: int) -> tuple[BatchChunk, bool] | str:
    """Marks the chunk running (one more attempt) and returns it with its job and whether
    the job's own heartbeat is due (older than JOB_HEARTBEAT_SECONDS / 2: the chunk's run
    stamps it first); or why it does not run: "done" (a redelivery of a chunk already
    counted), "failed" (it was started JOB_MAX_ATTEMPTS times without finishing, or its
    version was deleted: the job is failed) or "skipped" (no such chunk, or its job is not
    running: cancelled, failed, finished)."""
    global _heartbeats_stamped_at
    half = settings.JOB_HEARTBEAT_SECONDS / 2
    stamp = _heartbeats_stamped_at is None or time.monotonic() - _heartbeats_stamped_at >= half
    with _bookkeeping():
        if stamp:
            # In the claim's commit, job rows first (the order every other writer of both
            # tables takes). Every JOB_HEARTBEAT_SECONDS / 2 per process, not every chunk: a
            # chunk that runs longer stamps its own job from a thread (job_heartbeat).
            _heartbeats_stamp(job_id)
        claimed = _sql(
            "claim",
            [
                BatchChunk.Status.RUNNING,
                job_id,
                index,
                BatchChunk.Status.DONE,
                settings.JOB_MAX_ATTEMPTS,
                BatchStatus.RUNNING,
                connection.ops.adapt_datetimefield_value(timezone.now() - timedelta(seconds=half)),
            ],
        )
    if stamp:
        _heartbeats_stamped_at = time.monotonic()
    if claimed is None:
        chunk = BatchChunk.objects.filter(
            job_id=job_id, index=index, job__status=BatchStatus.RUNNING
        )
        state = chunk.values_list("status", "attempts").first()
        if state is None:
            return "skipped"
        if state[0] == BatchChunk.Status.DONE:
            return "done"
        if state[1] < settings.JOB_MAX_ATTEMPTS:
            return "skipped"  # its job was not running at the claim; a resume since is not ours
        # Every start ended without a result: its process was killed each time (the OOM
        # killer, say) and the broker handed the message on again. Without this bound the
        # message goes round the workers for ever, each claim keeping the job's heartbeat
        # fresh, so the reaper never ends it either.
        _fail(
            job_id,
            problem="too_many_attempts",
            message=f"Chunk {index} was started {state[1]} times without finishing: its worker "
            "stopped during each run (out of memory?). Not started again (JOB_MAX_ATTEMPTS); "
            "a smaller chunk_rows holds fewer rows in memory at once.",
        )
        return "failed"
    row_start, row_count, version_id, created_at, heartbeat_fresh = claimed
    if version_id is None:  # deleted since the job was planned (the key is SET_NULL)
        _fail(job_id, problem="version_gone", message="The scoring version was deleted.")
        return "failed"
    chunk = BatchChunk(job_id=job_id, index=index, row_start=row_start, row_count=row_count)
    # The creation time tells a job from an earlier one that had its id (a rolled-back
    # creation on SQLite); what is read never changes while a job exists.
    chunk.job = _chunk_job(job_id, str(created_at))
    return chunk, not heartbeat_fresh  # None (never stamped) is due too


@functools.lru_cache(maxsize=16)
def _chunk_job(job_id: int, created_at: str) -> BatchJob:
    """What a chunk reads of its job and version, read once per job and process: the
    version's schema and metadata (JSON) are decoded by _chunk_model on a model-cache miss,
    not by every chunk. The instance is shared by the process's chunks of the job: read only
    _CHUNK_FIELDS from it (a deferred field, say `status`, would be loaded once and kept)."""
    return BatchJob.objects.select_related("version").only(*_CHUNK_FIELDS).get(pk=job_id)


_CHUNK_FIELDS = (
    "output_format",
    "input_format",
    "input_name",
    "parquet_size",
    "parquet_block_size",
    "parquet_block_sha256",
    "version_number",
    "version__artifact_sha256",
)


def _chunk_model(job: BatchJob) -> LoadedModel:
    """The estimator of the job's version, loaded as serving loads it (verified, cached per
    process). ModelVersion.DoesNotExist when the version was deleted."""
    if job.version_id is None:
        raise ModelVersion.DoesNotExist
    loaded = model_cache.peek(job.version_id, job.version.artifact_sha256, touch=True)
    if loaded is not None:
        return loaded
    version = ModelVersion.objects.select_related("model").get(pk=job.version_id)
    return model_cache.get(version_info(version), model_name=version.model.name)


def batch_chunk_run(*, job_id: int, index: int) -> str:
    """Scores one chunk and writes its part; returns what happened ("done", "skipped",
    "discarded", "failed").

    Idempotent: a done chunk, or one of a finished job, is skipped; a retried chunk rewrites
    its own part and is counted once, under the job's row lock. One that pushes the share of
    invalid rows past the job's max_error_share fails the job, naming both. Runs with
    BATCH_CHUNK_THREADS threads in BLAS and pyarrow: the workers' processes are the
    parallelism, and a 50,000 x 20 matrix product was 6x slower with two BLAS threads than
    with one on a busy 2-core machine."""
    claimed = _chunk_claim(job_id, index)
    if isinstance(claimed, str):
        return claimed
    chunk, heartbeat_due = claimed
    job = chunk.job
    started = time.perf_counter()
    try:
        with job_heartbeat(job, stamp_now=heartbeat_due):
            loaded = _chunk_model(job)
            # The chunk's arrays are freed by reference counting; the cyclic collector, set off
            # by their many allocations, only rescanned the worker's long-lived objects (the
            # model, Django's) again and again: a third of a chunk's time.
            gc.disable()
            try:
                with _threadpools().limit(limits=settings.BATCH_CHUNK_THREADS):
                    result = _chunk_score(job, chunk, loaded)
                    output = _part_bytes(result.output, job.output_format)
            finally:
                gc.enable()
            storage = get_artifact_storage()
            # An Arrow IPC part checks itself when the merge reads it (its footer), and a lost
            # one is scored again (BatchPartLost), so it need not wait for the disk; a CSV
            # part has no footer to show it whole, so it does.
            _write(
                storage,
                _part_name(job, index, "output"),
                output,
                durable=job.output_format == BatchFormat.CSV,
            )
            # No errors, no part (one write and fsync less per chunk): the merge reads the
            # errors parts of the chunks whose counted attempt had errors, so a part left by
            # an earlier attempt is never read.
            if result.errors:
                _write(
                    storage,
                    _part_name(job, index, "errors"),
                    _errors_bytes(result.errors, header=False),
                )
    except OperationalError:
        raise
    except ModelVersion.DoesNotExist:
        _fail(job_id, problem="version_gone", message="The scoring version was deleted.")
        return "failed"
    except BatchJobFailed as exc:
        _fail(job_id, problem=exc.problem, message=f"Chunk {index}: {exc.message}")
        return "failed"
    except DomainError as exc:
        problem = "unavailable" if exc.status_code == 503 else exc.error_type
        _fail(job_id, problem=problem, message=f"Chunk {index}: {exc.message}")
        return "failed"
    except Exception as exc:
        logger.exception("batch chunk crashed", extra={"job": job_id, "chunk": index})
        _fail(job_id, problem="chunk_error", message=f"Chunk {index}: {type(exc).__name__}: {exc}")
        return "failed"
    seconds = time.perf_counter() - started
    return _chunk_done(
        job_id, index, result.rows_failed, seconds, verified=bool(job.parquet_block_size)
    )


def _heartbeats_stamp(job_id: int) -> None:
    """Stamps the heartbeat of this chunk's job and of every running job with chunks queued,
    or with every chunk done (its finish is queued).

    Their tasks wait behind the work of a live worker (this one), so they are not stalled;
    without this a job queued behind a long one would be reaped as `worker_lost` before its
    first chunk ran, or before its finish did. A job whose only unfinished chunks were taken
    by a dead worker has none pending, so it is not stamped and the reaper finds it. Runs in
    the transaction of the chunk's claim."""
    pending = BatchChunk.objects.filter(status=BatchChunk.Status.PENDING).values("job_id")
    BatchJob.objects.filter(
        Q(pk=job_id) | Q(pk__in=pending) | Q(chunks_done=F("chunks_total")),
        status=BatchStatus.RUNNING,
    ).update(heartbeat_at=timezone.now())


def _chunk_done(
    job_id: int, index: int, rows_failed: int, seconds: float, *, verified: bool
) -> str:
    """Counts a scored chunk on its job, once however often it is delivered: "done", or
    "discarded" (its job was cancelled or failed while it ran), or "failed" (its invalid rows
    took the job past max_error_share, which fails it). `verified`: its rows were read through
    _VerifiedInput."""
    with _bookkeeping():
        job = _sql("job", [job_id])  # the job's row lock, taken first
        if job is None or job[0] != BatchStatus.RUNNING:
            return "discarded"
        counted = _sql(
            "count",
            [
                BatchChunk.Status.DONE,
                rows_failed,
                seconds,
                verified,
                job_id,
                index,
                BatchChunk.Status.DONE,
            ],
        )
        if counted is None:
            return "done"  # a duplicate delivery finished first
        now = _now()
        rows_done, rows_failed_total = _sql("counted", [counted[0], rows_failed, now, now, job_id])
        _, rows_total, max_error_share = job
        too_many = rows_failed_total > max_error_share * (rows_total or 0)
    if too_many:
        _fail(
            job_id,
            problem="too_many_invalid_rows",
            message=(
                f"{rows_failed_total} of the input's {rows_total} rows are invalid (after "
                f"{rows_done} rows read), more than the job's max_error_share of "
                f"{max_error_share:.0%}; see the errors file for row numbers and reasons."
            ),
        )
        return "failed"
    return "done"


# --- Finishing ------------------------------------------------------------------------------


def _prefetched(load: Any, storage: Storage, names: list[str], ahead: int = 4) -> Iterator[Any]:
    """load(storage, name) of each name, in order, up to `ahead` loading in threads while the
    caller works on the current one: from an object store each part is a round trip, and the
    merge would otherwise wait for them one by one. At most `ahead` + 1 parts are held."""
    with ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="batch-part") as pool:
        pending: deque[Any] = deque()
        names_left = iter(names)
        for name in itertools.islice(names_left, ahead):
            pending.append(pool.submit(load, storage, name))
        while pending:
            result = pending.popleft().result()
            for name in itertools.islice(names_left, 1):
                pending.append(pool.submit(load, storage, name))
            yield result


def _merge(job: BatchJob, storage: Storage, what: str, file_format: str, target: str) -> str:
    """Concatenates the chunks' parts, in row order, into one file saved as `target`;
    returns the name the storage gave it."""
    import pyarrow.parquet as pq

    indexes: Any = range(job.chunks_total or 0)
    if what == "errors":
        indexes = (
            job.chunks.filter(rows_failed__gt=0).order_by("index").values_list("index", flat=True)
        )
    with storage_work_folder(storage, target) as folder:
        path = os.path.join(folder, "merged")
        # The disk writes start part by part: the storage's fsync at the end waits for the last
        # parts only.
        with WriteBehind(path, durable=storage_fsyncs(storage)) as disk:
            if file_format == BatchFormat.PARQUET:
                writer = None
                for table in _prefetched(
                    _part_table, storage, [_part_name(job, i, what) for i in indexes]
                ):
                    writer = writer or pq.ParquetWriter(
                        path, table.schema, **_parquet_options(table)
                    )
                    writer.write_table(table)
                    disk.nudge()
                if writer is None:
                    raise BatchJobFailed("empty", "The input holds no rows.")
                writer.close()
            else:
                with open(path, "wb") as out:
                    if what == "errors":
                        out.write(_errors_bytes([], header=True))
                    for n, i in enumerate(indexes):
                        with storage.open(_part_name(job, i, what), "rb") as handle:
                            if what == "output" and n:
                                handle.readline()  # each part has its header
                            for block in iter(partial(handle.read, _HASH_BLOCK), b""):
                                out.write(block)
                        out.flush()
                        disk.nudge()
        with MovableFile(path) as merged:
            return storage.save(target, merged)


def _part_lost(job_id: int, index: int) -> BatchJob:
    """Un-counts done chunk `index`, whose part the merge found missing or torn, and fails the
    job `part_lost` (resumable: a resume scores that chunk again and merges)."""
    with transaction.atomic():
        job = _locked(job_id)
        if job.status != BatchStatus.RUNNING:
            return job
        chunk = BatchChunk.objects.select_for_update().get(job=job, index=index)
        if chunk.status == BatchChunk.Status.DONE:
            job.rows_done -= chunk.row_count
            job.rows_failed -= chunk.rows_failed
            job.chunks_done -= 1
            job.save(update_fields=["rows_done", "rows_failed", "chunks_done", "updated_at"])
            chunk.status = BatchChunk.Status.PENDING
            # Whoever scores it again says whether it checked what it read (a worker of the
            # previous release does not write the flag).
            chunk.verified = False
            chunk.save(update_fields=["status", "verified"])
    return (
        _fail(
            job_id,
            problem="part_lost",
            message=f"The part of chunk {index} is missing or torn (a crash before it reached "
            "the disk?): resume the job to score that chunk again.",
        )
        or job
    )


def _chunks_verified(job: BatchJob) -> bool:
    """Whether the rows the job scored are known to be the submitted ones without reading its
    input again: with block digests, every chunk checked the blocks it read (a chunk a worker
    of the previous release scored, mid-upgrade, did not); without them (a dataset registered
    before them, a CSV staged by the previous release), the file was checked while staged."""
    if job.parquet_block_size:
        return not BatchChunk.objects.filter(job_id=job.pk, verified=False).exists()
    return bool(job.input_verified_at)


def _input_check(storage: Storage, job: BatchJob) -> None:
    """BatchJobFailed (`input_integrity`, `input_missing`) unless the file the chunks read is
    still the submitted one: read whole through _VerifiedInput when the job has its block
    digests (the input, or a CSV's staged copy), else hashed against input_sha256."""
    if not job.parquet_block_size:
        if _sha256_of(storage, job.input_name) != job.input_sha256:
            raise _integrity_failed(job.input_name)
        return
    try:
        with _input_open(storage, job) as source:
            while source.read(_HASH_BLOCK):
                pass
    except FileNotFoundError:
        name = _staged_name(job)
        raise BatchJobFailed("input_missing", f"The input file {name} is gone.") from None


def batch_job_finish(*, job_id: int) -> BatchJob:
    """The chord's body: merges a job's parts into its output and errors files and marks it
    succeeded, once all its chunks are done; otherwise (or for a finished job) changes
    nothing.

    The file the chunks read was checked block by block as they read it. When one of them did
    not check (a worker of the previous release, mid-upgrade), or the job has no block digests
    (a dataset registered before them), the file is checked whole here (_input_check), in a
    second thread while the parts are merged (hashlib and pyarrow both release the GIL), and
    nothing is published unless it matches (`input_integrity` fails the job and the merged
    files are removed). Any other error (storage, a part that cannot be read)
    fails the job `finish_error`, which a resume runs again; a database error is raised for
    the task to retry. A second finish running at the same time (a redelivered body) writes
    the same files under the same names and loses at the final row lock."""
    job = BatchJob.objects.defer("parquet_block_sha256").get(pk=job_id)
    if job.status != BatchStatus.RUNNING or job.chunks_done != job.chunks_total:
        return job
    storage = get_artifact_storage()
    written: list[str] = []
    try:
        if job.chunks_total == 0:
            raise BatchJobFailed("empty", "The input holds no rows.")
        with (
            job_heartbeat(job, stamp_now=False),
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-verify") as pool,
        ):
            verified = _chunks_verified(job)
            if not verified and job.parquet_block_size:
                # Read here: the checking thread would open a database connection of its own.
                job.refresh_from_db(fields=["parquet_block_sha256"])
            check = None if verified else pool.submit(_input_check, storage, job)
            try:
                for what, file_format in (("output", job.output_format), ("errors", "csv")):
                    target = f"{PREFIX}/{job.pk}/{what}.{file_format}"
                    written.append(_merge(job, storage, what, file_format, target))
            finally:
                if check is not None:
                    check.result()
    except OperationalError:
        raise  # the task tries again
    except BatchPartLost as exc:
        return _part_lost(job_id, exc.index)
    except Exception as exc:
        if not isinstance(exc, BatchJobFailed):
            # Said on the job now, rather than a reaper's "worker stopped" minutes later.
            logger.exception("batch finish crashed", extra={"job": job_id})
            exc = BatchJobFailed("finish_error", f"Merging the parts: {type(exc).__name__}: {exc}")
        failed = _fail(job_id, problem=exc.problem, message=exc.message) or job
        # Only once this finish failed the job: a concurrent finish that published files under
        # the same names would otherwise lose them.
        if failed.status == BatchStatus.FAILED and failed.error_type == exc.problem[:50]:
            _files_delete(storage, written)
        return failed
    output, errors = written
    with transaction.atomic():
        job = _locked(job_id)
        if job.status != BatchStatus.RUNNING:
            return job
        job.status = BatchStatus.SUCCEEDED
        job.output_name = output
        job.errors_name = errors
        job.finished_at = timezone.now()
        job.input_verified_at = job.input_verified_at or job.finished_at
        job.save(
            update_fields=[
                "status",
                "output_name",
                "errors_name",
                "finished_at",
                "input_verified_at",
                "updated_at",
            ]
        )
        audit_record(
            actor=JOB_ACTOR,
            verb="finish",
            obj=job,
            changes={"status": [BatchStatus.RUNNING, job.status], "output_name": ["", output]},
        )
        transaction.on_commit(partial(_parts_delete, job))
    logger.info("batch job finished", extra={"job": job_id, "rows": job.rows_done})
    return job


def _parts_delete(job: BatchJob) -> None:
    storage = get_artifact_storage()
    for i in range(job.chunks_total or 0):
        for what in ("output", "errors"):
            name = _part_name(job, i, what)
            try:
                storage.delete(name)
            except OSError:
                logger.warning("batch part not deleted", extra={"file": name})


# --- Reading jobs ---------------------------------------------------------------------------


def rows_per_second(job: BatchJob, *, now: datetime | None = None) -> float | None:
    """Rows scored per second of the job's run so far (or of its whole run once finished)."""
    if job.started_at is None or not job.rows_done:
        return None
    end = job.finished_at or now or timezone.now()
    seconds = (end - job.started_at).total_seconds()
    return round(job.rows_done / seconds, 1) if seconds > 0 else None


def batch_file_url(name: str, *, filename: str | None = None) -> str | None:
    """A time-limited direct link to a stored file when the storage can sign one (S3: a
    presigned URL, `mlregistry.storage.presigned_url`); None for a local folder, whose files
    the API streams behind its authentication."""
    return presigned_url(name, filename=filename)


# --- Retention ------------------------------------------------------------------------------


def batch_jobs_prune(
    *, older_than: datetime, dry_run: bool = False, actor: Actor = "job:retention"
) -> int:
    """Deletes jobs that finished before `older_than` with their files (an uploaded input
    only once no remaining job reads it; a dataset's file never). Returns how many jobs went
    (with `dry_run`, how many would, deleting nothing). Each job goes in its own
    transaction, audited as deleted by the retention job."""
    old = BatchJob.objects.filter(status__in=BATCH_FINISHED, finished_at__lt=older_than)
    if dry_run:
        return old.count()
    storage = get_artifact_storage()
    deleted = 0
    for job_id in list(old.values_list("pk", flat=True)):
        with transaction.atomic():
            # Asked again under the lock: a job resumed since the list was read is running
            # again, not old and finished.
            job = old.select_for_update().filter(pk=job_id).first()
            if job is None:
                continue
            # The job's folder holds everything it wrote (staged input, parts, output, errors),
            # whatever a run left behind.
            folder = f"{PREFIX}/{job.pk}"
            files: list[str] = []
            upload = job.input_name if job.input_name.startswith(f"{PREFIX}/inputs/") else ""
            audit_record(
                actor=actor,
                verb="delete",
                obj=job,
                changes=deleted_changes(job, _AUDITED),
            )
            job.delete()
            if upload and not BatchJob.objects.filter(input_name=upload).exists():
                files.append(upload)
            transaction.on_commit(partial(_files_delete, storage, files, folder=folder))
        deleted += 1
    return deleted


def _files_delete(storage: Storage, names: list[str], *, folder: str = "") -> None:
    for name in names:
        try:
            storage.delete(name)
        except OSError:
            logger.warning("batch file not deleted", extra={"file": name})
    if folder:
        try:
            storage_delete_folder(storage, folder)
        except OSError:
            logger.warning("batch folder not deleted", extra={"folder": folder})
