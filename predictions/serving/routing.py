"""Routing: a model's cached routing entry, and the targets a request names in it."""

from __future__ import annotations

import hashlib
import random
import secrets
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from django.conf import settings
from django.core.cache import caches

from config.errors import ConflictError, ForbiddenError, NotFoundError
from config.readahead import ORDER_ROUTING, ReadAheadPlan, readahead_register
from mlregistry.aliases import LATEST
from mlregistry.models import ModelAlias, ModelVersion, RegisteredModel, Stage
from mlregistry.selectors import model_version_get, routing_cache_key, routing_generation_key
from predictions.cache import cache_available, cache_get, cache_is_process_local, cache_set
from predictions.models import TrafficSplit
from predictions.serving.types import RoutingEntry, VersionInfo


def version_info(version: ModelVersion) -> VersionInfo:
    """What the predict path needs about one version, as plain data that can be cached."""
    return VersionInfo(
        id=version.pk,
        version=version.version,
        stage=version.stage,
        sha256=version.artifact_sha256,
        artifact=version.artifact.name,
        format=version.artifact_format,
        schema=version.input_schema,
    )


def routing_entry_from_db(*, name: str) -> RoutingEntry | None:
    """Builds a model's routing entry from the database; None when there is no such model."""
    model = RegisteredModel.objects.filter(name=name).only("id", "name", "task").first()
    if model is None:
        return None
    versions = {
        v.pk: version_info(v)
        for v in ModelVersion.objects.filter(model=model).exclude(stage=Stage.ARCHIVED)
    }
    production = next((vid for vid, v in versions.items() if v.stage == Stage.PRODUCTION), None)
    split = tuple(
        (row.version_id, row.weight)
        for row in TrafficSplit.objects.filter(model=model).order_by("version__version")
        if row.version_id in versions and row.weight > 0
    )
    # Aliases never point to archived versions (archiving removes them), so every target is
    # in `versions`.
    aliases = dict(
        ModelAlias.objects.filter(model=model, version_id__in=versions).values_list(
            "alias", "version_id"
        )
    )
    return RoutingEntry(
        model_id=model.pk,
        name=model.name,
        task=model.task,
        production=production,
        split=split,
        versions=versions,
        by_number={v.version: vid for vid, v in versions.items()},
        aliases=aliases,
        latest=max(versions, key=lambda vid: versions[vid].version, default=None),
    )


# Used only while the shared cache is failing, so a Redis outage doesn't turn into one database
# query per request; entries live PREDICTION_ROUTING_LOCAL_TTL seconds.
_fallback: dict[str, tuple[float, RoutingEntry]] = {}
_fallback_lock = threading.Lock()


def _routing_ttl() -> float:
    # A local-memory cache can't be invalidated from another process (a Celery job, another
    # gunicorn worker): a short TTL bounds how long such a process serves the old version.
    if cache_is_process_local():
        return settings.PREDICTION_ROUTING_LOCAL_TTL
    return settings.PREDICTION_ROUTING_TTL


def _generation_start(key: str) -> str:
    """The current generation token, creating one when there is none (first use, eviction)."""
    token = secrets.token_hex(8)
    try:
        cache = caches["default"]
        if cache.add(key, token, None):
            return token
        current = cache.get(key)
        if isinstance(current, str):
            return current
        # Something unreadable holds the key (the cache's serializer refused it): replaced, or
        # every request would rebuild the entry against a token of its own.
        cache.set(key, token, None)
        return token
    except Exception:
        # The entry is then stamped with a token nobody else holds: the next request rebuilds.
        return token


def routing_entry_get(*, name: str) -> RoutingEntry:
    """The routing entry of a model (cache first, database on a miss); NotFoundError if none.

    A cached entry is served only while its `generation` equals the model's generation token
    (mlregistry.selectors.routing_generation_key), which every committed stage, split, alias
    or delete replaces. The token is read before the database, so an entry built from a read
    that such a change overtook carries the old token, and no request that starts after the
    change serves it (re-reading after the write, as before, still left a moment in which
    another request could)."""
    generation = cache_get(routing_generation_key(name))
    entry = cache_get(routing_cache_key(name))
    # Anything else under the key (an entry of another shape, written by an older release
    # during a rolling deploy, or another model's entry moved here) is a miss, rebuilt below.
    if (
        type(entry) is RoutingEntry
        and entry.name == name
        and (not cache_available() or (generation is not None and entry.generation == generation))
    ):
        return entry
    if not cache_available():
        now = time.monotonic()
        cached = _fallback.get(name)
        if cached is not None and cached[0] > now:
            return cached[1]
    if generation is None and cache_available():
        generation = _generation_start(routing_generation_key(name))
    entry = routing_entry_from_db(name=name)
    if entry is None:
        raise NotFoundError(f"No registered model named {name!r}.")
    if not cache_available():
        with _fallback_lock:
            _fallback[name] = (time.monotonic() + settings.PREDICTION_ROUTING_LOCAL_TTL, entry)
        return entry
    entry = replace(entry, generation=generation or "")
    cache_set(routing_cache_key(name), entry, _routing_ttl())
    return entry


def routing_fallback_clear() -> None:
    """Forgets the outage memo of routing entries (tests)."""
    with _fallback_lock:
        _fallback.clear()


def routing_fallback_forget(name: str) -> None:
    """Forgets the outage memo's entry of one model: its routing changed in this process
    (mlregistry.selectors.routing_invalidated_hooks), so this process serves the change at
    once even while the shared cache is down; other processes within
    PREDICTION_ROUTING_LOCAL_TTL."""
    with _fallback_lock:
        _fallback.pop(name, None)


