"""What the registry's retention prunes (registered with config.retention by MlregistryConfig):
expired API tokens, parked admin uploads nobody confirmed, and files of the artifact storage
that no row references."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from config.celery import app as celery_app
from config.celery import longest_task_time_limit
from config.retention import prune_register, store_namespace_register, store_namespaces
from mlregistry.audit import Actor
from mlregistry.storage import (
    get_artifact_storage,
    storage_temporaries,
    storage_temporary_delete,
    storage_walk,
)


def artifacts_sweep(
    *, now: datetime | None = None, min_age: timedelta | None = None, dry_run: bool = False
) -> list[str]:
    """Deletes files of the artifact storage, under the namespaces apps register (version
    artifacts here, dataset files in quality), that no row references; never files younger than
    ARTIFACT_SWEEP_MIN_AGE_SECONDS (uploads in flight), never other files. Works on any storage
    backend: it lists, dates and deletes through the storage API. On a local disk it also
    deletes, anywhere under the storage's root, the ".tmp-*" files and work folders of writers
    that died mid-write, once unchanged for longer than that and than the longest task time
    limit (mlregistry.storage.storage_temporaries). Returns the names (with `dry_run`, the
    names it would delete, deleting nothing)."""
    now = now or timezone.now()
    if min_age is None:  # a zero timedelta is a margin of none, not the default
        min_age = timedelta(seconds=settings.ARTIFACT_SWEEP_MIN_AGE_SECONDS)
    newest_allowed = now - min_age
    storage = get_artifact_storage()
    removed = []
    for namespace in store_namespaces():
        names = list(storage_walk(storage, namespace.prefix.rstrip("/")))
        referenced = namespace.referenced(names)
        for name in names:
            if name in referenced:
                continue
            try:
                if storage.get_modified_time(name) > newest_allowed:
                    continue
            except FileNotFoundError:
                continue
            # Asked again right before deleting: an upload of the same bytes may have just
            # registered this content-addressed name.
            if namespace.referenced([name]):
                continue
            if not dry_run:
                storage.delete(name)
            removed.append(name)
    # What crashed writers left: older than any task may run (a batch merge's work folder,
    # a restore's half-written file) and than min_age (an upload through the web). Every
    # app's tasks are imported first: outside a worker (cron's cleanup_retention) only the
    # ones something imported are registered, and their limits would be missed.
    celery_app.loader.import_default_modules()
    writers = timedelta(seconds=longest_task_time_limit(celery_app))
    for name in storage_temporaries(storage, older_than=(now - max(min_age, writers)).timestamp()):
        if not dry_run:
            storage_temporary_delete(storage, name)
        removed.append(name)
    return removed


def _versions_referencing(names: list[str]) -> set[str]:
    from mlregistry.models import ModelVersion

    return set(ModelVersion.objects.filter(artifact__in=names).values_list("artifact", flat=True))


def _tokens(*, now: datetime, dry_run: bool, actor: Actor) -> int:
    from mlregistry.access import api_tokens_prune_expired

    return api_tokens_prune_expired(now=now, dry_run=dry_run, actor=actor)


def _pending_uploads(*, now: datetime, dry_run: bool, actor: Actor) -> int:
    from mlregistry.services import pending_uploads_prune

    return pending_uploads_prune(now=now, dry_run=dry_run)


def _webhook_deliveries(*, now: datetime, dry_run: bool, actor: Actor) -> int:
    from mlregistry.webhooks.services import webhook_deliveries_prune

    older_than = now - timedelta(days=settings.WEBHOOK_DELIVERY_RETENTION_DAYS)
    return webhook_deliveries_prune(older_than=older_than, dry_run=dry_run, actor=actor)


def _sweep(*, now: datetime, dry_run: bool, actor: Actor) -> list[str]:
    return artifacts_sweep(now=now, dry_run=dry_run)


def register() -> None:
    store_namespace_register("sha256/", _versions_referencing)
    prune_register("expired_tokens_deleted", _tokens, label="expired API tokens")
    prune_register(
        "webhook_deliveries_pruned", _webhook_deliveries, label="finished webhook deliveries"
    )
    prune_register("pending_uploads_pruned", _pending_uploads, label="parked uploads", order=200)
    # After every row prune, so files of rows deleted in this run go in this run.
    prune_register("artifacts_swept", _sweep, label="unreferenced artifact files", order=300)
