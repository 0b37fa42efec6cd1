"""MLflow models in: an MLflow model directory, as `mlflow.sklearn.save_model` / `log_model`
write it, read from a .zip, a .tar.gz or a folder and turned into what a version registers.

What is read (MLflow's model format, mlflow/models/model.py and mlflow/sklearn/__init__.py):
- `MLmodel` (YAML): the `sklearn` flavor names the serialized model (`pickled_model`), its
  `serialization_format` (skops, cloudpickle or pickle) and `sklearn_version`; `signature`
  holds the input column specs as JSON text; `saved_input_example_info` names the input example.
- `requirements.txt` and `python_env.yaml`: the library versions the model was saved with.

What comes out (`MlflowModel`): the inner model file's bytes (what is stored, hashed and
served; the archive itself is not kept), its format (skops, or `joblib` for a pickle, which
then goes through the pickle policy like any pickle upload), the signature as an input schema,
the input example as the reference sample, the model's library versions compared with the
server's, and MLflow's metadata. Nothing here stores anything or unpickles anything.

Archives are refused before anything is read from them when a member has an absolute path, a
`..` step, is a link or a device, or when the members inflate past the upload limit
(MAX_ARTIFACT_SIZE) or the archive limits (config/archives.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import tarfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from django.conf import settings

from config.archives import (
    ArchiveError,
    ArchiveLimits,
    ArchiveUnreadable,
    member_name_problem,
    tar_check,
    zip_check,
)
from mlregistry import artifacts
from mlregistry.models import ArtifactFormat

MLMODEL = "MLmodel"
# What a model directory may hold besides its model file: these are read, the rest is skipped.
_REQUIREMENTS = "requirements.txt"
_PYTHON_ENV = "python_env.yaml"

# MLflow's column types (mlflow.types.DataType) and the feature types they become here. The
# others (binary, datetime, array, object, map, any) have no feature type to validate against.
COLUMN_TYPES = {
    "double": "float",
    "float": "float",
    "integer": "integer",
    "long": "integer",
    "boolean": "boolean",
    "string": "string",
}

# The sklearn flavor's serialization formats and the artifact format each is stored as.
SERIALIZATION_FORMATS = {
    "skops": ArtifactFormat.SKOPS,
    "cloudpickle": ArtifactFormat.JOBLIB,
    "pickle": ArtifactFormat.JOBLIB,
}

# Library versions read from requirements.txt and compared with the server's (pip names).
_COMPARED_LIBRARIES = ("scikit-learn", "numpy", "scipy", "skops", "cloudpickle", "pandas")
_PINNED = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==\s*([^\s;#]+)")


class MlflowModelError(artifacts.ArtifactError):
    """An MLflow model this registry cannot take; the message says why and what to do."""

    error_type = "mlflow_model_refused"


@dataclass(frozen=True)
class MlflowModel:
    """An MLflow model directory, read and checked (nothing loaded, nothing stored)."""

    payload: bytes
    payload_name: str
    artifact_format: str
    input_schema: list[dict[str, Any]] | None
    reference_sample: list[dict[str, Any]] | None
    library_versions: dict[str, str]
    metadata: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str | None:
        return self.metadata["mlflow"].get("run_id")


# --- reading an archive or a folder ----------------------------------------------------------


def archive_kind(head: bytes) -> str | None:
    """ "zip", "tar.gz" or None (not an archive) from a file's first bytes."""
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    return None


def _limits() -> ArchiveLimits:
    # A model directory unpacks to at most what one upload may weigh.
    return ArchiveLimits.from_settings(
        max_total_size=min(settings.ARCHIVE_MAX_TOTAL_SIZE, settings.MAX_ARTIFACT_SIZE)
    )


def _refuse(problem: str, field_name: str) -> ArchiveError:
    return ArchiveError(f"The MLflow model archive is refused: {problem}.", field=field_name)


