"""django-celery-beat's admin, with every change going through the audited schedule services
(backups.schedules): the edit form, the delete page and bulk delete, and the enable, disable
and toggle actions."""

from __future__ import annotations

from django.contrib import admin, messages
from django.http import HttpRequest
from django_celery_beat import admin as beat_admin
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)

from backups import schedules
from config.errors import BROKER_ERRORS


class AuditedScheduleMixin:
    def save_model(self, request: HttpRequest, obj, form, change) -> None:
        schedules.schedule_save(obj=obj, actor=request.user)

    def delete_model(self, request: HttpRequest, obj) -> None:
        schedules.schedule_delete(obj=obj, actor=request.user)

    def delete_queryset(self, request: HttpRequest, queryset) -> None:
        for obj in queryset:
            schedules.schedule_delete(obj=obj, actor=request.user)


class PeriodicTaskAdmin(AuditedScheduleMixin, beat_admin.PeriodicTaskAdmin):
    def _enable(self, request: HttpRequest, queryset, enabled: bool | None, done: str) -> None:
        changed = schedules.periodic_tasks_enable(
            tasks=queryset, enabled=enabled, actor=request.user
        )
        self.message_user(request, f"{changed} task(s) {done}.", messages.SUCCESS)

    @admin.action(description="Enable selected tasks")
    def enable_tasks(self, request: HttpRequest, queryset) -> None:
        self._enable(request, queryset, True, "enabled")

    @admin.action(description="Disable selected tasks")
    def disable_tasks(self, request: HttpRequest, queryset) -> None:
        self._enable(request, queryset, False, "disabled")

    @admin.action(description="Toggle activity of selected tasks")
    def toggle_tasks(self, request: HttpRequest, queryset) -> None:
        self._enable(request, queryset, None, "toggled")

    @admin.action(description="Run selected tasks")
    def run_tasks(self, request: HttpRequest, queryset) -> None:
        try:
            super().run_tasks(request, queryset)
        except BROKER_ERRORS as exc:
            # django-celery-beat sends them one by one: those before the failure were sent.
            self.message_user(
                request,
                f"Not all were sent: the broker did not take them ({exc}). Try again once it "
                "is back.",
                messages.ERROR,
            )


class CrontabScheduleAdmin(AuditedScheduleMixin, beat_admin.CrontabScheduleAdmin):
    pass


class IntervalScheduleAdmin(AuditedScheduleMixin, beat_admin.IntervalScheduleAdmin):
    pass


class SolarScheduleAdmin(AuditedScheduleMixin, beat_admin.SolarScheduleAdmin):
    pass


class ClockedScheduleAdmin(AuditedScheduleMixin, beat_admin.ClockedScheduleAdmin):
    pass


for _model, _admin in (
    (PeriodicTask, PeriodicTaskAdmin),
    (CrontabSchedule, CrontabScheduleAdmin),
    (IntervalSchedule, IntervalScheduleAdmin),
    (SolarSchedule, SolarScheduleAdmin),
    (ClockedSchedule, ClockedScheduleAdmin),
):
    # django_celery_beat comes before backups in INSTALLED_APPS: its own admin is registered.
    if admin.site.is_registered(_model):
        admin.site.unregister(_model)
    admin.site.register(_model, _admin)
