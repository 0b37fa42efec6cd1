"""Reads of the registry, and the routing cache entry every stage change invalidates."""

from __future__ import annotations

import logging
from datetime import datetime

from django.core.cache import cache
from django.db.models import QuerySet

from config.errors import NotFoundError
from mlregistry.models import AuditEvent, ModelVersion, RegisteredModel, Stage, StageTransition

logger = logging.getLogger(__name__)


def routing_cache_key(model_name: str) -> str:
    """Cache key of a model's routing entry (production version / traffic split)."""
    return f"routing:v1:{model_name}"


def predict_alias_cache_key(model_id: int) -> str:
    """Cache key of the name the seeds' /predict/{model_id} alias resolved a model id to."""
    return f"predict-alias:v2:id:{model_id}"


# The names made only of digits (registered before they were refused): the alias tries them
# first. Only a delete or a rename can change this set, as no new such name is accepted.
NUMERIC_NAMES_CACHE_KEY = "predict-alias:v2:numeric-names"


def routing_invalidate(model_name: str) -> None:
    """Drops the routing entry; called on commit of every stage or traffic change."""
    try:
        cache.delete(routing_cache_key(model_name))
    except Exception:
        # The entry expires by itself; a dead cache can't serve it either.
        logger.warning("could not invalidate routing cache", extra={"model": model_name})


def registered_model_caches_invalidate(*, name: str, model_id: int) -> None:
    """Drops everything the serving path caches about a model (routing entry, the alias's
    id -> name entry, the set of numeric names); called on commit of a delete or a rename."""
    try:
        cache.delete_many(
            [routing_cache_key(name), predict_alias_cache_key(model_id), NUMERIC_NAMES_CACHE_KEY]
        )
    except Exception:
        logger.warning("could not invalidate routing cache", extra={"model": name})


def registered_model_get(*, name: str) -> RegisteredModel:
    """The model named `name`; NotFoundError (404) if none."""
    try:
        return RegisteredModel.objects.get(name=name)
    except RegisteredModel.DoesNotExist:
        raise NotFoundError(f"No registered model named {name!r}.") from None


# Version numbers are PositiveIntegerField: anything beyond cannot exist (and some
# backends raise on an out-of-range value rather than finding nothing).
VERSION_NUMBER_MAX = 2**31 - 1


def model_version_get(*, name: str, version: int) -> ModelVersion:
    """Version `version` of model `name`; NotFoundError (404) if none, whatever the number."""
    if not 1 <= version <= VERSION_NUMBER_MAX:
        raise NotFoundError(f"Model {name!r} has no version {version}.")
    try:
        return ModelVersion.objects.select_related("model", "created_by").get(
            model__name=name, version=version
        )
    except ModelVersion.DoesNotExist:
        raise NotFoundError(f"Model {name!r} has no version {version}.") from None


def model_versions_list(*, model: RegisteredModel) -> QuerySet[ModelVersion]:
    return model.versions.select_related("model", "created_by").order_by("-version")


def production_version_get(*, model: RegisteredModel) -> ModelVersion | None:
    return model.versions.filter(stage=Stage.PRODUCTION).first()


def previous_production_version_get(*, model: RegisteredModel) -> ModelVersion | None:
    """The version that was in production before the current one (the rollback target)."""
    current = production_version_get(model=model)
    left = (
        StageTransition.objects.filter(version__model=model, from_stage=Stage.PRODUCTION)
        .exclude(version=current)
        .select_related("version")
        .order_by("-created_at", "-id")
    )
    for transition in left:
        candidate = transition.version
        if candidate.stage != Stage.PRODUCTION:
            return candidate
    return None


def stage_transitions_list(*, version: ModelVersion) -> QuerySet[StageTransition]:
    return version.transitions.select_related("actor_user").order_by("-created_at", "-id")


def model_stage_transitions_list(*, model: RegisteredModel) -> QuerySet[StageTransition]:
    """Every stage change of every version of a model, newest first."""
    return (
        StageTransition.objects.filter(version__model=model)
        .select_related("version", "actor_user")
        .order_by("-created_at", "-id")
    )


def audit_events_list(
    *,
    model: str | None = None,
    actor: str | None = None,
    verb: str | None = None,
    since: datetime | None = None,
) -> QuerySet[AuditEvent]:
    """Audit events, newest first, narrowed by model name, actor (username or job name), verb
    and earliest time (inclusive); each filter left None applies no restriction."""
    events = AuditEvent.objects.all()
    if model:
        events = events.filter(model_name=model)
    if actor:
        events = events.filter(actor_name=actor)
    if verb:
        events = events.filter(verb=verb)
    if since is not None:
        events = events.filter(created_at__gte=since)
    return events
