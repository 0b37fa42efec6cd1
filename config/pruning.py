"""Deleting many old rows without one long transaction: what every retention prune shares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.db.models import Model, QuerySet


def delete_in_batches(
    queryset: QuerySet,
    *,
    batch_size: int,
    audit: Callable[[type[Model], list[Any]], object] | None = None,
) -> int:
    """Deletes the queryset's rows `batch_size` at a time, each batch in its own transaction,
    so no lock is held for long and a crash keeps what was done; returns how many went.
    `audit(model, ids)`, when given, runs inside each batch's transaction (the audit row
    commits or rolls back with the deletion it records).

    Deletes go through the ORM, so post_delete receivers (cache invalidation) run for each row.
    """
    deleted = 0
    while True:
        ids = list(queryset.order_by("pk").values_list("pk", flat=True)[:batch_size])
        if not ids:
            return deleted
        with transaction.atomic():
            if audit is not None:
                audit(queryset.model, ids)
            _, per_model = queryset.model._base_manager.filter(pk__in=ids).delete()
        # Only this model's rows count, not what cascaded from them.
        deleted += per_model.get(queryset.model._meta.label, 0)
