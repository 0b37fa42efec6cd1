"""Drift reports in the admin: read-only records written by the drift check."""

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from predictions.models import DriftReport


@admin.register(DriftReport)
class DriftReportAdmin(admin.ModelAdmin):
    list_display = (
        "window_end",
        "model",
        "version",
        "status",
        "sample_size",
        "reference_size",
        "drifted",
        "overview",
    )
    list_filter = ("status", "model")
    list_select_related = ("model", "version")
    date_hierarchy = "window_end"

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    @admin.display(description="drifted features")
    def drifted(self, obj) -> str:
        return ", ".join(obj.drifted_features) or "—"

    @admin.display(description="charts")
    def overview(self, obj) -> str:
        url = reverse("admin:mlregistry_registeredmodel_overview", args=[obj.model_id])
        return format_html('<a href="{}">overview</a>', url)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
