"""The ML team's admin. Every state change calls the same service the API calls."""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from config.errors import DomainError
from mlregistry import services
from mlregistry.forms import ModelVersionUploadForm
from mlregistry.models import ModelVersion, RegisteredModel, Stage, StageTransition


def _message_for(exc: DomainError) -> str:
    details = "; ".join(f"{k}: {' '.join(map(str, v))}" for k, v in exc.fields.items())
    return exc.message + (f" ({details})" if details and details not in exc.message else "")


class StageTransitionInline(admin.TabularInline):
    model = StageTransition
    extra = 0
    can_delete = False
    fields = ("created_at", "from_stage", "to_stage", "actor_name", "comment")
    readonly_fields = fields
    ordering = ("-created_at", "-id")
    verbose_name_plural = "Stage history"

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class ModelVersionInline(admin.TabularInline):
    model = ModelVersion
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("version", "stage", "artifact_format", "metrics", "created_by", "created_at")
    readonly_fields = fields
    ordering = ("-version",)

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(RegisteredModel)
class RegisteredModelAdmin(admin.ModelAdmin):
    list_display = ("name", "task", "production_version", "version_count", "owner", "updated_at")
    list_filter = ("task",)
    search_fields = ("name", "description")
    readonly_fields = ("owner", "created_at", "updated_at")
    inlines = [ModelVersionInline]
    actions = ["rollback_production"]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .select_related("owner")
            .annotate(
                _version_count=Count("versions"),
                _production=Count("versions", filter=Q(versions__stage=Stage.PRODUCTION)),
            )
        )

    @admin.display(description="versions", ordering="_version_count")
    def version_count(self, obj) -> int:
        return obj._version_count

    @admin.display(description="production")
    def production_version(self, obj) -> str:
        version = obj.versions.filter(stage=Stage.PRODUCTION).only("version").first()
        return f"v{version.version}" if version else "—"

    def save_model(self, request, obj, form, change):
        if not change:
            obj.owner = request.user
        super().save_model(request, obj, form, change)

    def has_promote_permission(self, request) -> bool:
        return request.user.has_perm("mlregistry.promote_modelversion")

    @admin.action(
        description="Roll back production to the previous version", permissions=["promote"]
    )
    def rollback_production(self, request, queryset):
        for model in queryset:
            try:
                version = services.model_version_rollback(model=model, actor=request.user)
            except DomainError as exc:
                self.message_user(request, f"{model.name}: {_message_for(exc)}", messages.ERROR)
            else:
                self.message_user(
                    request, f"{model.name}: v{version.version} is back in production."
                )


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = (
        "__str__",
        "model",
        "version",
        "stage_badge",
        "artifact_format",
        "metrics_summary",
        "created_by",
        "created_at",
    )
    list_filter = ("stage", "artifact_format", "source", "model")
    search_fields = ("model__name", "artifact_sha256", "created_by__username")
    list_select_related = ("model", "created_by")
    readonly_fields = (
        "model",
        "version",
        "stage",
        "artifact",
        "artifact_format",
        "artifact_sha256",
        "artifact_size",
        "library_versions",
        "input_schema",
        "classes",
        "params",
        "source",
        "created_by",
        "created_at",
        "updated_at",
    )
    fields = (*readonly_fields, "metrics", "metadata")
    inlines = [StageTransitionInline]
    actions = ["promote_to_staging", "promote_to_production", "archive"]

    @admin.display(description="stage", ordering="stage")
    def stage_badge(self, obj) -> str:
        colors = {
            "production": "#1a7f37",
            "staging": "#9a6700",
            "archived": "#6e7781",
            "none": "#57606a",
        }
        return format_html(
            '<strong style="color:{}">{}</strong>',
            colors.get(obj.stage, "#000"),
            obj.get_stage_display(),
        )

    @admin.display(description="metrics")
    def metrics_summary(self, obj) -> str:
        items = list((obj.metrics or {}).items())[:3]
        return (
            ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in items)
            or "—"
        )

    # Versions are created only through the upload service (hash, checks, storage).
    def add_view(self, request, form_url="", extra_context=None):
        return HttpResponseRedirect(reverse("admin:mlregistry_modelversion_upload"))

    def get_urls(self):
        upload = path(
            "upload/",
            self.admin_site.admin_view(self.upload_view),
            name="mlregistry_modelversion_upload",
        )
        return [upload, *super().get_urls()]

    def upload_view(self, request: HttpRequest):
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = ModelVersionUploadForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                version = services.model_version_create(
                    model=data["model"],
                    artifact=data["artifact"],
                    actor=request.user,
                    artifact_format=data["artifact_format"],
                    input_schema=data["input_schema"],
                    metrics=data["metrics"],
                    metadata=data["metadata"],
                    reference_sample=data["reference_sample"],
                )
            except DomainError as exc:
                form.add_error(None, _message_for(exc))
            else:
                self.message_user(
                    request, f"Registered {version} (sha256 {version.artifact_sha256[:12]}…)."
                )
                return HttpResponseRedirect(
                    reverse("admin:mlregistry_modelversion_change", args=[version.pk])
                )
        context = {
            **self.admin_site.each_context(request),
            "title": "Upload a model version",
            "form": form,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/mlregistry/modelversion/upload.html", context)

    def has_promote_permission(self, request) -> bool:
        return request.user.has_perm("mlregistry.promote_modelversion")

    def _transition(self, request, queryset, stage: str) -> None:
        for version in queryset.select_related("model"):
            try:
                services.model_version_transition(version=version, stage=stage, actor=request.user)
            except DomainError as exc:
                self.message_user(request, f"{version}: {_message_for(exc)}", messages.ERROR)
            else:
                self.message_user(request, f"{version} is now in {stage}.")

    @admin.action(description="Promote to staging", permissions=["promote"])
    def promote_to_staging(self, request, queryset):
        self._transition(request, queryset, Stage.STAGING)

    @admin.action(description="Promote to production", permissions=["promote"])
    def promote_to_production(self, request, queryset):
        if queryset.values("model").distinct().count() != queryset.count():
            self.message_user(
                request, "Choose at most one version per model for production.", messages.ERROR
            )
            return None
        return self._transition(request, queryset, Stage.PRODUCTION)

    @admin.action(description="Archive", permissions=["promote"])
    def archive(self, request, queryset):
        self._transition(request, queryset, Stage.ARCHIVED)


@admin.register(StageTransition)
class StageTransitionAdmin(admin.ModelAdmin):
    list_display = ("created_at", "version", "from_stage", "to_stage", "actor_name", "comment")
    list_filter = ("to_stage", "from_stage")
    search_fields = ("version__model__name", "actor_name", "comment")
    list_select_related = ("version__model",)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


# issue 6: API tokens and client model restrictions register their admins there.
from mlregistry import admin_access  # noqa: E402, F401