def _model_root(names: list[str], field_name: str) -> str | None:
    """The folder holding the one MLmodel file ("" for the archive's top), or None."""
    roots = sorted(
        str(PurePosixPath(name).parent)
        for name in names
        if PurePosixPath(name).name == MLMODEL and len(PurePosixPath(name).parts) <= 2
    )
    if not roots:
        return None
    if len(roots) > 1:
        raise _refuse(
            f"it holds several MLmodel files ({', '.join(roots)}): one model each", field_name
        )
    return "" if roots[0] == "." else roots[0]


def _relative(name: str, root: str) -> str | None:
    path = PurePosixPath(name)
    if not root:
        return str(path)
    if path.parts[:1] != (root,):
        return None
    return str(PurePosixPath(*path.parts[1:])) if len(path.parts) > 1 else None


def _zip_files(data: bytes, field_name: str) -> dict[str, bytes] | None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise ArchiveUnreadable(
            f"The upload is not a readable zip archive ({type(exc).__name__}).", field=field_name
        ) from None
    root = _model_root([info.filename for info in infos], field_name)
    if root is None:
        return None  # a zip without MLmodel: a skops file, read as one
    problems = []
    for info in infos:
        problem = member_name_problem(info.filename)
        mode = info.external_attr >> 16
        if problem is None and mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            problem = f"{info.filename!r}: not a regular file (links and devices are refused)"
        if problem:
            problems.append(problem)
    if problems:
        raise _refuse("; ".join(problems[:10]), field_name)
    zip_check(data, what="The MLflow model archive", field=field_name, limits=_limits())
    files: dict[str, bytes] = {}
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in infos:
            relative = None if info.is_dir() else _relative(info.filename, root)
            if relative is not None:
                files[relative] = archive.read(info)
    return files


def _tar_files(file: IO[bytes], field_name: str) -> dict[str, bytes]:
    try:
        file.seek(0)
        with tarfile.open(fileobj=file, mode="r:*") as archive:
            members = archive.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveUnreadable(
            f"The upload is not a readable tar.gz archive ({type(exc).__name__}: {exc}).",
            field=field_name,
        ) from None
    problems = []
    for member in members:
        problem = member_name_problem(member.name)
        if problem is None and not (member.isfile() or member.isdir()):
            problem = f"{member.name!r}: not a regular file (links and devices are refused)"
        if problem:
            problems.append(problem)
    if problems:
        raise _refuse("; ".join(problems[:10]), field_name)
    file.seek(0)
    tar_check(file, what="The MLflow model archive", field=field_name, limits=_limits())
    root = _model_root([m.name for m in members if m.isfile()], field_name)
    if root is None:
        raise _refuse(
            "it holds no MLmodel file (an MLflow model directory was expected)", field_name
        )
    files: dict[str, bytes] = {}
    file.seek(0)
    with tarfile.open(fileobj=file, mode="r:*") as archive:
        for member in archive:
            relative = _relative(member.name, root) if member.isfile() else None
            if relative is not None:
                files[relative] = archive.extractfile(member).read()
    return files


def archive_files(file: IO[bytes], *, field_name: str = "artifact") -> dict[str, bytes] | None:
    """The files of the MLflow model directory in a .zip or .tar.gz (names relative to the
    folder holding MLmodel), or None when `file` is no archive or a zip without MLmodel (a
    skops file). ArchiveError (400) for an unsafe or oversized archive, before any member is
    read."""
    file.seek(0)
    kind = archive_kind(file.read(4))
    file.seek(0)
    if kind == "zip":
        return _zip_files(file.read(), field_name)
    if kind == "tar.gz":
        return _tar_files(file, field_name)
    return None


def directory_files(path: Path, *, field_name: str = "path") -> dict[str, bytes]:
    """The files of an MLflow model folder, read as an archive would be: links refused, sizes
    bounded by the upload limit."""
    limits = _limits()
    if not (path / MLMODEL).is_file():
        raise _refuse(f"{str(path)!r} holds no MLmodel file", field_name)
    files: dict[str, bytes] = {}
    total = 0
    for folder, dirs, names in os.walk(path, followlinks=False):
        for name in [*dirs, *names]:
            full = Path(folder) / name
            if full.is_symlink():
                raise _refuse(f"{str(full.relative_to(path))!r} is a link", field_name)
        for name in names:
            full = Path(folder) / name
            if not full.is_file():
                raise _refuse(f"{str(full.relative_to(path))!r} is not a regular file", field_name)
            total += full.stat().st_size
            if total > (limits.max_total_size or total):
                raise _refuse(
                    f"its files add up to more than {limits.max_total_size} bytes "
                    "(MAX_ARTIFACT_SIZE)",
                    field_name,
                )
            files[full.relative_to(path).as_posix()] = full.read_bytes()
    return files


