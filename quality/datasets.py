"""Reading and validating training datasets: uploaded CSV/Parquet files and read-only SQL.

Every problem a dataset can have becomes a DatasetError naming it (`problem`), so a training
job fails with that name and a message instead of crashing.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from django.conf import settings
from django.db import DatabaseError, connections, transaction

from config import archives
from config.errors import ValidationFailed
from mlregistry import artifacts
from quality.models import Dataset, DatasetSource, FileFormat, MissingPolicy


class DatasetError(ValidationFailed):
    error_type = "dataset_error"

    def __init__(self, problem: str, message: str, *, fields: dict[str, list[str]] | None = None):
        super().__init__(message, fields=fields)
        self.problem = problem


@dataclass
class LoadedDataset:
    features: pd.DataFrame
    target: pd.Series
    notes: dict[str, Any] = field(default_factory=dict)


def sql_query_check(query: str) -> str:
    """Returns the one SELECT (or WITH ... SELECT) statement in `query`, or DatasetError."""
    import sqlparse

    statements = [s.strip().rstrip(";").strip() for s in sqlparse.split(query or "")]
    statements = [s for s in statements if s]
    if len(statements) != 1:
        raise DatasetError(
            "sql_not_allowed",
            f"The query must be exactly one SELECT statement, not {len(statements)} statements.",
            fields={"sql_query": ["exactly one SELECT statement"]},
        )
    kind = sqlparse.parse(statements[0])[0].get_type()
    if kind != "SELECT":
        raise DatasetError(
            "sql_not_allowed",
            f"Only SELECT (or WITH ... SELECT) queries may read a dataset, not {kind}.",
            fields={"sql_query": ["must be a SELECT statement"]},
        )
    return statements[0]


def sql_connection_alias(name: str) -> str:
    """The Django database alias behind a dataset connection name (settings.DATASET_DATABASES)."""
    alias = settings.DATASET_DATABASES.get(name)
    if alias is None or alias not in connections:
        known = ", ".join(sorted(settings.DATASET_DATABASES)) or "none configured"
        raise DatasetError(
            "no_connection",
            f"Unknown dataset connection {name!r} (DATASET_DATABASES: {known}).",
            fields={"sql_connection": [f"must be one of: {known}"]},
        )
    return alias


def _read_sql(dataset: Dataset) -> pd.DataFrame:
    alias = sql_connection_alias(dataset.sql_connection)
    query = sql_query_check(dataset.sql_query)
    connection = connections[alias]
    limit = settings.DATASET_MAX_ROWS
    try:
        # Read-only three ways: one SELECT only, a read-only transaction (Postgres) or
        # query_only (SQLite), and a rollback at the end whatever the query managed to do.
        with transaction.atomic(using=alias), connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("SET TRANSACTION READ ONLY")
                timeout_ms = int(settings.DATASET_SQL_TIMEOUT_SECONDS * 1000)
                cursor.execute(f"SET LOCAL statement_timeout = {timeout_ms}")
            elif connection.vendor == "sqlite":
                cursor.execute("PRAGMA query_only = ON")
            try:
                cursor.execute(query)
                columns = [column[0] for column in cursor.description or []]
                rows = cursor.fetchmany(limit + 1)
            finally:
                if connection.vendor == "sqlite":
                    cursor.execute("PRAGMA query_only = OFF")
            transaction.set_rollback(True, using=alias)
    except DatabaseError as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatasetError("sql_error", f"The dataset query failed: {message}") from None
    if len(rows) > limit:
        raise DatasetError(
            "too_many_rows", f"The query returned more than {limit} rows (DATASET_MAX_ROWS)."
        )
    return pd.DataFrame.from_records(rows, columns=columns)


def _read_file(dataset: Dataset) -> pd.DataFrame:
    try:
        data = artifacts.read_verified(
            dataset.file.name, dataset.file_sha256, what=f"Dataset {dataset.name!r}"
        )
    except artifacts.ArtifactMissingError:
        raise DatasetError(
            "file_missing", f"The file of dataset {dataset.name!r} is gone."
        ) from None
    except artifacts.ArtifactIntegrityError as exc:
        raise DatasetError("file_integrity", exc.message) from None
    return read_table(data, dataset.file_format)


def _read_parquet(data: bytes, nrows: int | None) -> pd.DataFrame:
    """A Parquet file's frame, decoded batch by batch under the archive limits (a few bytes of
    Parquet can decode to gigabytes); with `nrows`, the whole file is still checked."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    batches = []
    kept = 0
    try:
        for batch in archives.parquet_batches(
            data, what="The Parquet file", field="file", max_rows=settings.DATASET_MAX_ROWS
        ):
            if nrows is None or kept < nrows:
                batches.append(batch)
                kept += batch.num_rows
    except archives.ArchiveUnreadable as exc:
        raise DatasetError("file_unreadable", exc.message, fields=exc.fields) from None
    except archives.ArchiveError as exc:
        raise DatasetError("file_too_large", exc.message, fields=exc.fields) from None
    if not batches:
        return pq.read_schema(pa.BufferReader(data)).empty_table().to_pandas()
    frame = pa.Table.from_batches(batches).to_pandas()
    return frame.head(nrows) if nrows is not None else frame


