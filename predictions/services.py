"""Every write of the predictions app (traffic splits, feedback, the prediction log). Views,
the admin and the jobs call these; serving itself is predictions.serving."""

from __future__ import annotations

import logging
from datetime import datetime
from functools import partial
from typing import Any

from django.db import transaction
from django.utils import timezone

from config.errors import (
    ConflictError,
    NotFoundError,
    ValidationFailed,
)
from config.events import event_publish
from config.pruning import delete_in_batches
from mlregistry.access import model_access_check
from mlregistry.audit import audit_record, prune_auditor
from mlregistry.models import ModelVersion, RegisteredModel, Stage, Task
from mlregistry.selectors import VERSION_NUMBER_MAX, routing_invalidate
from mlregistry.services import Actor, registered_model_lock
from predictions.logbuffer import prediction_log_buffer
from predictions.models import PredictionLog, TrafficSplit
from predictions.selectors import traffic_split_list
from predictions.validation import actual_validate

logger = logging.getLogger(__name__)


# --- The prediction log (served by predictions.serving) -----------------------------------


def prediction_log_flush() -> int:
    """Writes this process's buffered prediction-log rows now (the drift job calls it)."""
    return prediction_log_buffer.flush()


def prediction_log_prune(
    *,
    older_than: datetime,
    batch_size: int = 5000,
    dry_run: bool = False,
    actor: Actor = "job:retention",
) -> int:
    """Deletes prediction-log rows created before `older_than`, in batches, each audited as
    `actor`; returns how many went (with `dry_run`, how many would, deleting nothing)."""
    expired = PredictionLog.objects.filter(created_at__lt=older_than)
    if dry_run:
        return expired.count()
    return delete_in_batches(expired, batch_size=batch_size, audit=prune_auditor(actor))


# --- Feedback -----------------------------------------------------------------------------


def _feedback_privileged(actor: Actor) -> bool:
    # A named job is operators' code (e.g. an import of outcomes), not an API client.
    return isinstance(actor, str) or actor.has_perm("predictions.change_predictionlog")


def prediction_feedback_record(
    *, request_id: str, actual: Any, actor: Actor, row_index: int | None = None
) -> int:
    """Stores the true outcome of a served prediction; returns how many log rows it updated.

    `actual` is checked against the version (predictions.validation.actual_validate): one of
    its classes (1.0 is class 1, true is not), or a finite number for a regressor; else
    ValidationFailed (400) listing the allowed classes.

    Only the client the rows were served to, or a user who may change the prediction log, may
    do so; anyone else gets the same 404 as for an unknown request id and nothing changes."""
    rows = PredictionLog.objects.filter(request_id=request_id)
    if row_index is not None:
        rows = rows.filter(row_index=row_index)
    privileged = _feedback_privileged(actor)
    if not privileged:
        # Rows served before served_to was recorded (NULL) match nobody here: privileged only.
        # A request id is only unique per served client, so this also keeps a client that
        # reused another's X-Request-ID off the other's rows.
        rows = rows.filter(served_to_id=actor.pk)
    if not rows.exists():
        prediction_log_flush()  # it may still wait in this process's buffer
    logged = list(rows.select_related("version__model")[:2])
    if not logged:
        raise NotFoundError(
            f"No logged prediction with request id {request_id!r}"
            + (f" and row {row_index}" if row_index is not None else "")
            + " (not logged because of sampling, not flushed yet, or pruned)."
        )
    if privileged and rows.order_by().values("served_to_id").distinct().count() > 1:
        # Several clients chose this X-Request-ID: one outcome cannot be theirs all.
        raise ConflictError(
            f"Request id {request_id!r} was served to several API clients; each of them can "
            "record the outcome of its own prediction (with its own token)."
        )
    version = logged[0].version
    # A client restricted to other models learns nothing about this one: the same 404.
    model_access_check(user=actor, model_name=version.model.name)
    actual = actual_validate(
        actual, classes=version.classes, regression=version.model.task == Task.REGRESSION
    )
    count = rows.update(actual=actual, feedback_at=timezone.now())
    if not count:
        # The rows went between the read and the write (their version was deleted).
        raise NotFoundError(f"No logged prediction with request id {request_id!r} any more.")
    logger.info(
        "prediction feedback",
        extra={"request_id": request_id, "rows": count, "actor": getattr(actor, "username", actor)},
    )
    return count


