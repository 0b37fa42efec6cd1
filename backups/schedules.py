"""The beat schedule as the product changes it: the default entries
(config.schedules.DEFAULT_SCHEDULES) written into django-celery-beat's database scheduler, and
every edit of its rows (periodic tasks and their crontab, interval, solar and clocked
schedules) made through the admin, each audited in its own transaction."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import models, transaction
from django.db.models import QuerySet
from django_celery_beat.models import CrontabSchedule, PeriodicTask, PeriodicTasks

from config.schedules import DEFAULT_SCHEDULES
from mlregistry.audit import (
    Actor,
    audit_record,
    changes_diff,
    created_changes,
    deleted_changes,
    fields_snapshot,
)

# Written by beat itself as tasks run: bookkeeping, not a change anyone made.
_BEAT_BOOKKEEPING = frozenset({"last_run_at", "total_run_count", "date_changed"})


def _audited_fields(obj: models.Model) -> list[str]:
    return [
        f.name
        for f in obj._meta.concrete_fields
        if not f.primary_key and f.name not in _BEAT_BOOKKEEPING
    ]


def schedule_save(*, obj: models.Model, actor: Actor) -> models.Model:
    """Saves a django-celery-beat row (PeriodicTask, CrontabSchedule, IntervalSchedule,
    SolarSchedule, ClockedSchedule) with the values set on `obj` (the admin's form), and
    audits it: "create", or "update" with the fields that changed. Returns `obj`."""
    fields = _audited_fields(obj)
    with transaction.atomic():
        stored = None
        if obj.pk is not None:
            stored = type(obj).objects.select_for_update().filter(pk=obj.pk).first()
        before = fields_snapshot(stored, fields) if stored is not None else None
        obj.save()
        if before is None:
            audit_record(actor=actor, verb="create", obj=obj, changes=created_changes(obj, fields))
        elif changes := changes_diff(before, fields_snapshot(obj, fields)):
            audit_record(actor=actor, verb="update", obj=obj, changes=changes)
    return obj


def schedule_delete(*, obj: models.Model, actor: Actor) -> None:
    """Deletes a django-celery-beat row and audits it (deleting a schedule deletes the periodic
    tasks that use it: django-celery-beat's foreign keys cascade; each is audited too)."""
    with transaction.atomic():
        dependants: Iterable[PeriodicTask] = ()
        if not isinstance(obj, PeriodicTask):
            field = next(
                f.name for f in PeriodicTask._meta.concrete_fields if f.related_model is type(obj)
            )
            dependants = PeriodicTask.objects.select_for_update().filter(**{field: obj})
        for task in dependants:
            audit_record(
                actor=actor,
                verb="delete",
                obj=task,
                changes=deleted_changes(task, _audited_fields(task)),
            )
        audit_record(
            actor=actor, verb="delete", obj=obj, changes=deleted_changes(obj, _audited_fields(obj))
        )
        obj.delete()
    if not isinstance(obj, PeriodicTask):
        PeriodicTasks.update_changed()


def periodic_tasks_enable(
    *, tasks: QuerySet[PeriodicTask], enabled: bool | None, actor: Actor
) -> int:
    """Enables (True), disables (False) or toggles (None) each task, as the admin's actions
    do, auditing each change; beat picks the change up at its next sync. Returns how many
    tasks changed."""
    changed = 0
    with transaction.atomic():
        # The admin's queryset joins the (nullable) schedules: lock the tasks' rows only.
        for task in tasks.select_for_update(of=("self",)).order_by("pk"):
            wanted = (not task.enabled) if enabled is None else enabled
            if task.enabled == wanted:
                continue
            task.enabled = wanted
            schedule_save(obj=task, actor=actor)
            changed += 1
    return changed


def schedules_ensure(*, actor: Actor = "setup_schedules") -> list[str]:
    """Creates missing default entries (audited as `actor`); returns their names. Existing
    entries are untouched."""
    created = []
    with transaction.atomic():
        for entry in DEFAULT_SCHEDULES:
            if PeriodicTask.objects.filter(name=entry["name"]).exists():
                continue  # the admin owns it now: its edits (times, enabled) are kept
            fields = {"minute": "*", "hour": "*", "day_of_week": "*", "day_of_month": "*"}
            fields |= {"month_of_year": "*", **entry["crontab"]}
            crontab, _ = CrontabSchedule.objects.get_or_create(**fields, timezone="UTC")
            task = PeriodicTask.objects.create(
                name=entry["name"],
                task=entry["task"],
                crontab=crontab,
                enabled=entry.get("enabled", True),
                description=entry.get("description", ""),
            )
            audit_record(
                actor=actor,
                verb="create",
                obj=task,
                changes=created_changes(task, _audited_fields(task)),
            )
            created.append(entry["name"])
    return created
