"""Importing from MLflow: one model directory (`import_mlflow_model`) or a whole model registry
read from a tracking server's REST API (`import_mlflow_registry`).

The tracking server is read over its REST API (/api/2.0/mlflow/..., and the artifact proxy
/api/2.0/mlflow-artifacts/... that `mlflow server` serves by default) with httpx: the mlflow
package pins other versions of our libraries, so it is no dependency of this product, and the
few read-only calls needed here are a stable, documented API.

Every version is registered by services.model_version_create with the model file inside the
MLflow model (mlregistry/mlflow_import.py), so it passes the same checks as an upload: the
pickle policy for a cloudpickle or pickle payload (run the command as a user with the
upload_pickle permission: `--user`), skops' trusted types otherwise.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from sklearn.base import is_regressor

from config.archives import member_name_problem
from config.errors import ConflictError, DomainError, ValidationFailed
from config.numbers import finite_number
from mlregistry import mlflow_import, services
from mlregistry.audit import Actor
from mlregistry.models import ModelVersion, RegisteredModel, Stage, Task, VersionSource

# MLflow's stages (mlflow.entities.model_registry.model_version_stages) and ours.
STAGES = {
    "None": Stage.NONE,
    "Staging": Stage.STAGING,
    "Production": Stage.PRODUCTION,
    "Archived": Stage.ARCHIVED,
}
_NAME = re.compile(r"^[-a-zA-Z0-9_]+$")
_PAGE = 1000
# A tracking server is trusted to list what it holds, not to list for ever: pages of a search,
# and entries of one model's artifact folders, past these end the import with a clear error.
_MAX_PAGES = 1000
_MAX_ARTIFACT_ENTRIES = 10_000


class MlflowRegistryError(DomainError):
    """The tracking server cannot be read (unreachable, an error answer, not MLflow)."""

    status_code = 503
    error_type = "mlflow_unavailable"
    answer_status: int | None = None  # the tracking server's HTTP status, when it answered


# --- one model directory ---------------------------------------------------------------------


def _task_of(model: mlflow_import.MlflowModel, actor: Actor) -> str:
    estimator = services.artifact_estimator_open(
        data=model.payload, artifact_format=model.artifact_format, actor=actor
    )
    return Task.REGRESSION if is_regressor(estimator) else Task.CLASSIFICATION


def mlflow_model_import(
    *,
    model: mlflow_import.MlflowModel,
    name: str,
    actor: Actor,
    description: str = "",
    tags: dict[str, str] | None = None,
    version_number: int | None = None,
    metrics: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    version_tags: dict[str, str] | None = None,
    lineage: dict[str, str] | None = None,
) -> ModelVersion:
    """Registers an MLflow model (read by mlflow_import) as a new version of `name`, creating
    the model (its task from the estimator, its description and tags) when it does not exist;
    both or neither. `version_tags` ({key: value}) and `lineage` (run_id, git_commit,
    source_url) go to the version as model_version_create takes them. Raises what
    model_version_create raises."""
    with transaction.atomic():
        registered = RegisteredModel.objects.filter(name=name).first()
        if registered is None:
            registered = services.registered_model_create(
                name=name,
                actor=actor,
                task=_task_of(model, actor),
                description=description,
                tags=tags,
            )
        merged = {**model.metadata, **(metadata or {})}
        merged["mlflow"] = {**model.metadata["mlflow"], **(metadata or {}).get("mlflow", {})}
        return services.model_version_create(
            model=registered,
            artifact=io.BytesIO(model.payload),
            actor=actor,
            artifact_format=model.artifact_format,
            input_schema=model.input_schema,
            reference_sample=model.reference_sample,
            metrics=metrics,
            params=params,
            metadata=merged,
            library_versions=model.library_versions,
            source=VersionSource.IMPORT,
            version_number=version_number,
            tags=version_tags,
            **(lineage or {}),
        )


def mlflow_path_import(*, path: Path, name: str, actor: Actor) -> ModelVersion:
    """`manage.py import_mlflow_model PATH --name NAME`: a folder, .zip or .tar.gz on this
    machine."""
    model = mlflow_import.model_read(mlflow_import.path_files(path))
    return mlflow_model_import(
        model=model, name=name, actor=actor, metadata={"mlflow": {"imported_from": str(path)}}
    )


# --- the tracking server -----------------------------------------------------------------------


class TrackingServer:
    """The read-only calls of MLflow's REST API that an import needs. Credentials as MLflow's
    client reads them: MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and _PASSWORD."""

    def __init__(self, uri: str, *, timeout: float = 30.0) -> None:
        import httpx

        self.uri = uri.rstrip("/")
        auth = None
        headers = {}
        if os.environ.get("MLFLOW_TRACKING_TOKEN"):
            headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
        elif os.environ.get("MLFLOW_TRACKING_USERNAME"):
            auth = (
                os.environ["MLFLOW_TRACKING_USERNAME"],
                os.environ.get("MLFLOW_TRACKING_PASSWORD", ""),
            )
        self.http = httpx.Client(base_url=self.uri, timeout=timeout, headers=headers, auth=auth)

    def close(self) -> None:
        self.http.close()

    def _get(
        self,
        route: str,
        params: dict[str, Any] | None = None,
        *,
        raw: bool = False,
        limit: int | None = None,
    ) -> Any:
        """The JSON answer of a GET (the bytes with `raw`, at most `limit` of them: the answer
        is streamed and cut off past it, whatever its headers said); MlflowRegistryError
        otherwise, mlflow_import.MlflowModelError past `limit`."""
        import httpx

        try:
            if raw and limit is not None:
                return self._get_bytes(route, limit)
            response = self.http.get(route, params=params)
        except httpx.HTTPError as exc:
            raise MlflowRegistryError(
                f"The MLflow tracking server at {self.uri} cannot be reached "
                f"({type(exc).__name__}: {exc})."
            ) from None
        if response.status_code == 404 and route.endswith("/runs/get"):
            return None
        if response.status_code >= 400:
            error = MlflowRegistryError(
                f"The MLflow tracking server answered {response.status_code} to {route}: "
                f"{response.text[:300]}"
            )
            error.answer_status = response.status_code
            raise error
        try:
            return response.content if raw else response.json()
        except ValueError:
            raise MlflowRegistryError(
                f"{self.uri}{route} did not answer JSON: is this an MLflow tracking server?"
            ) from None

    def _get_bytes(self, route: str, limit: int) -> bytes:
        received = bytearray()
        with self.http.stream("GET", route) as response:
            if response.status_code >= 400:
                response.read()
                error = MlflowRegistryError(
                    f"The MLflow tracking server answered {response.status_code} to {route}: "
                    f"{response.text[:300]}"
                )
                error.answer_status = response.status_code
                raise error
            for chunk in response.iter_bytes():
                received += chunk
                if len(received) > limit:
                    raise mlflow_import.MlflowModelError(
                        f"The model's files add up to more than {limit} bytes (MAX_ARTIFACT_SIZE)."
                    )
        return bytes(received)

    def _paged(self, path: str, key: str, **params: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        token = None
        for _ in range(_MAX_PAGES):
            page = self._get(
                path, {"max_results": _PAGE, **params, **({"page_token": token} if token else {})}
            )
            items += page.get(key, [])
            token = page.get("next_page_token")
            if not token:
                return items
        raise MlflowRegistryError(
            f"{self.uri}{path} still had more after {_MAX_PAGES} pages of {_PAGE}: import fewer "
            "models at a time (--model)."
        )

    def registered_models(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        """Registered models (all, or those named), each with tags and aliases; a named model
        MLflow does not know comes back as {"name": ..., "missing": True}."""
        if names:
            found = []
            for name in names:
                try:
                    answer = self._get("/api/2.0/mlflow/registered-models/get", {"name": name})
                except MlflowRegistryError as exc:
                    if exc.answer_status != 404:
                        raise
                    found.append({"name": name, "missing": True})
                else:
                    found.append(answer["registered_model"])
            return found
        return self._paged("/api/2.0/mlflow/registered-models/search", "registered_models")

    def model_versions(self, name: str) -> list[dict[str, Any]]:
        """A model's versions, oldest first."""
        quoted = name.replace("'", "\\'")
        versions = self._paged(
            "/api/2.0/mlflow/model-versions/search", "model_versions", filter=f"name='{quoted}'"
        )
        return sorted(versions, key=lambda v: int(v["version"]))

    def run(self, run_id: str) -> dict[str, Any] | None:
        answer = self._get("/api/2.0/mlflow/runs/get", {"run_id": run_id}) if run_id else None
        return answer.get("run") if answer else None

    def model_files(self, name: str, version: str) -> dict[str, bytes]:
        """The files of a version's MLflow model directory, bounded as an uploaded archive is."""
        uri = self._get(
            "/api/2.0/mlflow/model-versions/get-download-uri", {"name": name, "version": version}
        )["artifact_uri"]
        if uri.startswith("mlflow-artifacts:"):
            path = re.sub(r"^mlflow-artifacts:(//[^/]*)?/*", "", uri)
            return self._artifact_files(path)
        local = uri.removeprefix("file://")
        if local.startswith("/") and Path(local).is_dir():
            return mlflow_import.directory_files(Path(local))
        raise MlflowRegistryError(
            f"{name} v{version} is stored at {uri}, which this import cannot read: it reads "
            "artifacts through the tracking server (`mlflow server` serves them by default) or "
            "from a folder on this machine. Copy the model and use import_mlflow_model."
        )

    def _artifact_files(self, root: str) -> dict[str, bytes]:
        limit = min(settings.ARCHIVE_MAX_TOTAL_SIZE, settings.MAX_ARTIFACT_SIZE)
        listed: list[tuple[str, int]] = []
        folders = [""]
        while folders:
            folder = folders.pop()
            answer = self._get(
                "/api/2.0/mlflow-artifacts/artifacts", {"path": f"{root}/{folder}".rstrip("/")}
            )
            for entry in answer.get("files", []) if isinstance(answer, dict) else []:
                relative = f"{folder}/{entry['path'].rsplit('/', 1)[-1]}".lstrip("/")
                problem = member_name_problem(relative)
                if problem:
                    raise mlflow_import.MlflowModelError(
                        f"The model's files are refused: {problem}."
                    )
                if entry.get("is_dir"):
                    folders.append(relative)
                else:
                    listed.append((relative, int(entry.get("file_size") or 0)))
                if len(folders) + len(listed) > _MAX_ARTIFACT_ENTRIES:
                    raise mlflow_import.MlflowModelError(
                        f"The model's folder lists more than {_MAX_ARTIFACT_ENTRIES} entries."
                    )
        if sum(size for _, size in listed) > limit:
            raise mlflow_import.MlflowModelError(
                f"The model's files add up to more than {limit} bytes (MAX_ARTIFACT_SIZE)."
            )
        files: dict[str, bytes] = {}
        for relative, _ in listed:
            # The listed sizes are the server's word: each download is cut off at what is left.
            files[relative] = self._get(
                f"/api/2.0/mlflow-artifacts/artifacts/{root}/{relative}",
                raw=True,
                limit=limit - sum(map(len, files.values())),
            )
        return files


