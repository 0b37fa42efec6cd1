"""Reads of the registry, and the routing cache entry every stage change invalidates."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from datetime import datetime

from django.core.cache import cache
from django.db import connections, router
from django.db.models import Prefetch, Q, QuerySet, TextField
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast

from config.cache_outage import deletes_pending_add
from config.errors import NotFoundError, ValidationFailed
from mlregistry.aliases import ALIAS_PATTERN, LATEST
from mlregistry.models import (
    AuditEvent,
    ModelAlias,
    ModelVersion,
    RegisteredModel,
    Stage,
    StageTransition,
)
from mlregistry.tags import TAG_FILTERS_MAX, tag_filter_parse

logger = logging.getLogger(__name__)


def routing_cache_key(model_name: str) -> str:
    """Cache key of a model's routing entry (production version / traffic split / aliases)."""
    return f"routing:v2:{model_name}"


def routing_generation_key(model_name: str) -> str:
    """Cache key of a model's routing generation: a token every invalidation replaces. An
    entry is served only while it carries the current token, so an entry built from a read
    that a committed change overtook is never served to a request that starts after it."""
    return f"routing-gen:v1:{model_name}"


def routing_generation_bump(model_name: str) -> None:
    """Replaces the generation token (no expiry: an evicted token only costs a rebuild)."""
    cache.set(routing_generation_key(model_name), secrets.token_hex(8), None)


def predict_alias_cache_key(model_id: int) -> str:
    """Cache key of the name the seeds' /predict/{model_id} alias resolved a model id to."""
    return f"predict-alias:v2:id:{model_id}"


# The names made only of digits (registered before they were refused): the alias tries them
# first. Only a delete or a rename can change this set, as no new such name is accepted.
NUMERIC_NAMES_CACHE_KEY = "predict-alias:v2:numeric-names"


# Called with a model's name on every routing invalidation, by the apps that keep routing
# entries of their own in the process (the serving path's outage memo).
routing_invalidated_hooks: list[Callable[[str], None]] = []


def routing_invalidate(model_name: str) -> None:
    """Drops the routing entry; called on commit of every stage, traffic or alias change."""
    for hook in routing_invalidated_hooks:
        hook(model_name)
    try:
        # The new token retires every entry built before this commit, including one a
        # request that read the database just before it writes only after this delete.
        routing_generation_bump(model_name)
        cache.delete(routing_cache_key(model_name))
    except Exception:
        # A dead cache can't serve the entry; the delete is sent again once it answers.
        deletes_pending_add([routing_cache_key(model_name)])
        logger.warning("could not invalidate routing cache", extra={"model": model_name})


def registered_model_caches_invalidate(*, name: str, model_id: int) -> None:
    """Drops everything the serving path caches about a model (routing entry, the alias's
    id -> name entry, the set of numeric names); called on commit of a delete or a rename."""
    for hook in routing_invalidated_hooks:
        hook(name)
    keys = [routing_cache_key(name), predict_alias_cache_key(model_id), NUMERIC_NAMES_CACHE_KEY]
    try:
        routing_generation_bump(name)
        cache.delete_many(keys)
    except Exception:
        deletes_pending_add(keys)
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


_ALIAS_NAMES = Prefetch("aliases", queryset=ModelAlias.objects.only("id", "alias", "version_id"))


