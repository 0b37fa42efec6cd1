"""The backup catalogue in the admin: read-only rows, "run backup now" and "verify"."""

from __future__ import annotations

from functools import partial

from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.defaultfilters import filesizeformat
from django.urls import path, reverse

from backups import services
from backups.models import Backup, JobRun
from backups.tasks import backup_create_task
from config.dispatch import send_on_commit


@admin.register(Backup)
class BackupAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "slot",
        "status",
        "started_at",
        "finished_at",
        "verified_at",
        "size",
        "artifact_count",
        "actor",
    )
    list_filter = ("status", "database_vendor")
    search_fields = ("slot", "path")
    actions = ["verify"]
    change_list_template = "admin/backups/backup/change_list.html"

    @admin.display(description="size")
    def size(self, obj: Backup) -> str:
        return filesizeformat(obj.total_size)

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in Backup._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # rows record what is on disk; only the services write them

    def has_run_permission(self, request) -> bool:
        return request.user.has_perm("backups.add_backup")

    def get_urls(self):
        run_now = path(
            "run-now/",
            self.admin_site.admin_view(self.run_now_view),
            name="backups_backup_run_now",
        )
        return [run_now, *super().get_urls()]

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "can_run": self.has_run_permission(request)}
        return super().changelist_view(request, extra_context)

    def run_now_view(self, request: HttpRequest):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_run_permission(request):
            self.message_user(request, "You may not start backups.", messages.ERROR)
        else:
            # A backup can outlast a web request's timeout: the worker runs it, under a slot
            # of its own so it never reuses a scheduled slot's backup.
            slot = f"admin-{request.user.get_username()}-{request.request_id}"
            sending = send_on_commit(
                partial(backup_create_task.delay, slot=slot),
                task="backup_create_task",
                on_failure=lambda reason: None,  # nothing was recorded: nothing to undo
            )
            if sending.failure is not None:
                self.message_user(
                    request,
                    f"The backup was not started: the broker did not take it ({sending.failure}). "
                    "Try again once it is back.",
                    messages.ERROR,
                )
            else:
                self.message_user(
                    request,
                    f"Backup queued (slot {slot}); it appears here when the worker ran it.",
                )
        return HttpResponseRedirect(reverse("admin:backups_backup_changelist"))

    @admin.action(description="Verify (re-read every checksum)")
    def verify(self, request, queryset):
        for backup in queryset:
            try:
                services.backup_verify(backup=backup)
            except services.BackupCorrupt as exc:
                self.message_user(
                    request, f"{backup}: {exc.message} " + "; ".join(exc.problems), messages.ERROR
                )
            except services.BackupError as exc:
                self.message_user(request, f"{backup}: {exc.message}", messages.ERROR)
            else:
                self.message_user(request, f"Backup {backup.pk} verified: checksums match.")


@admin.register(JobRun)
class JobRunAdmin(admin.ModelAdmin):
    list_display = ("started_at", "job", "outcome", "duration_seconds", "error")
    list_filter = ("job", "outcome")
    date_hierarchy = "started_at"

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in JobRun._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


from backups import schedules_admin  # noqa: E402, F401  (the audited beat schedule admin)