# --- the registry --------------------------------------------------------------------------------


@dataclass
class ImportRow:
    """One line of the summary: a registered model's version and what became of it."""

    model: str
    version: int | None
    mlflow_stage: str
    stage: str
    result: str  # imported | exists | would import | refused
    reason: str = ""


@dataclass
class ImportReport:
    rows: list[ImportRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def refused(self) -> list[ImportRow]:
        return [row for row in self.rows if row.result == "refused"]


def _tags(tags: list[dict[str, str]]) -> dict[str, str]:
    """MLflow's [{"key", "value"}] as this registry's {key: value} (mlregistry.tags rules:
    a key it cannot hold is refused by the service, naming it)."""
    return {t["key"]: t.get("value") or "" for t in tags if t.get("key")}


def _lineage(metadata: dict[str, Any]) -> dict[str, str]:
    """The version's lineage fields from its MLflow provenance (_lineage_metadata)."""
    fields = {
        "run_id": metadata.get("run_id"),
        "git_commit": metadata.get("git_commit"),
        "source_url": metadata.get("run_url"),
    }
    return {key: value for key, value in fields.items() if value}


def _lineage_metadata(
    *, server: TrackingServer, version: dict[str, Any], run: dict[str, Any] | None
) -> dict[str, Any]:
    """The version's MLflow provenance: kept in its metadata (`mlflow` key): run id, source,
    the run's git commit and a link to the run."""
    run_tags = {t["key"]: t.get("value") for t in ((run or {}).get("data") or {}).get("tags", [])}
    info = (run or {}).get("info") or {}
    lineage = {
        "run_id": version.get("run_id") or None,
        "source": version.get("source"),
        "git_commit": run_tags.get("mlflow.source.git.commit"),
        "run_url": (
            f"{server.uri}/#/experiments/{info['experiment_id']}/runs/{info['run_id']}"
            if info.get("experiment_id") and info.get("run_id")
            else None
        ),
    }
    return {key: value for key, value in lineage.items() if value}


def _run_metrics(run: dict[str, Any] | None, notes: list[str], what: str) -> dict[str, float]:
    metrics = {}
    for metric in ((run or {}).get("data") or {}).get("metrics", []):
        value = metric.get("value")
        if finite_number(value):
            metrics[metric["key"]] = value
        else:
            notes.append(
                f"{what}: metric {metric.get('key')!r} = {value!r} is not a finite number; "
                "left out."
            )
    return metrics


def _run_params(run: dict[str, Any] | None) -> dict[str, str]:
    return {p["key"]: p.get("value") for p in ((run or {}).get("data") or {}).get("params", [])}


def _aliases_apply(*, model: RegisteredModel, aliases: dict[str, int], actor: Actor) -> list[str]:
    """Points each of MLflow's aliases (alias -> version number) at its version through
    model_alias_set (audited; nothing written when it already points there) and returns what
    moved. An alias name this registry refuses (reserved, or not ^[a-z][a-z0-9_-]{0,63}$) or
    one pointing to a version that was not imported is reported, not applied."""
    changed = []
    current = {row.alias: row.version.version for row in model.aliases.select_related("version")}
    for alias, number in sorted(aliases.items()):
        if current.get(alias) == number:
            continue
        try:
            services.model_alias_set(
                model=model, alias=alias, version=number, actor=actor, comment="MLflow import"
            )
        except (ValidationFailed, ConflictError) as exc:
            changed.append(f"{model.name}: alias {alias!r} not set: {exc}")
            continue
        changed.append(f"{model.name}: alias {alias} -> v{number}")
    return changed


def _imported_from(version: ModelVersion, mlflow_version: dict[str, Any]) -> bool:
    recorded = (version.metadata or {}).get("mlflow", {})
    return recorded.get("registered_model") == mlflow_version["name"] and str(
        recorded.get("version")
    ) == str(mlflow_version["version"])


def _production_winner(versions: list[dict[str, Any]]) -> int | None:
    production = [int(v["version"]) for v in versions if v.get("current_stage") == "Production"]
    return max(production) if production else None


def mlflow_registry_import(
    *,
    server: TrackingServer,
    actor: Actor,
    names: list[str] | None = None,
    dry_run: bool = False,
) -> ImportReport:
    """Copies registered models from an MLflow tracking server: each version under the same
    number (its model file, signature, input example, run metrics and params, run id as
    lineage, description and tags), its stage (at most one production: of several MLflow
    production versions the highest wins, the others are archived, and it is reported), and
    the aliases. Idempotent: versions already imported are left as they are. `dry_run` reads
    and checks everything (the MLmodel, the signature, library versions) and writes nothing;
    opening the estimator is left to the import itself."""
    report = ImportReport()
    for registered in server.registered_models(names):
        name = registered["name"]
        if registered.get("missing"):
            report.rows.append(
                ImportRow(name, None, "", "", "refused", "no such registered model in MLflow")
            )
            continue
        if not _NAME.match(name) or len(name) > 100:
            report.rows.append(
                ImportRow(
                    name,
                    None,
                    "",
                    "",
                    "refused",
                    "not a valid model name here (letters, digits, '-' and '_', at most 100)",
                )
            )
            continue
        _model_import(
            server=server, registered=registered, actor=actor, dry_run=dry_run, report=report
        )
    return report


def _model_import(
    *,
    server: TrackingServer,
    registered: dict[str, Any],
    actor: Actor,
    dry_run: bool,
    report: ImportReport,
) -> None:
    name = registered["name"]
    versions = server.model_versions(name)
    winner = _production_winner(versions)
    for mlflow_version in versions:
        number = int(mlflow_version["version"])
        mlflow_stage = mlflow_version.get("current_stage") or "None"
        stage = STAGES.get(mlflow_stage, Stage.NONE)
        if stage == Stage.PRODUCTION and number != winner:
            stage = Stage.ARCHIVED
        row = ImportRow(name, number, mlflow_stage, stage, "")
        report.rows.append(row)
        existing = ModelVersion.objects.filter(model__name=name, version=number).first()
        if existing is not None:
            if _imported_from(existing, mlflow_version):
                row.result, row.stage = "exists", existing.stage
            else:
                row.result = "refused"
                row.reason = f"{name} v{number} exists here and was not imported from MLflow"
            continue
        try:
            model = mlflow_import.model_read(server.model_files(name, mlflow_version["version"]))
            if dry_run:
                row.result = "would import"
                continue
            # Read before the transaction, which then holds no lock across a network call.
            run = server.run(mlflow_version.get("run_id") or "")
            # One transaction: a version committed without its stage would read "exists" to
            # every later run, which then never gives it the stage.
            with transaction.atomic():
                version = _version_import(
                    server=server,
                    run=run,
                    registered=registered,
                    mlflow_version=mlflow_version,
                    model=model,
                    actor=actor,
                    report=report,
                )
                if stage != Stage.NONE:
                    services.model_version_transition(
                        version=version,
                        stage=stage,
                        actor=actor,
                        comment=f"imported from MLflow (stage {mlflow_stage})",
                    )
        except (DomainError, MlflowRegistryError) as exc:
            row.result, row.reason = "refused", exc.message
            continue
        row.result = "imported"
        if stage == Stage.ARCHIVED and mlflow_stage == "Production":
            report.notes.append(
                f"{name}: v{number} was in Production in MLflow as well as v{winner}; the "
                f"latest (v{winner}) is production here, v{number} is archived."
            )
    aliases = {a["alias"]: int(a["version"]) for a in registered.get("aliases", [])}
    model = RegisteredModel.objects.filter(name=name).first()
    if model is not None and not dry_run:
        report.notes += _aliases_apply(model=model, aliases=aliases, actor=actor)


def _version_import(
    *,
    server: TrackingServer,
    registered: dict[str, Any],
    mlflow_version: dict[str, Any],
    model: mlflow_import.MlflowModel,
    actor: Actor,
    report: ImportReport,
    run: dict[str, Any] | None,
) -> ModelVersion:
    name, number = registered["name"], int(mlflow_version["version"])
    what = f"{name} v{number}"
    mlflow = {
        "tracking_uri": server.uri,
        "registered_model": name,
        "version": number,
        "stage": mlflow_version.get("current_stage"),
        "description": mlflow_version.get("description") or "",
        "tags": {t["key"]: t.get("value") for t in mlflow_version.get("tags", [])},
        **_lineage_metadata(server=server, version=mlflow_version, run=run),
    }
    return mlflow_model_import(
        model=model,
        name=name,
        actor=actor,
        description=registered.get("description") or "",
        tags=_tags(registered.get("tags", [])),
        version_tags=_tags(mlflow_version.get("tags", [])),
        lineage=_lineage(mlflow),
        version_number=number,
        metrics=_run_metrics(run, report.notes, what),
        params=_run_params(run) or None,
        metadata={"mlflow": mlflow},
    )
