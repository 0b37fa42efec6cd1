"""Every change to the registry goes through these functions: the admin, the API, the
management commands and the Celery jobs all call them, so each operation has one code path."""

from __future__ import annotations

import logging
from functools import partial
from typing import IO, Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.files import File
from django.db import IntegrityError, transaction
from django.db.models import Max
from sklearn.base import is_classifier, is_regressor

from config.errors import ConflictError, ForbiddenError, ValidationFailed
from mlregistry import artifacts, reference, schema
from mlregistry.models import (
    ArtifactFormat,
    ModelVersion,
    RegisteredModel,
    Stage,
    StageTransition,
    Task,
    VersionSource,
)
from mlregistry.selectors import previous_production_version_get, routing_invalidate
from mlregistry.storage import get_artifact_storage

logger = logging.getLogger(__name__)

# A user, or the name of the job acting ("job:retraining", "make run", ...).
Actor = AbstractBaseUser | str


class TransitionError(ConflictError):
    error_type = "transition_error"


def _actor_fields(actor: Actor) -> tuple[AbstractBaseUser | None, str]:
    if isinstance(actor, str):
        return None, actor
    return actor, actor.get_username()


def _has_perm(actor: Actor, perm: str) -> bool:
    return not isinstance(actor, str) and actor.has_perm(perm)


def registered_model_create(
    *,
    name: str,
    actor: Actor,
    task: str = Task.CLASSIFICATION,
    description: str = "",
    tags: list[str] | None = None,
) -> RegisteredModel:
    """Registers a new model name."""
    owner, _ = _actor_fields(actor)
    try:
        with transaction.atomic():
            return RegisteredModel.objects.create(
                name=name, task=task, description=description, tags=tags or [], owner=owner
            )
    except IntegrityError:
        raise ConflictError(
            f"A model named {name!r} already exists.", fields={"name": ["already exists"]}
        ) from None


def registered_model_update(
    *,
    model: RegisteredModel,
    actor: Actor,
    description: str | None = None,
    task: str | None = None,
    tags: list[str] | None = None,
) -> RegisteredModel:
    """Changes a model's descriptive fields (never its versions' stages)."""
    changed = []
    for field, value in (("description", description), ("task", task), ("tags", tags)):
        if value is not None:
            setattr(model, field, value)
            changed.append(field)
    if changed:
        model.save(update_fields=[*changed, "updated_at"])
    return model


def registered_model_delete(*, model: RegisteredModel, actor: Actor) -> None:
    """Deletes a model and its versions; refused while a version serves production traffic.

    Artifact files are left for the retention sweep, which removes only unreferenced ones.
    """
    with transaction.atomic():
        locked = RegisteredModel.objects.select_for_update().get(pk=model.pk)
        if locked.versions.filter(stage=Stage.PRODUCTION).exists():
            raise ConflictError(
                f"Model {model.name!r} has a production version; archive it before deleting."
            )
        name = locked.name
        locked.delete()
        transaction.on_commit(partial(routing_invalidate, name))
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
        imported = artifacts.scan_pickle(data)  # never unpickled here
        return None, {"pickle_scan": {"imports": imported, "scanner": "picklescan"}}
    raise ValidationFailed(
        f"Unknown artifact format {artifact_format!r}.",
        fields={"artifact_format": [f"must be one of {', '.join(ArtifactFormat.values)}"]},
    )


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
) -> ModelVersion:
    """Registers a new version: streams and hashes the artifact, checks it, stores it under its
    SHA-256 and records the next version number. Nothing is stored when a check fails."""
    spooled = artifacts.spool_upload(artifact)
    try:
        data = spooled.read()
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
                    "No input_schema given and none can be inferred from this artifact "
                    "(pickles are never opened at upload): supply input_schema.",
                    fields={"input_schema": ["required for this artifact"]},
                )
        sample, stats = reference.prepare_reference_sample(reference_sample, features)
        classes = None
        if estimator is not None and getattr(estimator, "classes_", None) is not None:
            classes = _json_native(estimator.classes_)
        if estimator is not None and not params:
            params = _safe_params(estimator)
        storage = get_artifact_storage()
        name = _artifact_name(spooled.sha256, artifact_format)
        stored_name = storage.save(name, File(spooled.file, name=name))
    finally:
        spooled.file.close()

    user, actor_name = _actor_fields(actor)
    try:
        with transaction.atomic():
            locked = RegisteredModel.objects.select_for_update().get(pk=model.pk)
            number = (locked.versions.aggregate(n=Max("version"))["n"] or 0) + 1
            version = ModelVersion.objects.create(
                model=locked,
                version=number,
                stage=Stage.NONE,
                artifact=stored_name,
                artifact_format=artifact_format,
                artifact_sha256=spooled.sha256,
                artifact_size=spooled.size,
                library_versions=artifacts.library_versions(),
                input_schema=features,
                classes=classes,
                metrics=metrics or {},
                params=params or {},
                metadata={**(metadata or {}), **scan_metadata},
                reference_sample=sample,
                reference_stats=stats,
                source=source,
                created_by=user,
            )
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


def _safe_params(estimator: Any) -> dict[str, Any]:
    """get_params() reduced to JSON-friendly scalars (nested estimators become their class name)."""
    out: dict[str, Any] = {}
    try:
        raw = estimator.get_params(deep=True)
    except Exception:
        return out
    for key, value in raw.items():
        if value is None or isinstance(value, bool | int | float | str):
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


def _write_transition(
    *, version: ModelVersion, to_stage: str, actor: Actor, comment: str
) -> StageTransition:
    user, name = _actor_fields(actor)
    from_stage = version.stage
    version.stage = to_stage
    version.save(update_fields=["stage", "updated_at"])
    if to_stage == Stage.ARCHIVED:
        # An archived version must not keep receiving split traffic: the split ends in the
        # same transaction (the caller's on_commit invalidation covers the routing entry).
        from predictions.services import traffic_split_end_for_archived

        traffic_split_end_for_archived(version=version)
    return StageTransition.objects.create(
        version=version,
        from_stage=from_stage,
        to_stage=to_stage,
        actor_user=user,
        actor_name=name,
        comment=comment,
    )


def model_version_transition(
    *,
    version: ModelVersion,
    stage: str,
    actor: Actor,
    comment: str = "",
    archive_previous: bool = True,
) -> ModelVersion:
    """Moves a version to a stage. Promoting to production archives (or, with
    archive_previous=False, demotes to staging) the current production version, in the same
    transaction; each change leaves a StageTransition."""
    if stage not in Stage.values:
        raise ValidationFailed(
            f"Unknown stage {stage!r}.",
            fields={"stage": [f"must be one of {', '.join(Stage.values)}"]},
        )
    try:
        with transaction.atomic():
            # Lock the parent row: locking version rows could not serialise the first promotion.
            model = RegisteredModel.objects.select_for_update().get(pk=version.model_id)
            current = ModelVersion.objects.get(pk=version.pk)
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
                    )
            _write_transition(version=current, to_stage=stage, actor=actor, comment=comment)
            transaction.on_commit(partial(routing_invalidate, model.name))
    except IntegrityError:
        # The partial unique index is the backstop if a writer skipped the lock.
        raise TransitionError(
            "Another stage change of this model won the race; reload and try again."
        ) from None
    version.refresh_from_db()
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
    *, model: RegisteredModel, actor: Actor, comment: str = ""
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
    )