def _tags_filter(queryset: QuerySet, tags: list[str] | None) -> QuerySet:
    """Narrows `queryset` (a model with a `tags` JSON column) to rows holding every `?tag=`
    filter: `key` (has it) or `key:value` (mlregistry.tags.tag_filter_parse). On Postgres the
    lookups are jsonb `?` and `@>`, which the GIN index on `tags` answers; elsewhere a JSON
    key read per row."""
    postgres = connections[router.db_for_read(queryset.model)].vendor == "postgresql"
    tags = list(dict.fromkeys(tags or ()))  # the same filter twice narrows nothing more
    if len(tags) > TAG_FILTERS_MAX:
        raise ValidationFailed(
            f"At most {TAG_FILTERS_MAX} different tag filters; {len(tags)} were given.",
            fields={"tag": [f"at most {TAG_FILTERS_MAX} filters"]},
        )
    for index, raw in enumerate(tags):
        key, value = tag_filter_parse(raw)
        if value is None:
            queryset = queryset.filter(tags__has_key=key)
        elif postgres:
            queryset = queryset.filter(tags__contains={key: value})
        else:
            # An explicit transform: a key may hold "__", which a lookup string would split.
            name = f"_tag{index}"
            # Cast: a plain text comparison, not JSONField's exact (which reads the value as
            # JSON text).
            text = Cast(KeyTextTransform(key, "tags"), TextField())
            queryset = queryset.alias(**{name: text}).filter(Q(tags__has_key=key), **{name: value})
    return queryset


def model_versions_list(
    *,
    model: RegisteredModel,
    tags: list[str] | None = None,
    stage: str | None = None,
    alias: str | None = None,
    run_id: str | None = None,
) -> QuerySet[ModelVersion]:
    """A model's versions, newest first, with their alias names prefetched, narrowed by every
    filter given: `tags` (each `key` or `key:value`, all must hold), `stage`, `alias` (the
    version it points to; `latest` the highest that is not archived) and `run_id` (exact).
    ValidationFailed (400) for a malformed tag filter."""
    versions = model.versions.select_related("model", "created_by").prefetch_related(_ALIAS_NAMES)
    versions = _tags_filter(versions, tags)
    if stage:
        versions = versions.filter(stage=stage)
    if run_id:
        versions = versions.filter(run_id=run_id)
    if alias:
        if alias == LATEST:
            latest = latest_version_get(model=model)
            versions = versions.filter(pk=latest.pk if latest else None)
        else:
            versions = versions.filter(aliases__alias=alias)
    return versions.order_by("-version")


def registered_models_list(
    *, tags: list[str] | None = None, search: str | None = None
) -> QuerySet[RegisteredModel]:
    """Registered models by name, narrowed by `tags` (as model_versions_list) and `search`
    (case-insensitive substring of the name or the description)."""
    models = _tags_filter(RegisteredModel.objects.all(), tags)
    if search:
        models = models.filter(Q(name__icontains=search) | Q(description__icontains=search))
    return models


def latest_version_get(*, model: RegisteredModel) -> ModelVersion | None:
    """What the reserved alias `latest` means: the highest version that is not archived."""
    return (
        model.versions.exclude(stage=Stage.ARCHIVED)
        .select_related("model", "created_by")
        .order_by("-version")
        .first()
    )


def model_aliases_list(*, model: RegisteredModel) -> QuerySet[ModelAlias]:
    """A model's aliases by name, with the version each points to."""
    return (
        ModelAlias.objects.filter(model=model)
        .select_related("version", "updated_by")
        .order_by("alias")
    )


def model_version_by_alias_get(*, name: str, alias: str) -> ModelVersion:
    """The version `alias` of model `name` points to (`latest`: the highest version that is
    not archived); NotFoundError (404) when the model, the alias or (for latest) any version
    that is not archived is missing."""
    model = registered_model_get(name=name)
    if alias == LATEST:
        version = latest_version_get(model=model)
        if version is None:
            raise NotFoundError(f"Model {name!r} has no version that is not archived.")
        return version
    if not ALIAS_PATTERN.fullmatch(alias):
        raise NotFoundError(f"Model {name!r} has no alias {alias[:80]!r}.")
    version = (
        ModelVersion.objects.select_related("model", "created_by")
        .filter(model=model, aliases__alias=alias)
        .first()
    )
    if version is None:
        raise NotFoundError(f"Model {name!r} has no alias {alias!r}.")
    return version


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
