"""Deleting many old rows without one long transaction: what every retention prune shares."""

from __future__ import annotations

from django.db import transaction
from django.db.models import QuerySet


def delete_in_batches(queryset: QuerySet, *, batch_size: int) -> int:
    """Deletes the queryset's rows `batch_size` at a time, each batch in its own transaction,
    so no lock is held for long and a crash keeps what was done; returns how many went.

    Deletes go through the ORM, so post_delete receivers (cache invalidation) run for each row.
    """
    deleted = 0
    while True:
        ids = list(queryset.order_by("pk").values_list("pk", flat=True)[:batch_size])
        if not ids:
            return deleted
        with transaction.atomic():
            _, per_model = queryset.model._base_manager.filter(pk__in=ids).delete()
        # Only this model's rows count, not what cascaded from them.
        deleted += per_model.get(queryset.model._meta.label, 0)
