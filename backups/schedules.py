"""Writes config.schedules.DEFAULT_SCHEDULES into django-celery-beat's database scheduler."""

from __future__ import annotations

from django.db import transaction
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from config.schedules import DEFAULT_SCHEDULES


def schedules_ensure() -> list[str]:
    """Creates missing default entries; returns their names. Existing entries are untouched."""
    created = []
    with transaction.atomic():
        for entry in DEFAULT_SCHEDULES:
            if PeriodicTask.objects.filter(name=entry["name"]).exists():
                continue  # the admin owns it now: its edits (times, enabled) are kept
            fields = {"minute": "*", "hour": "*", "day_of_week": "*", "day_of_month": "*"}
            fields |= {"month_of_year": "*", **entry["crontab"]}
            crontab, _ = CrontabSchedule.objects.get_or_create(**fields, timezone="UTC")
            PeriodicTask.objects.create(
                name=entry["name"],
                task=entry["task"],
                crontab=crontab,
                enabled=entry.get("enabled", True),
                description=entry.get("description", ""),
            )
            created.append(entry["name"])
    return created
