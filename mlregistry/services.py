"""Every change to the registry goes through these functions: the admin, the API, the
management commands and the Celery jobs all call them, so each operation has one code path."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import datetime, timedelta
from functools import partial
from typing import IO, Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.files import File
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone
from sklearn.base import is_classifier, is_regressor

from config.errors import ConflictError, ForbiddenError, NotFoundError, ValidationFailed
from config.events import event_publish
from mlregistry import artifacts, mlflow_import, reference, schema
from mlregistry.aliases import alias_validate
from mlregistry.audit import (
    Actor,
    audit_record,
    created_changes,
    deleted_changes,
    fields_update,
)
from mlregistry.hooks import version_leaving_service
from mlregistry.lineage import lineage_validate
from mlregistry.models import (
    MODEL_ID_PATTERN,
    ArtifactFormat,
    ModelAlias,
    ModelVersion,
    RegisteredModel,
    Stage,
    StageTransition,
    Task,
    VersionSource,
)
from mlregistry.selectors import (
    VERSION_NUMBER_MAX,
    previous_production_version_get,
    registered_model_caches_invalidate,
    routing_invalidate,
)
from mlregistry.storage import get_artifact_storage
from mlregistry.tags import tags_changes_validate, tags_merge
from mlregistry.webhooks.payloads import version_event_data
from mlregistry.webhooks.services import webhooks_of_model_delete

logger = logging.getLogger(__name__)


class TransitionError(ConflictError):
    error_type = "transition_error"


# A version's audit diff leaves out what is bulky and derived from the artifact (the schema,
# the reference sample and its statistics); the SHA-256 names the artifact they came from.
_VERSION_AUDITED_FIELDS = (
    "model",
    "version",
    "stage",
    "artifact",
    "artifact_format",
    "artifact_sha256",
    "artifact_size",
    "metrics",
    "params",
    "metadata",
    "source",
    "tags",
    "run_id",
    "git_commit",
    "source_url",
    "training_dataset_uri",
    "training_dataset_sha256",
    "created_by",
)


def _actor_fields(actor: Actor) -> tuple[AbstractBaseUser | None, str]:
    if isinstance(actor, str):
        return None, actor
    return actor, actor.get_username()


def _has_perm(actor: Actor, perm: str) -> bool:
    return not isinstance(actor, str) and actor.has_perm(perm)


def registered_model_lock(*, model_id: int) -> RegisteredModel:
    """The model row, locked until the caller's transaction ends (call inside atomic()).

    NotFoundError (404) when it is gone: a request that looked the model up and then lost the
    race to a delete answers as if it had come a moment later, never with a 500."""
    locked = RegisteredModel.objects.select_for_update().filter(pk=model_id).first()
    if locked is None:
        raise NotFoundError("This model was deleted meanwhile; nothing was changed.")
    return locked


def _version_reread(version: ModelVersion) -> ModelVersion:
    """A version's row as it is now (under its model's lock); NotFoundError when deleted."""
    current = ModelVersion.objects.filter(pk=version.pk).first()
    if current is None:
        raise NotFoundError(
            f"{version.model.name} v{version.version} was deleted meanwhile; nothing was changed."
        )
    return current


def registered_model_create(
    *,
    name: str,
    actor: Actor,
    task: str = Task.CLASSIFICATION,
    description: str = "",
    tags: dict[str, str] | list[str] | None = None,
) -> RegisteredModel:
    """Registers a new model name, with `tags` ({key: value}; a list of keys reads as keys
    with empty values; rules in mlregistry.tags, ValidationFailed 400).

    A name made only of ASCII digits is refused (ValidationFailed, 400): the seeds'
    /predict/{model_id} alias reads such a string as a database id. ConflictError (409) when
    the name is taken."""
    if MODEL_ID_PATTERN.fullmatch(name):
        raise ValidationFailed(
            f"A model name cannot be made only of digits ({name!r} would read as a model id "
            "in /predict/{model_id}).",
            fields={"name": ["must contain a character other than a digit"]},
        )
    tags = tags_merge({}, tags_changes_validate(tags or {}, allow_delete=False))
    owner, _ = _actor_fields(actor)
    try:
        with transaction.atomic():
            model = RegisteredModel.objects.create(
                name=name, task=task, description=description, tags=tags, owner=owner
            )
            audit_record(actor=actor, verb="create", obj=model, changes=created_changes(model))
            return model
    except IntegrityError:
        raise ConflictError(
            f"A model named {name!r} already exists.", fields={"name": ["already exists"]}
        ) from None


def registered_model_update(
    *,
    model: RegisteredModel,
    actor: Actor,
    name: str | None = None,
    description: str | None = None,
    task: str | None = None,
    tags: dict[str, str] | list[str] | None = None,
    tags_changes: dict[str, str | None] | None = None,
) -> RegisteredModel:
    """Changes a model's name or descriptive fields (never its versions' stages); a call that
    changes nothing writes nothing. `tags` replaces every tag; `tags_changes` merges into the
    current ones under the model's lock (a null value deletes the key), so concurrent PATCHes
    of different keys both land. NotFoundError (404) when the model was deleted meanwhile;
    ValidationFailed (400) for an all-digit name or a bad tag and ConflictError (409) for a
    taken name, as at creation."""
    if name is not None and MODEL_ID_PATTERN.fullmatch(name):
        raise ValidationFailed(
            f"A model name cannot be made only of digits ({name!r} would read as a model id "
            "in /predict/{model_id}).",
            fields={"name": ["must contain a character other than a digit"]},
        )
    if tags is not None:
        tags = tags_merge({}, tags_changes_validate(tags, allow_delete=False))
    if tags_changes is not None:
        tags_changes = tags_changes_validate(tags_changes)
    wanted = {"name": name, "description": description, "task": task, "tags": tags}
    try:
        with transaction.atomic():
            locked = registered_model_lock(model_id=model.pk)
            if tags_changes:
                wanted["tags"] = tags_merge(locked.tags, tags_changes)
            changes = fields_update(locked, wanted, actor=actor)
            if "name" in changes:
                # The serving path cached the model under its old name (routing, the seeds'
                # alias) as well as under the new one.
                for cached_name in changes["name"]:
                    transaction.on_commit(
                        partial(
                            registered_model_caches_invalidate,
                            name=cached_name,
                            model_id=locked.pk,
                        )
                    )
            elif "task" in changes:
                # The routing entry carries the task.
                transaction.on_commit(partial(routing_invalidate, locked.name))
    except IntegrityError:
        raise ConflictError(
            f"A model named {name!r} already exists.", fields={"name": ["already exists"]}
        ) from None
    for field, value in wanted.items():
        if value is not None:
            setattr(model, field, getattr(locked, field))
    model.updated_at = locked.updated_at
    return model


def registered_model_delete(*, model: RegisteredModel, actor: Actor) -> None:
    """Deletes a model with its versions and their history (stage transitions, prediction log,
    drift reports, traffic split); the admin and the API both call this.

    ConflictError (409) while a version serves production traffic; NotFoundError (404) when a
    concurrent delete got there first. On commit, everything the serving path cached about the
    model goes, so the next request answers 404. Artifact files are left for the retention
    sweep, which removes only unreferenced ones.
    """
    with transaction.atomic():
        locked = registered_model_lock(model_id=model.pk)
        production = locked.versions.filter(stage=Stage.PRODUCTION).first()
        if production is not None:
            raise ConflictError(
                f"Model {locked.name!r} has a production version (v{production.version}); "
                "archive it (or roll back) before deleting the model."
            )
        name, model_id = locked.name, locked.pk
        audit_record(actor=actor, verb="delete", obj=locked, changes=deleted_changes(locked))
        webhooks_of_model_delete(model=locked, actor=actor)
        locked.delete()
        transaction.on_commit(
            partial(registered_model_caches_invalidate, name=name, model_id=model_id)
        )
    logger.info("model deleted", extra={"model": name, "actor": _actor_fields(actor)[1]})


def _artifact_name(sha256: str, artifact_format: str) -> str:
    extension = "skops" if artifact_format == ArtifactFormat.SKOPS else "joblib"
    return f"sha256/{sha256[:2]}/{sha256}.{extension}"


def _inspect(
    *, data: bytes, artifact_format: str, actor: Actor
) -> tuple[Any | None, dict[str, Any]]:
    """Checks the bytes for their format; returns the estimator when it may be opened safely."""
    if artifact_format == ArtifactFormat.SKOPS:
        return artifacts.load_skops(data), {}
    if artifact_format == ArtifactFormat.JOBLIB:
        if not _has_perm(actor, "mlregistry.upload_pickle"):
            raise ForbiddenError(
                "Uploading joblib/pickle artifacts needs the 'mlregistry.upload_pickle' "
                "permission: loading a pickle runs code. Use skops instead."
            )
        imported = artifacts.scan_pickle(data)
        # Opened through the restricted unpickler, which imports only what the scan allowed:
        # the upload is then checked as the estimator it will serve, like a skops file.
        estimator = artifacts.load_pickle(data)
        return estimator, {"pickle_scan": {"imports": imported, "scanner": "picklescan"}}
    raise ValidationFailed(
        f"Unknown artifact format {artifact_format!r}.",
        fields={"artifact_format": [f"must be one of {', '.join(ArtifactFormat.values)}"]},
    )


def artifact_estimator_open(*, data: bytes, artifact_format: str, actor: Actor) -> Any:
    """The estimator in artifact bytes, opened under exactly the upload rules (skops: trusted
    types; a pickle: the upload_pickle permission, the static scan and the restricted
    unpickler). Stores nothing; raises as an upload would (ArtifactError 400, ForbiddenError
    403). For a caller that must know the estimator before a model exists (its task)."""
    estimator, _ = _inspect(data=data, artifact_format=artifact_format, actor=actor)
    return estimator


def _check_estimator(model: RegisteredModel, estimator: Any) -> None:
    if not callable(getattr(estimator, "predict", None)):
        raise artifacts.ArtifactError("The artifact is not a fitted estimator with predict().")
    if model.task == Task.CLASSIFICATION and is_regressor(estimator):
        raise artifacts.ArtifactError(
            f"Model {model.name!r} is a classification model but the artifact is a regressor."
        )
    if model.task == Task.REGRESSION and is_classifier(estimator):
        raise artifacts.ArtifactError(
            f"Model {model.name!r} is a regression model but the artifact is a classifier."
        )


def _json_native(values: Any) -> list[Any]:
    return values.tolist() if hasattr(values, "tolist") else list(values)


@dataclass
class VersionInspection:
    """What an artifact would register as: checked, nothing stored."""

    sha256: str
    size: int
    artifact_format: str
    input_schema: list[dict[str, Any]]
    schema_inferred: bool
    classes: list[Any] | None
    params: dict[str, Any]
    estimator_type: str | None
    scan_metadata: dict[str, Any]
    reference_sample: list[dict[str, Any]] | None
    reference_stats: dict[str, Any] | None
    warnings: list[str] = dataclass_field(default_factory=list)
    # The uploaded file's SHA-256: an MLflow model archive's differs from the stored model's.
    received_sha256: str = ""
    mlflow: dict[str, Any] | None = None


def _inspection_warnings(inspection: VersionInspection, model: RegisteredModel) -> list[str]:
    """Things worth a second look that do not stop the upload."""
    notes = []
    names = [f["name"] for f in inspection.input_schema]
    if inspection.schema_inferred and names and all(n == f"x{i}" for i, n in enumerate(names)):
        notes.append(
            "The model was fitted without feature names: clients must send x0, x1, … "
            "unless you supply input_schema."
        )
    if inspection.reference_sample is None:
        notes.append("No reference sample: drift checks cannot run for this version.")
    if inspection.artifact_format == ArtifactFormat.JOBLIB:
        notes.append(
            "A pickle opens only through an exact allow-list of globals; skops is the safer format."
        )
    current = model.versions.filter(stage=Stage.PRODUCTION).only("input_schema").first()
    if current is not None and [f["name"] for f in current.input_schema] != names:
        notes.append(
            "The input features differ from the production version's: clients must change "
            "their requests when this version is promoted."
        )
    return notes


def model_version_inspect(
    *,
    model: RegisteredModel,
    data: bytes,
    actor: Actor,
    artifact_format: str = ArtifactFormat.SKOPS,
    input_schema: Any = None,
    reference_sample: Any = None,
) -> VersionInspection:
    """Runs every upload check on the bytes and returns what would be registered; stores
    nothing. model_version_create calls it, so a preview and a save can never disagree."""
    estimator, scan_metadata = _inspect(data=data, artifact_format=artifact_format, actor=actor)
    if estimator is not None:
        _check_estimator(model, estimator)
    if input_schema is not None:
        features = schema.normalize_schema(input_schema)
        if estimator is not None:
            schema.check_schema_matches(features, estimator)
    else:
        features = schema.infer_schema(estimator) if estimator is not None else None
        if features is None:
            raise schema.SchemaError(
                "No input_schema given and none can be inferred from this artifact: "
                "supply input_schema.",
                fields={"input_schema": ["required for this artifact"]},
            )
    sample, stats = reference.prepare_reference_sample(reference_sample, features)
    classes = None
    if estimator is not None and getattr(estimator, "classes_", None) is not None:
        classes = _json_native(estimator.classes_)
    inspection = VersionInspection(
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        artifact_format=artifact_format,
        input_schema=features,
        schema_inferred=input_schema is None,
        classes=classes,
        params=_safe_params(estimator) if estimator is not None else {},
        estimator_type=type(estimator).__name__ if estimator is not None else None,
        scan_metadata=scan_metadata,
        reference_sample=sample,
        reference_stats=stats,
    )
    inspection.warnings = _inspection_warnings(inspection, model)
    return inspection


@dataclass
class _Upload:
    """What an upload registers: the artifact's bytes and the fields that go with them, from
    the caller or, for an MLflow model archive, from the model where the caller gave none."""

    spooled: artifacts.SpooledArtifact
    artifact_format: str
    input_schema: Any
    reference_sample: Any
    metadata: dict[str, Any] | None
    library_versions: dict[str, str] | None
    mlflow: mlflow_import.MlflowModel | None = None


def _upload_unwrap(
    spooled: artifacts.SpooledArtifact,
    *,
    artifact_format: str,
    input_schema: Any,
    reference_sample: Any,
    metadata: dict[str, Any] | None,
    library_versions: dict[str, str] | None = None,
) -> _Upload:
    """An MLflow model archive (.zip or .tar.gz holding MLmodel) becomes its inner model file
    in the format MLmodel names, which then passes the checks of that format (the pickle
    policy for a pickle); any other upload is kept as it came."""
    inner, model = mlflow_import.upload_unwrap(spooled)
    if model is None:
        return _Upload(
            spooled, artifact_format, input_schema, reference_sample, metadata, library_versions
        )
    return _Upload(
        inner,
        model.artifact_format,
        model.input_schema if input_schema is None else input_schema,
        model.reference_sample if reference_sample is None else reference_sample,
        {**model.metadata, **(metadata or {})},
        library_versions or model.library_versions,
        model,
    )


PENDING_UPLOAD_PREFIX = "pending"


@dataclass
class PendingUpload:
    """An inspected upload waiting for the user's confirmation, kept in the artifact storage
    (shared by every web replica) under a random token, never under its final name."""

    token: str
    name: str
    inspection: VersionInspection


def model_version_preview(
    *,
    model: RegisteredModel,
    artifact: IO[bytes],
    actor: Actor,
    artifact_format: str = ArtifactFormat.SKOPS,
    input_schema: Any = None,
    reference_sample: Any = None,
) -> PendingUpload:
    """Checks an upload like model_version_create and parks the bytes for a confirmation;
    registers nothing. Confirm with
    model_version_create(expected_sha256=inspection.received_sha256) on the parked file (for an
    MLflow model archive, the archive: inspection.sha256 is its model file's)."""
    spooled = artifacts.spool_upload(artifact)
    try:
        upload = _upload_unwrap(
            spooled,
            artifact_format=artifact_format,
            input_schema=input_schema,
            reference_sample=reference_sample,
            metadata=None,
        )
        inspection = model_version_inspect(
            model=model,
            data=upload.spooled.read(),
            actor=actor,
            artifact_format=upload.artifact_format,
            input_schema=upload.input_schema,
            reference_sample=upload.reference_sample,
        )
        inspection.received_sha256 = spooled.sha256
        if upload.mlflow is not None:
            inspection.mlflow = upload.mlflow.metadata["mlflow"]
            inspection.warnings = upload.mlflow.notes + inspection.warnings
        spooled.file.seek(0)
        token = secrets.token_urlsafe(16)
        name = f"{PENDING_UPLOAD_PREFIX}/{token}/{spooled.sha256}.upload"
        stored = get_artifact_storage().save(name, File(spooled.file, name=name))
    finally:
        spooled.file.close()
    return PendingUpload(token=token, name=stored, inspection=inspection)


def pending_upload_discard(*, name: str) -> None:
    """Deletes a parked upload (confirmed, cancelled or expired); a missing file is fine."""
    if not name.startswith(PENDING_UPLOAD_PREFIX + "/"):
        raise ValidationFailed("Not a pending upload.")
    storage = get_artifact_storage()
    if storage.exists(name):
        storage.delete(name)
    # A local disk keeps the token's empty folder; object stores have no folders.
    with contextlib.suppress(NotImplementedError, OSError):
        os.rmdir(os.path.dirname(storage.path(name)))


def pending_uploads_prune(
    *,
    older_than: timedelta = timedelta(days=1),
    now: datetime | None = None,
    dry_run: bool = False,
) -> int:
    """Deletes parked uploads nobody confirmed for `older_than` as of `now` (by the storage's
    modification time); returns how many went (with `dry_run`, how many would, deleting
    nothing)."""
    storage = get_artifact_storage()
    cutoff = (now or timezone.now()) - older_than
    removed = 0
    try:
        tokens, _ = storage.listdir(PENDING_UPLOAD_PREFIX)
    except (FileNotFoundError, NotImplementedError):
        return 0
    for token in tokens:
        folder = f"{PENDING_UPLOAD_PREFIX}/{token}"
        for filename in storage.listdir(folder)[1]:
            name = f"{folder}/{filename}"
            if storage.get_modified_time(name) < cutoff:
                if not dry_run:
                    storage.delete(name)
                removed += 1
    return removed


def model_version_create(
    *,
    model: RegisteredModel,
    artifact: IO[bytes],
    actor: Actor,
    artifact_format: str = ArtifactFormat.SKOPS,
    input_schema: Any = None,
    metrics: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    reference_sample: Any = None,
    source: str = VersionSource.UPLOAD,
    expected_sha256: str | None = None,
    version_number: int | None = None,
    library_versions: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    run_id: str | None = None,
    git_commit: str | None = None,
    source_url: str | None = None,
    training_dataset: dict[str, str] | None = None,
) -> ModelVersion:
    """Registers a new version: streams and hashes the artifact, checks it, stores it under its
    SHA-256 and records the next version number. Nothing is stored when a check fails.

    An MLflow model archive (.zip / .tar.gz with MLmodel, mlregistry/mlflow_import.py) registers
    its inner model file; its signature, input example, library versions and metadata fill
    what the caller left out. expected_sha256, when given, must match the received bytes (a
    previewed upload, or a client that sends the checksum it computed). version_number asks for
    that number (an import keeping another registry's numbers): ConflictError (409) unless it
    is above every number the model ever gave. library_versions: what the artifact was saved
    with, when known (default: this server's). `tags` ({key: value}, mlregistry.tags) and the
    lineage (`run_id`, `git_commit`, `source_url`, `training_dataset` {"uri", "sha256"},
    mlregistry.lineage) are checked before anything is read: ValidationFailed (400)."""
    version_tags = tags_merge({}, tags_changes_validate(tags or {}, allow_delete=False))
    lineage = lineage_validate(
        run_id=run_id,
        git_commit=git_commit,
        source_url=source_url,
        training_dataset=training_dataset,
    )
    received = artifacts.spool_upload(artifact)
    spooled = received
    try:
        if expected_sha256 is not None and received.sha256 != expected_sha256.lower():
            raise artifacts.ArtifactError(
                f"Artifact checksum mismatch: expected sha256 {expected_sha256[:12]}…, "
                f"received {received.sha256[:12]}…. Nothing was registered; upload the file again."
            )
        upload = _upload_unwrap(
            received,
            artifact_format=artifact_format,
            input_schema=input_schema,
            reference_sample=reference_sample,
            metadata=metadata,
            library_versions=library_versions,
        )
        spooled, artifact_format = upload.spooled, upload.artifact_format
        metadata, library_versions = upload.metadata, upload.library_versions
        inspection = model_version_inspect(
            model=model,
            data=spooled.read(),
            actor=actor,
            artifact_format=artifact_format,
            input_schema=upload.input_schema,
            reference_sample=upload.reference_sample,
        )
        storage = get_artifact_storage()
        name = _artifact_name(spooled.sha256, artifact_format)
        spooled.file.seek(0)
        stored_name = storage.save(name, File(spooled.file, name=name))
    finally:
        spooled.file.close()
        received.file.close()

    user, actor_name = _actor_fields(actor)
    try:
        with transaction.atomic():
            locked = registered_model_lock(model_id=model.pk)
            # The counter, never the highest remaining number: a deleted newest version's
            # number is not given again. Rows from before the counter (a restore of an old
            # backup) are covered by the max.
            highest = locked.versions.aggregate(n=Max("version"))["n"] or 0
            number = max(locked.last_version_number, highest) + 1
            if version_number is not None:
                if version_number < number:
                    raise ConflictError(
                        f"{locked.name} cannot take version number {version_number}: numbers "
                        f"up to {number - 1} are in use or were used (never reused).",
                        fields={"version": [f"must be {number} or more"]},
                    )
                number = version_number
            locked.last_version_number = number
            locked.save(update_fields=["last_version_number"])
            version = ModelVersion.objects.create(
                model=locked,
                version=number,
                stage=Stage.NONE,
                artifact=stored_name,
                artifact_format=artifact_format,
                artifact_sha256=spooled.sha256,
                artifact_size=spooled.size,
                library_versions=library_versions or artifacts.library_versions(),
                input_schema=inspection.input_schema,
                classes=inspection.classes,
                metrics=metrics or {},
                params=params or inspection.params,
                metadata={**(metadata or {}), **inspection.scan_metadata},
                reference_sample=inspection.reference_sample,
                reference_stats=inspection.reference_stats,
                source=source,
                tags=version_tags,
                **lineage.as_fields(),
                created_by=user,
            )
            audit_record(
                actor=actor,
                verb="create",
                obj=version,
                changes=created_changes(version, _VERSION_AUDITED_FIELDS),
            )
            event_publish(
                "model_version.created", model=locked.name, data=version_event_data(version)
            )
            # The routing entry lists the versions a client may pin: it must learn of this one.
            transaction.on_commit(partial(routing_invalidate, locked.name))
    except BaseException:
        _delete_if_unreferenced(stored_name)
        raise
    logger.info(
        "model version registered",
        extra={
            "model": model.name,
            "version": version.version,
            "actor": actor_name,
            "sha256": spooled.sha256,
            "format": artifact_format,
        },
    )
    return version


# scikit-learn marks a parameter nobody set, whose default is changing or going away, with these
# strings ("penalty": "deprecated"); they say nothing about the fitted model.
SKLEARN_PARAM_PLACEHOLDERS = frozenset({"deprecated", "warn"})


def params_without_placeholders(params: dict[str, Any]) -> dict[str, Any]:
    """`params` without scikit-learn's placeholder values (SKLEARN_PARAM_PLACEHOLDERS)."""
    return {
        key: value
        for key, value in params.items()
        if not (isinstance(value, str) and value in SKLEARN_PARAM_PLACEHOLDERS)
    }


def _safe_params(estimator: Any) -> dict[str, Any]:
    """get_params() reduced to JSON-friendly scalars (nested estimators become their class name,
    a pipeline's steps their names), without scikit-learn's placeholder values."""
    out: dict[str, Any] = {}
    try:
        raw = params_without_placeholders(estimator.get_params(deep=True))
    except Exception:
        return out
    for key, value in raw.items():
        if key == "steps" and isinstance(value, list | tuple):
            out[key] = [step[0] for step in value if isinstance(step, tuple) and step]
        elif value is None or isinstance(value, bool | int | float | str):
            out[key] = value
        elif isinstance(value, list | tuple) and all(
            isinstance(v, int | float | str) for v in value
        ):
            out[key] = list(value)
        else:
            out[key] = type(value).__name__
    return out


def _delete_if_unreferenced(stored_name: str) -> None:
    if not ModelVersion.objects.filter(artifact=stored_name).exists():
        storage = get_artifact_storage()
        if storage.exists(stored_name):
            storage.delete(stored_name)


@dataclass(frozen=True)
class AliasRemoval:
    """An alias that went with its version (archived or deleted)."""

    alias: str
    version: int


def _alias_deleted_publish(
    *, model_name: str, alias: str, version: int, actor: Actor, comment: str
) -> None:
    """Announces a removed alias (inside the removing transaction: sent only if it commits)."""
    event_publish(
        "model_alias.deleted",
        model=model_name,
        data={
            "model": model_name,
            "alias": alias,
            "version": version,
            "actor": _actor_fields(actor)[1],
            "comment": comment,
        },
    )


def _aliases_remove(*, version: ModelVersion, actor: Actor, reason: str) -> list[AliasRemoval]:
    """Deletes the aliases pointing to `version`, one audit row each; call inside the
    transaction that archives or deletes it, under its model's lock (the caller's on-commit
    routing invalidation covers the serving path)."""
    removed = []
    for row in ModelAlias.objects.filter(version=version).select_related("model"):
        audit_record(
            actor=actor,
            verb="alias_delete",
            obj=row,
            changes={
                "alias": [row.alias, None],
                "version": [version.version, None],
                "comment": [None, reason],
            },
        )
        removed.append(AliasRemoval(alias=row.alias, version=version.version))
        _alias_deleted_publish(
            model_name=row.model.name,
            alias=row.alias,
            version=version.version,
            actor=actor,
            comment=reason,
        )
        row.delete()
    return removed


def _write_transition(
    *,
    version: ModelVersion,
    to_stage: str,
    actor: Actor,
    comment: str,
    aliases_removed: list[AliasRemoval] | None = None,
) -> StageTransition:
    user, name = _actor_fields(actor)
    from_stage = version.stage
    version.stage = to_stage
    version.save(update_fields=["stage", "updated_at"])
    if to_stage == Stage.ARCHIVED:
        # An archived version must not keep receiving split traffic: the split ends in the
        # same transaction (the caller's on_commit invalidation covers the routing entry).
        version_leaving_service.send(sender=ModelVersion, version=version)
        # Nor answer through an alias: the pointers go in the same transaction.
        removed = _aliases_remove(
            version=version, actor=actor, reason=f"v{version.version} archived"
        )
        if aliases_removed is not None:
            aliases_removed.extend(removed)
    audit_record(
        actor=actor,
        verb="transition",
        obj=version,
        changes={
            "stage": [from_stage, to_stage],
            **({"comment": [None, comment]} if comment else {}),
        },
    )
    transition = StageTransition.objects.create(
        version=version,
        from_stage=from_stage,
        to_stage=to_stage,
        actor_user=user,
        actor_name=name,
        comment=comment,
    )
    event_publish(
        "model_version.stage_changed",
        model=version.model.name,
        data=version_event_data(version, transition),
    )
    return transition


class _Unchecked:
    """Marks an optional expectation the caller did not state."""


UNCHECKED = _Unchecked()


def model_version_transition(
    *,
    version: ModelVersion,
    stage: str,
    actor: Actor,
    comment: str = "",
    archive_previous: bool = True,
    expected_production_pk: int | _Unchecked | None = UNCHECKED,
) -> ModelVersion:
    """Moves a version to a stage. Promoting to production archives (or, with
    archive_previous=False, demotes to staging) the current production version, in the same
    transaction; each change leaves a StageTransition.

    expected_production_pk: the production version (pk, or None for none) the caller showed
    the user; if another change got there first, the move is refused rather than archiving a
    version nobody confirmed.

    Archiving a version (this one, or the production version a promotion replaces) removes
    its aliases in the same transaction; the returned version's `aliases_removed` lists them
    (AliasRemoval), so the caller can say so."""
    if stage not in Stage.values:
        raise ValidationFailed(
            f"Unknown stage {stage!r}.",
            fields={"stage": [f"must be one of {', '.join(Stage.values)}"]},
        )
    aliases_removed: list[AliasRemoval] = []
    try:
        with transaction.atomic():
            # Lock the parent row: locking version rows could not serialise the first promotion.
            model = registered_model_lock(model_id=version.model_id)
            current = _version_reread(version)
            if not isinstance(expected_production_pk, _Unchecked):
                live = model.versions.filter(stage=Stage.PRODUCTION).first()
                if (live.pk if live else None) != expected_production_pk:
                    raise TransitionError(
                        "Race lost: the production version of "
                        f"{model.name} changed to {f'v{live.version}' if live else 'none'} "
                        "since this page was opened. Nothing was changed; review and try again."
                    )
            if current.stage == stage:
                raise TransitionError(
                    f"{model.name} v{current.version} is already in stage {stage!r}.",
                    fields={"stage": [f"already {stage}"]},
                )
            if stage == Stage.PRODUCTION:
                previous = model.versions.filter(stage=Stage.PRODUCTION).first()
                if previous is not None:
                    _write_transition(
                        version=previous,
                        to_stage=Stage.ARCHIVED if archive_previous else Stage.STAGING,
                        actor=actor,
                        comment=f"replaced by v{current.version}"
                        + (f": {comment}" if comment else ""),
                        aliases_removed=aliases_removed,
                    )
            _write_transition(
                version=current,
                to_stage=stage,
                actor=actor,
                comment=comment,
                aliases_removed=aliases_removed,
            )
            transaction.on_commit(partial(routing_invalidate, model.name))
    except IntegrityError:
        # The partial unique index is the backstop if a writer skipped the lock.
        raise TransitionError(
            "Another stage change of this model won the race; reload and try again."
        ) from None
    version.refresh_from_db()
    version.aliases_removed = aliases_removed
    logger.info(
        "stage changed",
        extra={
            "model": version.model.name,
            "version": version.version,
            "stage": stage,
            "actor": _actor_fields(actor)[1],
        },
    )
    return version


def model_version_rollback(
    *,
    model: RegisteredModel,
    actor: Actor,
    comment: str = "",
    expected_production_pk: int | _Unchecked | None = UNCHECKED,
) -> ModelVersion:
    """Puts the previous production version back into production (the current one is archived)."""
    target = previous_production_version_get(model=model)
    if target is None:
        raise TransitionError(
            f"Model {model.name!r} has no previous production version to roll back to."
        )
    return model_version_transition(
        version=target,
        stage=Stage.PRODUCTION,
        actor=actor,
        comment=comment or "rollback",
        expected_production_pk=expected_production_pk,
    )


def model_version_update(
    *,
    version: ModelVersion,
    actor: Actor,
    metrics: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
    tags_changes: dict[str, str | None] | None = None,
) -> ModelVersion:
    """Changes a version's descriptive fields (metrics, metadata, tags); its stage, artifact,
    lineage and number change only through their own services. `tags` replaces every tag;
    `tags_changes` merges into the current ones under the model's lock (null deletes a key).
    A call that changes nothing writes nothing. ValidationFailed (400) for a bad tag;
    NotFoundError (404) when the version was deleted meanwhile."""
    if tags is not None:
        tags = tags_merge({}, tags_changes_validate(tags, allow_delete=False))
    if tags_changes is not None:
        tags_changes = tags_changes_validate(tags_changes)
    wanted = {"metrics": metrics, "metadata": metadata, "tags": tags}
    with transaction.atomic():
        registered_model_lock(model_id=version.model_id)
        current = _version_reread(version)
        if tags_changes:
            wanted["tags"] = tags_merge(current.tags, tags_changes)
        fields_update(current, wanted, actor=actor)
    for field, value in wanted.items():
        if value is not None:
            setattr(version, field, getattr(current, field))
    version.updated_at = current.updated_at
    return version


def model_version_delete(*, version: ModelVersion, actor: Actor) -> list[AliasRemoval]:
    """Deletes a version with its history (stage transitions, prediction log, drift reports);
    the admin and the API both call this. Its number is never given again. Returns the
    aliases that pointed to it, removed (and audited) in the same transaction.

    ConflictError (409) while it is the production version; NotFoundError (404) when a
    concurrent delete got there first. A traffic split naming it ends (as when it is archived).
    On commit the model's routing entry goes, so the next request for it answers 404, exactly
    as after a stage change. The artifact file is left for the retention sweep."""
    with transaction.atomic():
        model = registered_model_lock(model_id=version.model_id)
        current = _version_reread(version)
        if current.stage == Stage.PRODUCTION:
            raise ConflictError(
                f"{model.name} v{current.version} is the production version; promote another "
                "version (or archive this one) before deleting it.",
                fields={"version": ["is in production"]},
            )
        number = current.version
        version_leaving_service.send(sender=ModelVersion, version=current)
        removed = _aliases_remove(version=current, actor=actor, reason=f"v{number} deleted")
        audit_record(
            actor=actor,
            verb="delete",
            obj=current,
            changes=deleted_changes(current, _VERSION_AUDITED_FIELDS),
        )
        current.delete()
        transaction.on_commit(partial(routing_invalidate, model.name))
    logger.info(
        "model version deleted",
        extra={"model": model.name, "version": number, "actor": _actor_fields(actor)[1]},
    )
    return removed


# --- Aliases ----------------------------------------------------------------------------


def model_alias_set(
    *,
    model: RegisteredModel,
    alias: str,
    version: ModelVersion | int,
    actor: Actor,
    comment: str = "",
) -> ModelAlias:
    """Points `alias` of `model` at `version` (a ModelVersion of that model, or its number),
    creating the alias or moving it; one audit row ("alias_set", {"version": [old, new]}) per
    move that happened, none when it already pointed there.

    Errors: ValidationFailed (400) for a malformed or reserved name (mlregistry.aliases) or a
    version number the model does not have; ConflictError (409) when the version is archived
    (archiving removes aliases, so one never points at an archived version) or another writer
    won a race the lock did not cover; NotFoundError (404) when the model or version was
    deleted meanwhile. On commit the model's routing entry is dropped, so no prediction
    through the alias is answered by the version it pointed to before."""
    alias_validate(alias)
    number = version.version if isinstance(version, ModelVersion) else version
    if isinstance(version, ModelVersion) and version.model_id != model.pk:
        raise ValidationFailed(
            f"{version} is not a version of {model.name}.",
            fields={"version": [f"not a version of {model.name}"]},
        )
    if isinstance(number, bool) or not isinstance(number, int):
        raise ValidationFailed("version must be an integer.", fields={"version": ["integer"]})
    try:
        with transaction.atomic():
            # Lock, then decide: concurrent moves of one alias serialise on the model row.
            locked = registered_model_lock(model_id=model.pk)
            target = None
            if 1 <= number <= VERSION_NUMBER_MAX:
                target = locked.versions.filter(version=number).first()
            if target is None:
                raise ValidationFailed(
                    f"{locked.name} has no version {number}.",
                    fields={"version": [f"{locked.name} has no version {number}"]},
                )
            if target.stage == Stage.ARCHIVED:
                raise ConflictError(
                    f"{locked.name} v{number} is archived: an alias cannot point to it. "
                    "Move it out of the archive first.",
                    fields={"version": ["is archived"]},
                )
            user, actor_name = _actor_fields(actor)
            row = (
                ModelAlias.objects.filter(model=locked, alias=alias)
                .select_related("version")
                .first()
            )
            if row is not None and row.version_id == target.pk:
                return row
            before = row.version.version if row is not None else None
            if row is None:
                row = ModelAlias(model=locked, alias=alias)
            row.version = target
            row.updated_by = user
            row.updated_by_name = actor_name
            row.save()
            audit_record(
                actor=actor,
                verb="alias_set",
                obj=row,
                changes={
                    "alias": [alias if before is not None else None, alias],
                    "version": [before, number],
                    **({"comment": [None, comment]} if comment else {}),
                },
            )
            event_publish(
                "model_alias.set",
                model=locked.name,
                data={
                    "model": locked.name,
                    "alias": alias,
                    "version": number,
                    "previous_version": before,
                    "actor": actor_name,
                    "comment": comment,
                },
            )
            transaction.on_commit(partial(routing_invalidate, locked.name))
    except IntegrityError:
        # The unique constraint is the backstop if a writer skipped the lock.
        raise ConflictError(
            f"Another change of alias {alias!r} won the race; reload and try again."
        ) from None
    logger.info(
        "alias set",
        extra={"model": model.name, "alias": alias, "version": number, "actor": actor_name},
    )
    return row


def model_alias_delete(
    *, model: RegisteredModel, alias: str, actor: Actor, comment: str = ""
) -> int:
    """Removes `alias` of `model`; returns the version number it pointed to. NotFoundError
    (404) when the model has no such alias (or it went meanwhile); ValidationFailed (400) for
    a reserved name. Audited ("alias_delete"); on commit the routing entry is dropped."""
    alias_validate(alias)
    with transaction.atomic():
        locked = registered_model_lock(model_id=model.pk)
        row = ModelAlias.objects.filter(model=locked, alias=alias).select_related("version").first()
        if row is None:
            raise NotFoundError(f"{locked.name} has no alias {alias!r}.")
        number = row.version.version
        audit_record(
            actor=actor,
            verb="alias_delete",
            obj=row,
            changes={
                "alias": [alias, None],
                "version": [number, None],
                **({"comment": [None, comment]} if comment else {}),
            },
        )
        _alias_deleted_publish(
            model_name=locked.name, alias=alias, version=number, actor=actor, comment=comment
        )
        row.delete()
        transaction.on_commit(partial(routing_invalidate, locked.name))
    logger.info(
        "alias deleted",
        extra={"model": model.name, "alias": alias, "actor": _actor_fields(actor)[1]},
    )
    return number