def _read_ahead(plan: ReadAheadPlan) -> None:
    if plan.target is not None:
        plan.read(routing_generation_key(plan.target.model_name), shared=True)
        plan.read(routing_cache_key(plan.target.model_name), shared=True)


readahead_register("routing", _read_ahead, order=ORDER_ROUTING)


# --- targets ------------------------------------------------------------------------------


class Target:
    """What a request asks to be answered by, within one model's routing entry.

    A target is a frozen, hashable value (the seam remembers per target which version last
    answered, to guess the result-cache key ahead). Subclasses define `model_name` and:

    - `likely(entry)`: the version the request will most likely be answered by, from the
      entry alone (no query; None when the entry cannot tell). Only a first guess: it chooses
      the typed decoder tried first and the result key read ahead, never what is served.
    - `choose(entry, user=, client_id=)`: the version that answers (may query the database;
      raises NotFoundError, ForbiddenError, ConflictError).
    - `candidates(entry, user=)`: every version `choose` may return (metadata and readiness of
      the protocols); empty when none can serve.
    - `splits(entry)`: whether `choose` reads the client id (a traffic split routes by it).
    """

    model_name: str

    def likely(self, entry: RoutingEntry) -> VersionInfo | None:
        raise NotImplementedError

    def choose(self, entry: RoutingEntry, *, user: Any, client_id: str | None) -> VersionInfo:
        raise NotImplementedError

    def candidates(self, entry: RoutingEntry, *, user: Any) -> tuple[VersionInfo, ...]:
        return (self.choose(entry, user=user, client_id=None),)

    def splits(self, entry: RoutingEntry) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class ProductionTarget(Target):
    """The model's traffic split when it has one, else its production version (409 when it
    has neither)."""

    model_name: str

    def likely(self, entry: RoutingEntry) -> VersionInfo | None:
        version_id = entry.split[0][0] if entry.split else entry.production
        return entry.versions.get(version_id) if version_id is not None else None

    def choose(self, entry: RoutingEntry, *, user: Any, client_id: str | None) -> VersionInfo:
        if entry.split:
            return entry.versions[_pick_weighted(entry.split, client_id, entry.name)]
        if entry.production is None:
            raise ConflictError(
                f"Model {entry.name!r} has no production version: promote one, or call "
                f"/models/{entry.name}/versions/<n>/predict to pin a version."
            )
        return entry.versions[entry.production]

    def candidates(self, entry: RoutingEntry, *, user: Any) -> tuple[VersionInfo, ...]:
        if entry.split:
            return tuple(entry.versions[version_id] for version_id, _ in entry.split)
        if entry.production is not None:
            return (entry.versions[entry.production],)
        return ()

    def splits(self, entry: RoutingEntry) -> bool:
        return bool(entry.split)


@dataclass(frozen=True, slots=True)
class VersionTarget(Target):
    """One version by number; an archived one for staff only (403 for others)."""

    model_name: str
    version: int

    def likely(self, entry: RoutingEntry) -> VersionInfo | None:
        return entry.version_numbered(self.version)

    def choose(self, entry: RoutingEntry, *, user: Any, client_id: str | None) -> VersionInfo:
        info = entry.version_numbered(self.version)
        if info is not None:
            return info
        # Not in the entry: archived, absent, or newer than the entry (an invalidation another
        # process's local cache could not see). Staff may still query archived versions.
        version = model_version_get(name=entry.name, version=self.version)
        if version.stage == Stage.ARCHIVED and not getattr(user, "is_staff", False):
            raise ForbiddenError(
                f"{entry.name} v{self.version} is archived; only staff may query it."
            )
        return version_info(version)


@dataclass(frozen=True, slots=True)
class AliasTarget(Target):
    """The version an alias of the model points to (`latest`: the highest version that is not
    archived); 404 when the model has no such alias. Every committed move replaces the
    routing generation, so a request that starts after a move never gets the old version."""

    model_name: str
    alias: str

    def likely(self, entry: RoutingEntry) -> VersionInfo | None:
        version_id = entry.latest if self.alias == LATEST else entry.aliases.get(self.alias)
        return entry.versions.get(version_id) if version_id is not None else None

    def choose(self, entry: RoutingEntry, *, user: Any, client_id: str | None) -> VersionInfo:
        info = self.likely(entry)
        if info is None:
            if self.alias == LATEST:
                raise NotFoundError(f"Model {entry.name!r} has no version that is not archived.")
            raise NotFoundError(f"Model {entry.name!r} has no alias {self.alias[:80]!r}.")
        return info

    def candidates(self, entry: RoutingEntry, *, user: Any) -> tuple[VersionInfo, ...]:
        info = self.likely(entry)
        return (info,) if info is not None else ()


def _pick_weighted(split: tuple[tuple[int, int], ...], client_id: str | None, name: str) -> int:
    if client_id:
        # Sticky: the same client key always lands in the same bucket of this model.
        digest = hashlib.blake2b(f"{name}\x00{client_id}".encode(), digest_size=8).digest()
        bucket = int.from_bytes(digest, "big") % 100
    else:
        bucket = random.randrange(100)  # noqa: S311 - traffic sampling, not security
    total = 0
    for version_id, weight in split:
        total += weight
        if bucket < total:
            return version_id
    return split[-1][0]