def path_files(path: Path) -> dict[str, bytes]:
    """The model files of a folder, a .zip or a .tar.gz on this machine."""
    if path.is_dir():
        return directory_files(path)
    if not path.is_file():
        raise _refuse(f"{str(path)!r} is neither a folder nor a file", "path")
    with open(path, "rb") as handle:
        files = archive_files(handle, field_name="path")
    if files is None:
        raise _refuse(f"{str(path)!r} is not a .zip or .tar.gz holding an MLmodel file", "path")
    return files


# --- reading the model directory --------------------------------------------------------------


# The size an MLmodel or python_env.yaml may have, counted as if every YAML alias were written
# out (a value counts 1, text its length more): MLflow's own files hold a few dozen values and
# some KB of signature text. Aliases ("billion laughs") let a few KB stand for billions of
# values that are cheap to load but not to store, show or send on.
YAML_MAX_EXPANDED = 4 * 1024 * 1024


def _yaml(data: bytes, what: str) -> Any:
    """`data` parsed with yaml.safe_load; MlflowModelError when it is not YAML or is larger
    than YAML_MAX_EXPANDED once its aliases are expanded."""
    import yaml

    try:
        loaded = yaml.safe_load(data.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        raise MlflowModelError(f"{what} is not readable YAML ({type(exc).__name__}).") from None
    pending, seen = [loaded], 0
    while pending:
        value = pending.pop()
        seen += 1 + (len(value) if isinstance(value, str | bytes) else 0)
        if seen > YAML_MAX_EXPANDED:
            raise MlflowModelError(
                f"{what} is larger than {YAML_MAX_EXPANDED} once its YAML aliases are expanded."
            )
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return loaded


def _dict_or_empty(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _short_text(value: Any, limit: int = 200) -> str | None:
    """`value` when it is text of at most `limit` characters (an id, a time), else None."""
    return value if isinstance(value, str) and len(value) <= limit else None


def signature_schema(signature: Any) -> list[dict[str, Any]] | None:
    """The input schema of an MLflow signature's column specs (MLflow type → this registry's,
    see COLUMN_TYPES); None when there is no signature. MlflowModelError for a tensor signature
    or a column type that has no feature type here."""
    if not isinstance(signature, dict) or not signature.get("inputs"):
        return None
    try:
        specs = json.loads(signature["inputs"])
    except (TypeError, ValueError, RecursionError):
        raise MlflowModelError("The MLmodel signature's inputs are not readable JSON.") from None
    if not isinstance(specs, list) or not specs:
        return None
    if any(isinstance(s, dict) and s.get("type") == "tensor" for s in specs):
        tensors = [s.get("tensor-spec") or {} for s in specs if isinstance(s, dict)]
        described = ", ".join(f"{t.get('dtype', '?')} of shape {t.get('shape')}" for t in tensors)
        raise MlflowModelError(
            f"The MLflow model has a tensor signature ({described}): this registry serves "
            "models whose inputs are named columns. Log the model "
            "with a pandas DataFrame as input_example (or a column-based signature)."
        )
    features = []
    for index, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise MlflowModelError(f"The MLflow signature's column {index} is not an object.")
        name, kind = spec.get("name"), spec.get("type")
        if not name or not isinstance(name, str):
            raise MlflowModelError(
                f"The MLflow signature's column {index} has no name: requests name features."
            )
        if not isinstance(kind, str) or kind not in COLUMN_TYPES:
            raise MlflowModelError(
                f"The MLflow signature's column {name!r} has type {kind!r}, which this registry "
                f"cannot validate (supported: {', '.join(COLUMN_TYPES)})."
            )
        features.append(
            {"name": name, "type": COLUMN_TYPES[kind], "required": bool(spec.get("required", True))}
        )
    return features


def _input_example(
    files: Mapping[str, bytes], info: Any, schema: list[dict[str, Any]] | None, notes: list[str]
) -> list[dict[str, Any]] | None:
    """The input example as feature rows (the reference sample), or None with a note why."""
    if not isinstance(info, dict) or not info.get("artifact_path"):
        return None
    raw = files.get(str(info["artifact_path"]))
    if raw is None:
        notes.append(f"The input example {info['artifact_path']!r} is missing from the model.")
        return None
    try:
        example = json.loads(raw)
    except (ValueError, RecursionError):
        notes.append("The input example is not readable JSON; no reference sample.")
        return None
    if isinstance(example, dict) and "dataframe_split" in example:
        example = example["dataframe_split"]
    if isinstance(example, dict) and "inputs" in example:
        example = example["inputs"]
    rows: list[dict[str, Any]] | None = None
    if isinstance(example, dict) and isinstance(example.get("data"), list):
        columns = example.get("columns") or [f["name"] for f in schema or []]
        named = isinstance(columns, list) and all(isinstance(c, str) for c in columns)
        if named and all(isinstance(r, list) and len(r) == len(columns) for r in example["data"]):
            rows = [dict(zip(columns, r, strict=True)) for r in example["data"]]
    elif isinstance(example, list) and all(isinstance(r, dict) for r in example):
        rows = example
    elif isinstance(example, list) and schema:
        width = len(schema)
        if all(isinstance(r, list) and len(r) == width for r in example):
            rows = [dict(zip([f["name"] for f in schema], r, strict=True)) for r in example]
    if not rows:
        notes.append(
            f"The input example (type {info.get('type')!r}) cannot be read as feature rows; "
            "no reference sample."
        )
        return None
    return rows


def _requirements(files: Mapping[str, bytes]) -> dict[str, str]:
    pinned: dict[str, str] = {}
    for line in files.get(_REQUIREMENTS, b"").decode("utf-8", "replace").splitlines():
        match = _PINNED.match(line)
        if match:
            pinned[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pinned


def _minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def library_versions_compare(model_versions: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """{library: {"model": v, "server": v}} for the libraries both name, and notes on the
    differences. MlflowModelError when the model's scikit-learn is another major.minor than the
    server's: scikit-learn supports loading a persisted estimator only in the version that
    saved it (its "Model persistence" guide), and across minor versions estimators change their
    attributes; a patch-level difference is noted."""
    server = {**artifacts.library_versions(), **_optional_versions()}
    compared = {
        name: {"model": model_versions[name], "server": server[name]}
        for name in sorted(set(model_versions) & set(server))
    }
    model_sklearn, server_sklearn = model_versions.get("scikit-learn"), server["scikit-learn"]
    if model_sklearn and _minor(model_sklearn) != _minor(server_sklearn):
        raise MlflowModelError(
            f"The model was saved with scikit-learn {model_sklearn}; this server runs "
            f"scikit-learn {server_sklearn} and cannot load it safely. Re-save (or re-train) "
            f"the model with scikit-learn {server_sklearn}."
        )
    notes = [
        f"Saved with {name} {pair['model']}; this server runs {pair['server']}."
        for name, pair in compared.items()
        if pair["model"] != pair["server"] and name != "python"
    ]
    return compared, notes


def _optional_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("cloudpickle", "pandas"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def model_read(files: Mapping[str, bytes]) -> MlflowModel:
    """The MLflow model in a directory's files (names relative to the folder of MLmodel).

    MlflowModelError (400) when there is no sklearn flavor, the model file is missing, the
    serialization format or a signature column is not supported, the signature is a tensor
    signature, or the model's scikit-learn cannot be loaded by this server's."""
    if MLMODEL not in files:
        raise MlflowModelError("The MLflow model has no MLmodel file.")
    spec = _yaml(files[MLMODEL], "MLmodel")
    if not isinstance(spec, dict):
        raise MlflowModelError("MLmodel does not describe a model.")
    flavors = spec.get("flavors") or {}
    flavor = flavors.get("sklearn") if isinstance(flavors, dict) else None
    if not isinstance(flavor, dict):
        raise MlflowModelError(
            "The MLflow model has no sklearn flavor (flavors: "
            f"{', '.join(map(str, flavors)) if isinstance(flavors, dict) else 'none'}): only "
            "scikit-learn models can be registered."
        )
    serialization = flavor.get("serialization_format") or "cloudpickle"
    if not isinstance(serialization, str) or serialization not in SERIALIZATION_FORMATS:
        raise MlflowModelError(
            f"The sklearn flavor's serialization_format {serialization!r} is not supported "
            f"(supported: {', '.join(SERIALIZATION_FORMATS)})."
        )
    payload_name = str(flavor.get("pickled_model") or "")
    payload = files.get(payload_name)
    if not payload_name or payload is None:
        raise MlflowModelError(
            f"The model file {payload_name!r} named by MLmodel is missing from the model."
        )
    notes: list[str] = []
    if flavor.get("code"):
        notes.append(
            f"The model was logged with code paths ({str(flavor['code'])[:200]}); they are not "
            "imported: "
            "a model whose classes live there is refused when it is opened."
        )
    schema = signature_schema(spec.get("signature"))
    if schema is None:
        notes.append(
            "The MLflow model has no signature: the input schema comes from the estimator."
        )
    sample = _input_example(files, spec.get("saved_input_example_info"), schema, notes)

    model_versions = _requirements(files)
    if flavor.get("sklearn_version"):
        model_versions["scikit-learn"] = str(flavor["sklearn_version"])
    python_env = _yaml(files[_PYTHON_ENV], _PYTHON_ENV) if _PYTHON_ENV in files else None
    python_function = flavors.get("python_function")
    python_version = (
        python_function.get("python_version") if isinstance(python_function, dict) else None
    )
    if isinstance(python_env, dict) and python_env.get("python"):
        python_version = python_env["python"]
    if python_version:
        model_versions["python"] = str(python_version)
    compared, version_notes = library_versions_compare(model_versions)
    notes += version_notes

    mlflow_metadata = {
        key: _short_text(spec[key])
        for key in ("run_id", "model_uuid", "model_id", "artifact_path", "utc_time_created")
        if _short_text(spec.get(key))
    }
    mlflow_metadata.update(
        {
            "mlflow_version": _short_text(spec.get("mlflow_version")),
            "serialization_format": serialization,
            "model_file": payload_name,
            "signature": {
                k: v for k, v in _dict_or_empty(spec.get("signature")).items() if isinstance(v, str)
            },
            "library_versions_compared": compared,
        }
    )
    if isinstance(python_env, dict):
        mlflow_metadata["python_env"] = python_env
    return MlflowModel(
        payload=payload,
        payload_name=payload_name,
        artifact_format=SERIALIZATION_FORMATS[serialization],
        input_schema=schema,
        reference_sample=sample,
        library_versions={
            name: model_versions[name]
            for name in ("python", *_COMPARED_LIBRARIES, "mlflow")
            if name in model_versions
        },
        metadata={"mlflow": mlflow_metadata},
        notes=notes,
    )


def upload_unwrap(
    spooled: artifacts.SpooledArtifact,
) -> tuple[artifacts.SpooledArtifact, MlflowModel | None]:
    """An upload as the artifact to register: the inner model file of an MLflow model archive
    (with the model read from it), or the upload itself when it is no such archive."""
    files = archive_files(spooled.file)
    spooled.file.seek(0)
    if files is None:
        return spooled, None
    model = model_read(files)
    inner = artifacts.SpooledArtifact(
        file=io.BytesIO(model.payload),
        sha256=hashlib.sha256(model.payload).hexdigest(),
        size=len(model.payload),
    )
    if inner.size == 0:
        raise MlflowModelError(f"The model file {model.payload_name!r} is empty.")
    return inner, model
