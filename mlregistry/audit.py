"""The audit trail: every service that changes state calls `audit_record` inside its own
transaction, so the row commits or rolls back with the change it describes."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, router, transaction

from config.logging import request_id_var
from mlregistry.models import AuditEvent, RegisteredModel

# A user, or the name of the job acting ("job:retraining", "make run", ...).
Actor = AbstractBaseUser | str

# The request id's contextvar default: outside a request or a task there is none to record.
_NO_REQUEST_ID = request_id_var.get()


_TIMESTAMP_FIELDS = frozenset({"created_at", "updated_at"})


def _json_value(value: Any) -> Any:
    # Dates, decimals and UUIDs as DjangoJSONEncoder writes them, so the diff is plain JSON.
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def _field_names(obj: models.Model, fields: Iterable[str] | None) -> list[str]:
    if fields is not None:
        return list(fields)
    # The event's own time says when; the row's timestamps would only repeat it. Binary fields
    # (block digests) have no JSON form and repeat a digest the row shows in text.
    return [
        f.name
        for f in obj._meta.concrete_fields
        if not f.primary_key
        and f.name not in _TIMESTAMP_FIELDS
        and not isinstance(f, models.BinaryField)
    ]


def fields_snapshot(obj: models.Model, fields: Iterable[str] | None = None) -> dict[str, Any]:
    """`{field: JSON value}` of `obj` as it is in memory; a foreign key gives its id. Without
    `fields`, every concrete field but the primary key, the row's timestamps and binary ones."""
    snapshot = {}
    for name in _field_names(obj, fields):
        field = obj._meta.get_field(name)
        # get_prep_value: a file as its stored name, a foreign key as its id.
        snapshot[name] = _json_value(field.get_prep_value(getattr(obj, field.attname)))
    return snapshot


def changes_diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[Any]]:
    """`{field: [old, new]}` for the fields whose value differs between two snapshots (a field
    missing from one side counts as null there)."""
    return {
        name: [before.get(name), after.get(name)]
        for name in sorted({*before, *after})
        if before.get(name) != after.get(name)
    }


def created_changes(obj: models.Model, fields: Iterable[str] | None = None) -> dict[str, list]:
    """The diff of a creation: every field from null to its value."""
    return changes_diff({}, fields_snapshot(obj, fields))


def deleted_changes(obj: models.Model, fields: Iterable[str] | None = None) -> dict[str, list]:
    """The diff of a deletion: every field from its value to null."""
    return changes_diff(fields_snapshot(obj, fields), {})


def _object_identity(obj: models.Model) -> tuple[str, str, str]:
    object_type = f"{obj._meta.app_label}.{obj._meta.model_name}"
    # A knox token's primary key is its digest: the public token_key names it instead.
    object_id = getattr(obj, "token_key", None) or str(obj.pk)
    return object_type, object_id, str(obj)[:200]


def _model_name_of(obj: models.Model) -> str:
    if isinstance(obj, RegisteredModel):
        return obj.name
    related = getattr(obj, "model", None)
    return related.name if isinstance(related, RegisteredModel) else ""


def audit_record(
    *,
    actor: Actor,
    verb: str,
    obj: models.Model,
    changes: dict[str, list[Any]] | None = None,
) -> AuditEvent:
    """Writes one AuditEvent for `actor` doing `verb` ("create", "update", "delete",
    "transition", ...) to `obj`, with `changes` as `{field: [old, new]}`.

    Must run inside the calling service's `transaction.atomic()` on the database the audit rows
    are written to, which must be `obj`'s (RuntimeError otherwise): a row written outside that
    transaction would outlive a change that rolls back. Call it before a delete, while `obj`
    still has its primary key."""
    using = router.db_for_write(AuditEvent)
    if obj._state.db not in (None, using):
        raise RuntimeError(
            f"audit_record(): {obj._meta.label} lives on {obj._state.db!r}, the audit trail on "
            f"{using!r}; one transaction cannot hold both."
        )
    if not transaction.get_connection(using).in_atomic_block:
        raise RuntimeError(
            "audit_record() must be called inside the service's transaction.atomic() "
            f"on database {using!r}."
        )
    if isinstance(actor, str):
        user, actor_name = None, actor
    else:
        user, actor_name = actor, actor.get_username()
    object_type, object_id, object_repr = _object_identity(obj)
    request_id = request_id_var.get()
    return AuditEvent.objects.using(using).create(
        actor_user=user,
        actor_name=actor_name,
        verb=verb,
        object_type=object_type,
        object_id=object_id,
        object_repr=object_repr,
        model_name=_model_name_of(obj),
        changes=changes or {},
        request_id="" if request_id == _NO_REQUEST_ID else request_id,
    )


def fields_update(obj: models.Model, wanted: dict[str, Any], *, actor: Any) -> dict[str, list]:
    """Sets each field of `wanted` whose value is not None on `obj` (a row the caller has
    locked, inside its transaction), saves only what changed (with `updated_at`) and audits it
    as one "update" event. Returns the diff, {field: [old, new]}; empty when nothing changed,
    and then nothing is written."""
    fields = [field for field, value in wanted.items() if value is not None]
    before = fields_snapshot(obj, fields)
    for field in fields:
        setattr(obj, field, wanted[field])
    changes = changes_diff(before, fields_snapshot(obj, fields))
    if changes:
        obj.save(update_fields=[*changes, "updated_at"])
        audit_record(actor=actor, verb="update", obj=obj, changes=changes)
    return changes


def audit_rows_pruned(*, actor: Actor, model: type[models.Model], ids: list[Any]) -> AuditEvent:
    """Writes one "prune" AuditEvent for the retention job deleting rows `ids` of `model`, in
    the deleting transaction (RuntimeError outside one). One event per batch, not per row: a
    prune may delete millions of prediction-log rows. `changes` holds {"rows": [n, 0]} and
    the id range; the ids themselves, up to 1,000, in "ids"."""
    using = router.db_for_write(AuditEvent)
    if not transaction.get_connection(using).in_atomic_block:
        raise RuntimeError("audit_rows_pruned() must run inside the deleting transaction.")
    user, actor_name = (None, actor) if isinstance(actor, str) else (actor, actor.get_username())
    ordered = sorted(ids)
    changes: dict[str, list[Any]] = {"rows": [len(ordered), 0]}
    if len(ordered) <= 1000:
        changes["ids"] = [_json_value(ordered), None]
    request_id = request_id_var.get()
    return AuditEvent.objects.using(using).create(
        actor_user=user,
        actor_name=actor_name,
        verb="prune",
        object_type=f"{model._meta.app_label}.{model._meta.model_name}",
        object_id=f"{ordered[0]}..{ordered[-1]}"[:64] if ordered else "",
        object_repr=f"{len(ordered)} {model._meta.verbose_name_plural}"[:200],
        changes=changes,
        request_id="" if request_id == _NO_REQUEST_ID else request_id,
    )


def prune_auditor(actor: Actor):
    """`delete_in_batches(..., audit=prune_auditor(actor))`: each batch audited as `actor`."""

    def audit(model: type[models.Model], ids: list[Any]) -> None:
        audit_rows_pruned(actor=actor, model=model, ids=ids)

    return audit