def read_table(data: bytes, file_format: str, *, nrows: int | None = None) -> pd.DataFrame:
    """Parses CSV or Parquet bytes into a frame, or DatasetError naming what is wrong (a
    Parquet file that would decode past the archive limits: `file_too_large`, 400)."""
    try:
        if file_format == FileFormat.PARQUET:
            return _read_parquet(data, nrows)
        return pd.read_csv(io.BytesIO(data), nrows=nrows)
    except pd.errors.EmptyDataError:
        raise DatasetError("empty", "The dataset file holds no data.") from None
    except (ValueError, UnicodeDecodeError, OSError, pd.errors.ParserError) as exc:
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise DatasetError(
            "file_unreadable", f"The file is not readable as {file_format}: {detail}"
        ) from None


def columns_check(frame: pd.DataFrame, *, target_column: str, feature_columns: list[str]) -> None:
    missing = [c for c in [*feature_columns, target_column] if c not in frame.columns]
    if missing:
        raise DatasetError(
            "missing_columns",
            f"The dataset lacks the column(s) {', '.join(map(repr, missing))}; it has "
            f"{', '.join(map(repr, list(frame.columns)[:20]))}.",
            fields={"feature_columns": [f"missing: {', '.join(missing)}"]},
        )


def _numeric_features(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    out = {}
    for column in columns:
        raw = frame[column]
        numbers = pd.to_numeric(raw, errors="coerce")
        # inf parses as a number but no estimator can fit it.
        bad = (numbers.isna() & raw.notna()) | numbers.isin([float("inf"), float("-inf")])
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            value = raw.iloc[row]
            value = value.item() if hasattr(value, "item") else value
            raise DatasetError(
                "non_numeric",
                f"Column {column!r} must hold numbers but row {row} holds {value!r}.",
                fields={column: ["non-numeric values"]},
            )
        out[column] = numbers.astype(float) if numbers.dtype == object else numbers
    return pd.DataFrame(out, index=frame.index)


def dataset_frame_read(dataset: Dataset) -> pd.DataFrame:
    frame = _read_sql(dataset) if dataset.source == DatasetSource.SQL else _read_file(dataset)
    if len(frame) > settings.DATASET_MAX_ROWS:
        raise DatasetError(
            "too_many_rows",
            f"The dataset has more than {settings.DATASET_MAX_ROWS} rows (DATASET_MAX_ROWS).",
        )
    return frame


def dataset_load(dataset: Dataset) -> LoadedDataset:
    """Reads the dataset and returns numeric features and the target, missing values handled
    by the dataset's policy; DatasetError names the first problem found."""
    frame = dataset_frame_read(dataset)
    if frame.empty:
        raise DatasetError("empty", f"Dataset {dataset.name!r} returned no rows.")
    features_names = list(dataset.feature_columns)
    columns_check(frame, target_column=dataset.target_column, feature_columns=features_names)
    features = _numeric_features(frame, features_names)
    target = frame[dataset.target_column]
    notes: dict[str, Any] = {"rows_read": len(frame)}

    target_missing = target.isna()
    if target_missing.any():
        # A row without a target teaches nothing and cannot be imputed honestly.
        notes["rows_without_target"] = int(target_missing.sum())
        features, target = features[~target_missing], target[~target_missing]
    missing_counts = {c: int(n) for c, n in features.isna().sum().items() if n}
    if missing_counts:
        notes["missing_values"] = missing_counts
        policy = dataset.missing_policy
        if policy == MissingPolicy.ERROR:
            raise DatasetError(
                "missing_values",
                "The dataset has missing values ("
                + ", ".join(f"{c}: {n}" for c, n in missing_counts.items())
                + ") and its policy is to fail.",
            )
        if policy == MissingPolicy.DROP:
            keep = features.notna().all(axis=1)
            notes["rows_dropped"] = int((~keep).sum())
            features, target = features[keep], target[keep]
        else:
            fill = features.mean() if policy == MissingPolicy.IMPUTE_MEAN else features.median()
            fill = fill.fillna(0.0)  # a column with no values at all
            notes["imputed"] = {c: float(fill[c]) for c in missing_counts}
            features = features.fillna(fill)
    if features.empty:
        raise DatasetError(
            "empty", f"Dataset {dataset.name!r} has no rows left after handling missing values."
        )
    notes["rows_used"] = len(features)
    return LoadedDataset(
        features=features.reset_index(drop=True), target=target.reset_index(drop=True), notes=notes
    )
