"""Batch scoring jobs in the admin: progress, and the API's cancel and resume actions."""

from django.contrib import admin, messages
from django.utils.html import format_html

from config.errors import DomainError
from predictions import batch
from predictions.models import BatchJob

# Up to 128 KiB of binary digests a chunk checks its input against: nothing to read in a page.
HIDDEN = ("parquet_block_sha256",)


@admin.register(BatchJob)
class BatchJobAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "model",
        "version_number",
        "status",
        "progress",
        "rows_failed",
        "speed",
        "input_label",
        "created_at",
        "finished_at",
    )
    list_filter = ("status", "model")
    list_select_related = ("model",)
    date_hierarchy = "created_at"
    actions = ["cancel_jobs", "resume_jobs"]

    def get_queryset(self, request):
        return super().get_queryset(request).defer(*HIDDEN)

    def get_readonly_fields(self, request, obj=None):
        shown = [f.name for f in self.model._meta.fields if f.name not in HIDDEN]
        return [*shown, "progress", "speed"]

    # Jobs are created through the API (an upload or a dataset) and removed by retention.
    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def has_cancel_permission(self, request) -> bool:
        return request.user.has_perm("predictions.cancel_batchjob")

    @admin.display(description="progress")
    def progress(self, obj: BatchJob) -> str:
        total = obj.rows_total or 0
        percent = round(100 * obj.rows_done / total) if total else 0
        return format_html(
            '<progress value="{}" max="{}" title="{}%">{}%</progress> {} / {}',
            obj.rows_done,
            total or 1,
            percent,
            percent,
            obj.rows_done,
            total if obj.rows_total is not None else "?",
        )

    @admin.display(description="rows/s")
    def speed(self, obj: BatchJob) -> str:
        value = batch.rows_per_second(obj)
        return "—" if value is None else f"{value:,.0f}"

    def _each(self, request, queryset, service, done: str) -> None:
        count = 0
        for job in queryset:
            try:
                service(job=job, actor=request.user)
                count += 1
            except DomainError as exc:
                self.message_user(request, f"Job {job.pk}: {exc.message}", messages.WARNING)
        if count:
            self.message_user(request, f"{count} job(s) {done}.", messages.SUCCESS)

    @admin.action(description="Cancel the selected jobs", permissions=["cancel"])
    def cancel_jobs(self, request, queryset) -> None:
        self._each(request, queryset, batch.batch_job_cancel, "cancelled")

    @admin.action(description="Resume the selected jobs", permissions=["cancel"])
    def resume_jobs(self, request, queryset) -> None:
        self._each(request, queryset, batch.batch_job_resume, "resumed")
