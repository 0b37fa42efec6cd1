"""Drift reports in the admin: read-only records written by the drift check."""

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from mlregistry.templatetags.registry_admin import metric
from quality.models import DriftReport


def _number(value) -> str:
    """Shown as every metric in the admin: 4 significant digits, the full value on hover."""
    return "—" if value is None else metric(value)


def _effect(entry: dict) -> str:
    if entry.get("effect_size") is None:
        return "—"
    return f"{entry.get('effect_size_measure', '')} {entry['effect_size']:.3f}"


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
        return [f.name for f in self.model._meta.fields] + ["feature_tests"]

    def get_fields(self, request, obj=None):
        # The table says what the raw `features` JSON says, readably; the JSON stays for export.
        fields = [f.name for f in self.model._meta.fields if f.name != "id"]
        return [*fields, "feature_tests"]

    @admin.display(description="drifted features")
    def drifted(self, obj) -> str:
        return ", ".join(obj.drifted_features) or "—"

    @admin.display(description="per-feature tests")
    def feature_tests(self, obj) -> str:
        if not obj.features:
            return "—"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
            "</tr>",
            (
                (
                    f["feature"],
                    f.get("test", ""),
                    _number(f.get("p_value")),
                    _number(f.get("p_value_adjusted")),
                    _effect(f),
                    _number(f.get("min_effect_size")),
                    "yes" if f.get("drift") else "no",
                )
                for f in obj.features
            ),
        )
        return format_html(
            "<table><thead><tr><th>feature</th><th>test</th><th>p-value</th>"
            "<th>adjusted p-value (BH)</th><th>effect size</th><th>effect floor</th>"
            "<th>drift</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    @admin.display(description="charts")
    def overview(self, obj) -> str:
        url = reverse("admin:mlregistry_registeredmodel_overview", args=[obj.model_id])
        return format_html('<a href="{}">overview</a>', url)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