# --- Traffic splits -----------------------------------------------------------------------


def _split_weights(model: RegisteredModel) -> dict[str, int]:
    # Version numbers as strings: the audit diff is JSON, whose object keys are strings.
    rows = TrafficSplit.objects.filter(model=model).values_list("version__version", "weight")
    return {str(number): weight for number, weight in sorted(rows)}


def _split_changed_publish(model: RegisteredModel) -> None:
    """Announces `model`'s split as GET .../traffic shows it now (inside the change's
    transaction, so it is sent only if the change commits)."""
    from predictions.serializers import TrafficSplitOutput

    rows = TrafficSplitOutput(traffic_split_list(model=model), many=True).data
    event_publish(
        "traffic_split.changed", model=model.name, data={"model": model.name, "splits": rows}
    )


def traffic_split_set(
    *, model: RegisteredModel, splits: list[dict[str, int]], actor: Actor
) -> list[TrafficSplit]:
    """Replaces a model's traffic split: weights are whole percents summing to 100, versions
    belong to the model and are not archived."""
    errors: dict[str, list[str]] = {}
    if not splits:
        raise ValidationFailed("splits must not be empty.", fields={"splits": ["required"]})
    numbers = [s["version"] for s in splits]
    if len(set(numbers)) != len(numbers):
        errors["splits"] = ["a version may appear only once"]
    total = sum(s["weight"] for s in splits)
    if total != 100:
        errors.setdefault("splits", []).append(f"weights must sum to 100, not {total}")
    with transaction.atomic():
        locked = registered_model_lock(model_id=model.pk)
        # An out-of-range number matches no version (an IN lookup would not check its range).
        possible = [n for n in numbers if 1 <= n <= VERSION_NUMBER_MAX]
        versions = {v.version: v for v in locked.versions.filter(version__in=possible)}
        for index, number in enumerate(numbers):
            version = versions.get(number)
            if version is None:
                errors[f"splits[{index}].version"] = [f"{locked.name} has no version {number}"]
            elif version.stage == Stage.ARCHIVED:
                errors[f"splits[{index}].version"] = [f"v{number} is archived"]
        if errors:
            raise ValidationFailed("The traffic split is invalid.", fields=errors)
        before = _split_weights(locked)
        TrafficSplit.objects.filter(model=locked).delete()
        created = TrafficSplit.objects.bulk_create(
            [
                TrafficSplit(model=locked, version=versions[s["version"]], weight=s["weight"])
                for s in splits
            ]
        )
        after = {str(s["version"]): s["weight"] for s in splits}
        if before != after:
            audit_record(
                actor=actor, verb="split_set", obj=locked, changes={"split": [before, after]}
            )
            _split_changed_publish(locked)
        transaction.on_commit(partial(routing_invalidate, locked.name))
    logger.info(
        "traffic split set",
        extra={
            "model": model.name,
            "splits": {s["version"]: s["weight"] for s in splits},
            "actor": getattr(actor, "username", actor),
        },
    )
    return created


def traffic_split_clear(*, model: RegisteredModel, actor: Actor) -> int:
    """Ends a model's traffic split: all its traffic goes to the production version again."""
    with transaction.atomic():
        locked = registered_model_lock(model_id=model.pk)
        before = _split_weights(locked)
        count, _ = TrafficSplit.objects.filter(model=locked).delete()
        if count:
            audit_record(
                actor=actor, verb="split_clear", obj=locked, changes={"split": [before, None]}
            )
            _split_changed_publish(locked)
        transaction.on_commit(partial(routing_invalidate, locked.name))
    logger.info(
        "traffic split cleared",
        extra={"model": model.name, "actor": getattr(actor, "username", actor)},
    )
    return count


def traffic_split_end_for_archived(*, version: ModelVersion) -> int:
    """Called inside the transaction that archives or deletes `version`: a split naming it
    ends (every row of that model's split goes), so its traffic returns to the production
    version rather than to the other members' weights, which no longer sum to 100."""
    if not TrafficSplit.objects.filter(version=version).exists():
        return 0
    count, _ = TrafficSplit.objects.filter(model_id=version.model_id).delete()
    _split_changed_publish(version.model)
    logger.info(
        "traffic split ended: a version in it was archived or deleted",
        extra={"model_id": version.model_id, "version": version.version},
    )
    return count
