"""Admin for serving: traffic splits per model (edited through the same service as the API),
the prediction log (read-only) and per-version online accuracy from feedback."""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest

from config.errors import DomainError
from mlregistry.models import ModelVersion, RegisteredModel, Stage
from predictions import (
    batch_admin,  # noqa: F401  (registers BatchJob)
    selectors,
    services,
)
from predictions.models import ModelTraffic, PredictionLog, VersionQuality

# ASCII digits only (str.isdigit also takes '²', which int() refuses), and no more than the
# columns hold: anything else is a form error, never a 500.
_SPLIT_ITEM = re.compile(r"v?([0-9]{1,10})\s*:\s*([0-9]{1,3})")


def _parse_splits(text: str) -> list[dict[str, int]]:
    splits = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        match = _SPLIT_ITEM.fullmatch(part)
        if match is None:
            raise forms.ValidationError(f"{part!r} is not VERSION:WEIGHT, e.g. 3:90")
        splits.append({"version": int(match[1]), "weight": int(match[2])})
    return splits


class TrafficForm(forms.ModelForm):
    splits = forms.CharField(
        required=False,
        help_text="VERSION:WEIGHT pairs summing to 100, e.g. “3:90, 4:10”. Empty ends the "
        "split: all traffic goes to the production version.",
    )

    class Meta:
        model = ModelTraffic
        fields: list[str] = []

    def clean_splits(self) -> list[dict[str, int]]:
        return _parse_splits(self.cleaned_data["splits"])


@admin.register(ModelTraffic)
class ModelTrafficAdmin(admin.ModelAdmin):
    form = TrafficForm
    list_display = ("name", "production", "split_summary")
    search_fields = ("name",)
    readonly_fields = ("name", "production", "split_summary")
    fields = ("name", "production", "split_summary", "splits")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("mlregistry.promote_modelversion")

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("mlregistry.view_registeredmodel") or (
            self.has_change_permission(request, obj)
        )

    @admin.display(description="production")
    def production(self, obj: RegisteredModel) -> str:
        version = obj.versions.filter(stage=Stage.PRODUCTION).only("version").first()
        return f"v{version.version}" if version else "—"

    @admin.display(description="split")
    def split_summary(self, obj: RegisteredModel) -> str:
        rows = selectors.traffic_split_list(model=obj)
        return ", ".join(f"v{r.version.version}: {r.weight}%" for r in rows) or "—"

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        if obj is not None:
            rows = selectors.traffic_split_list(model=obj)
            form.base_fields["splits"].initial = ", ".join(
                f"{r.version.version}:{r.weight}" for r in rows
            )
        return form

    def save_model(self, request, obj, form, change) -> None:
        splits = form.cleaned_data["splits"]
        try:
            if splits:
                services.traffic_split_set(model=obj, splits=splits, actor=request.user)
            else:
                services.traffic_split_clear(model=obj, actor=request.user)
        except DomainError as exc:
            details = "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.fields.items())
            self.message_user(request, f"{exc.message} {details}".strip(), messages.ERROR)

    def save_related(self, request, form, formsets, change) -> None:
        return None  # nothing else on the model is edited here


@admin.register(VersionQuality)
class VersionQualityAdmin(admin.ModelAdmin):
    list_display = ("__str__", "stage", "feedback_count", "online_quality")
    list_filter = ("stage", "model")
    list_select_related = ("model",)
    search_fields = ("model__name",)

    def get_queryset(self, request):
        return super().get_queryset(request).exclude(stage=Stage.NONE)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("mlregistry.view_modelversion") or request.user.has_perm(
            "mlregistry.change_modelversion"
        )

    def _metrics(self, obj: ModelVersion) -> dict[str, Any]:
        cache = getattr(self, "_metrics_cache", None)
        if cache is None or cache[0] != obj.pk:
            cache = (obj.pk, selectors.online_metrics_get(version=obj))
            self._metrics_cache = cache
        return cache[1]

    @admin.display(description="feedback rows")
    def feedback_count(self, obj: ModelVersion) -> int:
        return self._metrics(obj)["feedback_count"]

    @admin.display(description="online accuracy / MAE")
    def online_quality(self, obj: ModelVersion) -> str:
        metrics = self._metrics(obj)
        if metrics.get("accuracy") is not None:
            return f"accuracy {metrics['accuracy']:.3f}"
        if metrics.get("mae") is not None:
            return f"MAE {metrics['mae']:.4g}"
        return "—"


@admin.register(PredictionLog)
class PredictionLogAdmin(admin.ModelAdmin):
    list_display = (
        "created_at",
        "request_id",
        "row_index",
        "model",
        "version",
        "served_to",
        "output",
        "confidence",
        "cached",
        "actual",
        "latency_ms",
    )
    list_filter = ("cached", "model", "served_to", "created_at")
    search_fields = ("request_id", "client_id", "served_to__username")
    list_select_related = ("model", "version__model", "served_to")
    date_hierarchy = "created_at"
    show_full_result_count = False  # counting a large log on every page view is slow

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
