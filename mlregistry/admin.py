"""The ML team's admin. Every state change calls the same service the API calls."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected as django_delete_selected
from django.contrib.admin.utils import model_ngettext
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Count, Prefetch, Q
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse
from django.utils.html import format_html, format_html_join

from config.errors import DomainError, NotFoundError
from mlregistry import selectors, services
from mlregistry.forms import (
    AliasSetForm,
    ModelVersionUploadForm,
    PendingUploadForm,
    RollbackForm,
    TransitionForm,
)
from mlregistry.models import ModelAlias, ModelVersion, RegisteredModel, Stage, StageTransition
from mlregistry.tags import tags_changes_validate, tags_merge
from mlregistry.templatetags.registry_admin import json_html, metrics_html

# Previews a user has open, in their session: token -> what the confirmation will register.
PENDING_SESSION_KEY = "mlregistry_pending_uploads"
PENDING_PER_SESSION = 5
STAGE_VERBS = {
    Stage.STAGING: "Promote to staging",
    Stage.PRODUCTION: "Promote to production",
    Stage.ARCHIVED: "Archive",
}
# The moves the admin offers from each stage. The production version is taken out of service by
# archiving it (or by a rollback on the model page), never "promoted" down to staging.
STAGE_MOVES: dict[str, tuple[str, ...]] = {
    Stage.NONE: (Stage.STAGING, Stage.PRODUCTION, Stage.ARCHIVED),
    Stage.STAGING: (Stage.PRODUCTION, Stage.ARCHIVED),
    Stage.PRODUCTION: (Stage.ARCHIVED,),
    Stage.ARCHIVED: (Stage.STAGING, Stage.PRODUCTION),
}


def _move_refusal(version: ModelVersion, stage: str) -> str | None:
    """Why the admin does not offer moving `version` to `stage`; None when it does."""
    if stage in STAGE_MOVES.get(version.stage, ()):
        return None
    return (
        f"{version} is in {version.get_stage_display().lower()}: "
        f"{STAGE_VERBS[stage].lower()} is not offered from there."
    )


def _refusal(exc: DomainError) -> dict[str, Any]:
    """A refusal as the templates show it: the message and, for artifacts, the offending types."""
    return {
        "kind": exc.error_type.replace("_", " "),
        "message": exc.message,
        # An ArtifactError repeats its message under "artifact": show it once.
        "fields": {k: v for k, v in exc.fields.items() if v != [exc.message]},
        "untrusted_types": getattr(exc, "untrusted_types", []),
    }


def alias_badges(names) -> str:
    """Aliases as badges (the version list, the model and version pages)."""
    return format_html_join(
        " ", '<span class="mlr-alias" title="alias">@{}</span>', ((n,) for n in sorted(names))
    )


def _tags_checked(form_class):
    """`form_class` whose `tags` field follows the services' tag rules (mlregistry.tags), so a
    bad tag is a form error rather than a refusal from save_model."""

    class TagsChecked(form_class):
        def clean_tags(self):
            try:
                return tags_merge(
                    {}, tags_changes_validate(self.cleaned_data["tags"] or {}, allow_delete=False)
                )
            except DomainError as exc:
                raise ValidationError(
                    [f"{k}: {' '.join(v)}" for k, v in exc.fields.items()] or exc.message
                ) from None

    return TagsChecked


def _overview_url(model: RegisteredModel) -> str | None:
    """The model overview page, when the app that draws it (quality) is installed."""
    try:
        return reverse("admin:mlregistry_registeredmodel_overview", args=[model.pk])
    except NoReverseMatch:
        return None


class DeletesThroughServices:
    """Admin deletes (the delete page, and the bulk action) call the same service as the API,
    with its refusals (shown as messages, nothing deleted) and its on-commit invalidation of
    what the serving path cached. Subclasses name the service in `_delete_with_service`."""

    def _delete_with_service(self, request: HttpRequest, obj: Any) -> None:
        raise NotImplementedError

    def get_deleted_objects(self, objs, request):
        to_delete, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        # The service deletes an object's history with it (stage transitions, which no one may
        # delete on their own, the prediction log, drift reports): as in the API, the
        # permission to delete the object itself is what it takes.
        if self.has_delete_permission(request):
            perms_needed = set()
        return to_delete, model_count, perms_needed, protected

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        self._delete_with_service(request, obj)

    def delete_view(self, request, object_id, extra_context=None):
        try:
            return super().delete_view(request, object_id, extra_context)
        except DomainError as exc:
            # Raised inside the delete page's transaction, which rolled back (its log entry too).
            self.message_user(request, f"Not deleted: {exc.full_message()}", messages.ERROR)
            opts = self.model._meta
            if isinstance(exc, NotFoundError):
                target = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
            else:
                target = reverse(
                    f"admin:{opts.app_label}_{opts.model_name}_change", args=[object_id]
                )
            return HttpResponseRedirect(target)

    def delete_queryset(self, request: HttpRequest, queryset) -> int:
        """Deletes each object through the service; a refusal is a message and the others still
        go. Returns how many were deleted."""
        deleted = 0
        for obj in queryset:
            try:
                with transaction.atomic():
                    self.log_deletions(request, queryset.model.objects.filter(pk=obj.pk))
                    self._delete_with_service(request, obj)
            except DomainError as exc:
                message = f"{obj}: not deleted: {exc.full_message()}"
                self.message_user(request, message, messages.ERROR)
            else:
                deleted += 1
        return deleted

    @admin.action(permissions=["delete"], description="Delete selected %(verbose_name_plural)s")
    def delete_selected(self, request: HttpRequest, queryset):
        """Django's action (its confirmation page and checks), deleting through the service."""
        _, _, perms_needed, protected = self.get_deleted_objects(queryset, request)
        if not request.POST.get("post") or perms_needed or protected:
            return django_delete_selected(self, request, queryset)
        deleted = self.delete_queryset(request, queryset)
        if deleted:
            self.message_user(
                request,
                f"Deleted {deleted} {model_ngettext(self.opts, deleted)}.",
                messages.SUCCESS,
            )
        return None


class ModelVersionInline(admin.TabularInline):
    model = ModelVersion
    extra = 0
    can_delete = False
    show_change_link = True
    fields = (
        "version",
        "stage",
        "alias_list",
        "artifact_format",
        "metrics_display",
        "created_by",
        "created_at",
    )
    readonly_fields = fields
    ordering = ("-version",)

    @admin.display(description="aliases")
    def alias_list(self, obj) -> str:
        return alias_badges(a.alias for a in obj.aliases.all())

    @admin.display(description="metrics")
    def metrics_display(self, obj) -> str:
        return metrics_html(obj.metrics)

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(RegisteredModel)
class RegisteredModelAdmin(DeletesThroughServices, admin.ModelAdmin):
    list_display = ("name", "task", "production_version", "version_count", "owner", "updated_at")
    list_filter = ("task",)
    search_fields = ("name", "description")
    readonly_fields = ("alias_pointers", "owner", "created_at", "updated_at")

    def get_form(self, request, obj=None, change=False, **kwargs):
        return _tags_checked(super().get_form(request, obj, change, **kwargs))

    @admin.display(description="aliases")
    def alias_pointers(self, obj) -> str:
        if obj is None or obj.pk is None:
            return "—"
        rows = selectors.model_aliases_list(model=obj)
        return (
            format_html_join(
                " ",
                '<span class="mlr-alias" title="alias">@{} → v{}</span>',
                ((row.alias, row.version.version) for row in rows),
            )
            or "—"
        )

    inlines = [ModelVersionInline]
    actions = ["rollback_production", "delete_selected"]
    # Named here so that a mixin's own change form (the overview link) cannot replace the
    # serving panel, the rollback button and the timeline; this template links the overview.
    change_form_template = "admin/mlregistry/registeredmodel/change_form.html"

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
        """Through the services, as the API: one audit row, the cache invalidations of a
        rename or a task change, and the owner set from the acting user."""
        data = form.cleaned_data
        if change:
            services.registered_model_update(
                model=obj,
                actor=request.user,
                **{field: data[field] for field in form.changed_data if field in data},
            )
        else:
            created = services.registered_model_create(
                name=data["name"],
                actor=request.user,
                task=data.get("task") or obj.task,
                description=data.get("description", ""),
                tags=data.get("tags") or {},
            )
            # The admin goes on with `obj` (its log entry, its redirect): it is the new row.
            obj.pk = created.pk
            obj.owner = created.owner
            obj.created_at, obj.updated_at = created.created_at, created.updated_at
            obj._state.adding = False
            obj._state.db = created._state.db

    def _delete_with_service(self, request, obj) -> None:
        services.registered_model_delete(model=obj, actor=request.user)

    def has_promote_permission(self, request) -> bool:
        return request.user.has_perm("mlregistry.promote_modelversion")

    def get_urls(self):
        rollback = path(
            "<path:object_id>/rollback/",
            self.admin_site.admin_view(self.rollback_view),
            name="mlregistry_registeredmodel_rollback",
        )
        return [rollback, *super().get_urls()]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        model = self.get_object(request, object_id)
        if model is not None:
            production = selectors.production_version_get(model=model)
            extra_context = {
                **(extra_context or {}),
                "production": production,
                "rollback_target": selectors.previous_production_version_get(model=model),
                "rollback_form": RollbackForm(
                    initial={"expected_production": production.pk if production else None}
                ),
                "can_promote": self.has_promote_permission(request),
                "timeline": selectors.model_stage_transitions_list(model=model)[:50],
                "overview_url": _overview_url(model),
                "upload_url": reverse("admin:mlregistry_modelversion_upload")
                + f"?model={model.pk}",
            }
        return super().change_view(request, object_id, form_url, extra_context)

    def rollback_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """One click: the previous production version serves again; refusals say why."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_promote_permission(request):
            raise PermissionDenied
        model = self.get_object(request, object_id)
        if model is None:
            raise Http404("No such registered model.")
        form = RollbackForm(request.POST)
        change_url = reverse("admin:mlregistry_registeredmodel_change", args=[model.pk])
        if not form.is_valid():
            self.message_user(request, "The rollback form was incomplete.", messages.ERROR)
            return HttpResponseRedirect(change_url)
        try:
            version = services.model_version_rollback(
                model=model,
                actor=request.user,
                comment=form.cleaned_data["comment"],
                expected_production_pk=form.cleaned_data["expected_production"],
            )
        except DomainError as exc:
            self.message_user(request, f"Rollback refused: {exc.full_message()}", messages.ERROR)
        else:
            self.message_user(
                request, f"Rolled back: {model.name} v{version.version} serves production again."
            )
        return HttpResponseRedirect(change_url)

    @admin.action(
        description="Roll back production to the previous version", permissions=["promote"]
    )
    def rollback_production(self, request, queryset):
        for model in queryset:
            try:
                version = services.model_version_rollback(model=model, actor=request.user)
            except DomainError as exc:
                self.message_user(request, f"{model.name}: {exc.full_message()}", messages.ERROR)
            else:
                self.message_user(
                    request, f"{model.name}: v{version.version} is back in production."
                )


@admin.register(ModelVersion)
class ModelVersionAdmin(DeletesThroughServices, admin.ModelAdmin):
    # "iris v2" names model and version in one column: two columns fewer to fit the window.
    list_display = (
        "version_name",
        "stage_badge",
        "alias_list",
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
        "params_display",
        "source",
        "alias_list",
        "run_id",
        "git_commit",
        "source_url",
        "training_dataset_uri",
        "training_dataset_sha256",
        "created_by",
        "created_at",
        "updated_at",
    )
    fields = (*readonly_fields, "tags", "metrics", "metadata")
    actions = [
        "promote_to_staging",
        "promote_to_production",
        "archive",
        "set_alias",
        "delete_selected",
    ]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .prefetch_related(Prefetch("aliases", queryset=ModelAlias.objects.only("alias")))
        )

    @admin.display(description="aliases")
    def alias_list(self, obj) -> str:
        return alias_badges(a.alias for a in obj.aliases.all())

    def _delete_with_service(self, request, obj) -> None:
        removed = services.model_version_delete(version=obj, actor=request.user)
        if removed:
            listed = ", ".join(r.alias for r in removed)
            self.message_user(request, f"Aliases removed with {obj}: {listed}.", messages.WARNING)

    def save_model(self, request, obj, form, change):
        """Only tags, metrics and metadata are editable here; they change through the
        service (its tag rules are the form's too, see get_form)."""
        data = form.cleaned_data
        services.model_version_update(
            version=obj,
            actor=request.user,
            **{
                field: data[field]
                for field in ("tags", "metrics", "metadata")
                if field in form.changed_data
            },
        )

    def get_form(self, request, obj=None, change=False, **kwargs):
        return _tags_checked(super().get_form(request, obj, change, **kwargs))

    @admin.display(description="version")
    def version_name(self, obj) -> str:
        return str(obj)

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
        return metrics_html(obj.metrics, limit=3)

    @admin.display(description="params")
    def params_display(self, obj) -> str:
        # Rows registered before placeholders were dropped at upload still hold them.
        return json_html(services.params_without_placeholders(obj.params or {}))

    # Versions are created only through the upload service (hash, checks, storage).
    def add_view(self, request, form_url="", extra_context=None):
        return HttpResponseRedirect(reverse("admin:mlregistry_modelversion_upload"))

    def get_urls(self):
        urls = [
            path(
                "upload/",
                self.admin_site.admin_view(self.upload_view),
                name="mlregistry_modelversion_upload",
            ),
            path(
                "<path:object_id>/stage/<slug:stage>/",
                self.admin_site.admin_view(self.transition_view),
                name="mlregistry_modelversion_transition",
            ),
            path(
                "<path:object_id>/alias/",
                self.admin_site.admin_view(self.alias_view),
                name="mlregistry_modelversion_alias",
            ),
        ]
        return [*urls, *super().get_urls()]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        version = self.get_object(request, object_id)
        if version is not None:
            extra_context = {
                **(extra_context or {}),
                "version": version,
                "timeline": selectors.stage_transitions_list(version=version),
                "stage_moves": self._stage_moves(request, version),
                "alias_url": reverse("admin:mlregistry_modelversion_alias", args=[version.pk])
                if self.has_promote_permission(request)
                else None,
                "schema": version.input_schema,
            }
        return super().change_view(request, object_id, form_url, extra_context)

    def _stage_moves(self, request, version: ModelVersion) -> list[dict[str, str]]:
        if not self.has_promote_permission(request):
            return []
        return [
            {
                "label": verb,
                "stage": stage,
                "url": reverse(
                    "admin:mlregistry_modelversion_transition", args=[version.pk, stage]
                ),
            }
            for stage, verb in STAGE_VERBS.items()
            if stage in STAGE_MOVES.get(version.stage, ())
        ]

    # --- Upload: step 1 checks and previews, step 2 registers exactly the previewed bytes ---

    def _pending(self, request) -> dict[str, dict[str, Any]]:
        return request.session.get(PENDING_SESSION_KEY, {})

    def _pending_remember(self, request, token: str, entry: dict[str, Any]) -> None:
        pending = self._pending(request)
        pending[token] = entry
        # A user who previews and walks away repeatedly leaves at most a few files behind.
        while len(pending) > PENDING_PER_SESSION:
            oldest = next(iter(pending))
            services.pending_upload_discard(name=pending.pop(oldest)["name"])
        request.session[PENDING_SESSION_KEY] = pending

    def _pending_take(self, request, token: str) -> dict[str, Any] | None:
        pending = self._pending(request)
        entry = pending.pop(token, None)
        request.session[PENDING_SESSION_KEY] = pending
        return entry

    def upload_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        if request.method == "POST" and "token" in request.POST:
            return self._upload_confirm(request)
        initial = {"model": request.GET.get("model")} if request.GET.get("model") else None
        form = ModelVersionUploadForm(request.POST or None, request.FILES or None, initial=initial)
        refusal = None
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                pending = services.model_version_preview(
                    model=data["model"],
                    artifact=data["artifact"],
                    actor=request.user,
                    artifact_format=data["artifact_format"],
                    input_schema=data["input_schema"],
                    reference_sample=data["reference_sample"],
                )
            except DomainError as exc:
                refusal = _refusal(exc)
            else:
                self._pending_remember(
                    request,
                    pending.token,
                    {
                        "name": pending.name,
                        # The uploaded file's: an MLflow archive is registered from it again.
                        "sha256": pending.inspection.received_sha256,
                        "model": data["model"].pk,
                        "artifact_format": data["artifact_format"],
                        "input_schema": data["input_schema"],
                        "metrics": data["metrics"],
                        "metadata": data["metadata"],
                        "reference_sample": data["reference_sample"],
                        "filename": getattr(data["artifact"], "name", ""),
                        "tags": data["tags"],
                        "run_id": data["run_id"],
                        "git_commit": data["git_commit"],
                        "source_url": data["source_url"],
                        "training_dataset": data["training_dataset"],
                    },
                )
                return self._render(
                    request,
                    "admin/mlregistry/modelversion/upload_preview.html",
                    title="Check and confirm the upload",
                    model=data["model"],
                    inspection=pending.inspection,
                    confirm_form=PendingUploadForm(initial={"token": pending.token}),
                    filename=getattr(data["artifact"], "name", ""),
                    metrics=data["metrics"],
                    metadata=data["metadata"],
                )
        return self._render(
            request,
            "admin/mlregistry/modelversion/upload.html",
            title="Upload a model version",
            form=form,
            refusal=refusal,
        )

    def _upload_confirm(self, request: HttpRequest) -> HttpResponse:
        form = PendingUploadForm(request.POST)
        upload_url = reverse("admin:mlregistry_modelversion_upload")
        entry = self._pending_take(request, form.data.get("token", "")) if form.is_valid() else None
        if entry is None:
            self.message_user(
                request,
                "This preview is no longer available (already confirmed, cancelled or "
                "expired). Upload the file again.",
                messages.ERROR,
            )
            return HttpResponseRedirect(upload_url)
        try:
            if "cancel" in request.POST:
                self.message_user(request, "Upload cancelled; nothing was registered.")
                return HttpResponseRedirect(upload_url)
            model = RegisteredModel.objects.filter(pk=entry["model"]).first()
            if model is None:
                raise Http404("The model was deleted after the preview.")
            storage = services.get_artifact_storage()
            with storage.open(entry["name"], "rb") as parked:
                version = services.model_version_create(
                    model=model,
                    artifact=parked,
                    actor=request.user,
                    artifact_format=entry["artifact_format"],
                    input_schema=entry["input_schema"],
                    metrics=entry["metrics"],
                    metadata=entry["metadata"],
                    reference_sample=entry["reference_sample"],
                    expected_sha256=entry["sha256"],
                    tags=entry.get("tags"),
                    run_id=entry.get("run_id"),
                    git_commit=entry.get("git_commit"),
                    source_url=entry.get("source_url"),
                    training_dataset=entry.get("training_dataset"),
                )
        except FileNotFoundError:
            self.message_user(
                request, "The previewed file is gone; upload it again.", messages.ERROR
            )
            return HttpResponseRedirect(upload_url)
        except DomainError as exc:
            self.message_user(request, f"Upload refused: {exc.full_message()}", messages.ERROR)
            return HttpResponseRedirect(upload_url)
        finally:
            services.pending_upload_discard(name=entry["name"])
        self.message_user(
            request, f"Registered {version} (sha256 {version.artifact_sha256[:12]}…)."
        )
        return HttpResponseRedirect(
            reverse("admin:mlregistry_modelversion_change", args=[version.pk])
        )

    def _render(self, request, template: str, **context) -> TemplateResponse:
        return TemplateResponse(
            request,
            template,
            {**self.admin_site.each_context(request), "opts": self.model._meta, **context},
        )

    # --- Stage changes: a confirmation page with a comment and what will be archived ---

    def has_promote_permission(self, request) -> bool:
        return request.user.has_perm("mlregistry.promote_modelversion")

    def transition_view(self, request: HttpRequest, object_id: str, stage: str) -> HttpResponse:
        if not self.has_promote_permission(request):
            raise PermissionDenied
        if stage not in STAGE_VERBS:
            raise Http404(f"No stage {stage!r}.")
        # get_object answers None for an id that is not a number (get_object_or_404 raised).
        version = self.get_object(request, object_id)
        if version is None:
            raise Http404("No such model version.")
        change_url = reverse("admin:mlregistry_modelversion_change", args=[version.pk])
        if (refusal := _move_refusal(version, stage)) is not None:
            self.message_user(request, refusal, messages.ERROR)
            return HttpResponseRedirect(change_url)
        production = selectors.production_version_get(model=version.model)
        form = TransitionForm(
            request.POST or None,
            initial={"expected_production": production.pk if production else None},
        )
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                services.model_version_transition(
                    version=version,
                    stage=stage,
                    actor=request.user,
                    comment=data["comment"],
                    archive_previous=not data["keep_previous_in_staging"],
                    expected_production_pk=data["expected_production"],
                )
            except DomainError as exc:
                self.message_user(request, f"Refused: {exc.full_message()}", messages.ERROR)
            else:
                self.message_user(request, f"{version} is now in {stage}.")
                self._aliases_removed_message(request, version)
            return HttpResponseRedirect(change_url)
        replaced = production if stage == Stage.PRODUCTION and production != version else None
        return self._render(
            request,
            "admin/mlregistry/modelversion/transition.html",
            title=f"{STAGE_VERBS[stage]}: {version}",
            version=version,
            stage=stage,
            verb=STAGE_VERBS[stage],
            production=production,
            replaced=replaced,
            leaves_no_production=version == production and stage != Stage.PRODUCTION,
            form=form,
        )

    def _one_or_bulk(self, request, queryset, stage: str):
        selected = list(queryset.select_related("model"))
        offered = []
        for version in selected:
            if (refusal := _move_refusal(version, stage)) is not None:
                self.message_user(request, refusal, messages.WARNING)
            else:
                offered.append(version)
        if len(selected) == 1 and offered:
            version = offered[0]
            return HttpResponseRedirect(
                reverse("admin:mlregistry_modelversion_transition", args=[version.pk, stage])
            )
        for version in offered:
            try:
                services.model_version_transition(version=version, stage=stage, actor=request.user)
            except DomainError as exc:
                self.message_user(request, f"{version}: {exc.full_message()}", messages.ERROR)
            else:
                self.message_user(request, f"{version} is now in {stage}.")
                self._aliases_removed_message(request, version)
        return None

    def _aliases_removed_message(self, request, version: ModelVersion) -> None:
        removed = getattr(version, "aliases_removed", [])
        if removed:
            listed = ", ".join(f"{r.alias} (was on v{r.version})" for r in removed)
            self.message_user(
                request, f"Aliases removed with the archived version: {listed}.", messages.WARNING
            )

    @admin.action(description="Promote to staging", permissions=["promote"])
    def promote_to_staging(self, request, queryset):
        return self._one_or_bulk(request, queryset, Stage.STAGING)

    @admin.action(description="Promote to production", permissions=["promote"])
    def promote_to_production(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(
                request,
                "Choose exactly one version to promote to production: it replaces the "
                "current one after you confirm.",
                messages.ERROR,
            )
            return None
        return self._one_or_bulk(request, queryset, Stage.PRODUCTION)

    @admin.action(description="Archive", permissions=["promote"])
    def archive(self, request, queryset):
        return self._one_or_bulk(request, queryset, Stage.ARCHIVED)

    # --- Aliases: a page that names where the alias points now, then confirms the move ---

    @admin.action(description="Set an alias…", permissions=["promote"])
    def set_alias(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(
                request, "Choose exactly one version to point an alias at.", messages.ERROR
            )
            return None
        version = queryset.get()
        return HttpResponseRedirect(
            reverse("admin:mlregistry_modelversion_alias", args=[version.pk])
        )

    def alias_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """GET: the form, with the model's aliases. POST without `confirm`: the confirmation,
        saying where the alias points now. POST with `confirm`: the move, through the same
        service as the API, refused if the alias moved since the confirmation was shown."""
        if not self.has_promote_permission(request):
            raise PermissionDenied
        version = self.get_object(request, object_id)
        if version is None:
            raise Http404("No such model version.")
        change_url = reverse("admin:mlregistry_modelversion_change", args=[version.pk])
        aliases = list(selectors.model_aliases_list(model=version.model))
        form = AliasSetForm(request.POST or None)
        current = None
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            row = next((a for a in aliases if a.alias == data["alias"]), None)
            current = row.version if row is not None else None
            if "confirm" in request.POST:
                now = str(current.version) if current is not None else ""
                if data["expected"] != now:
                    self.message_user(
                        request,
                        f"Not moved: {data['alias']} now points to "
                        f"{f'v{now}' if now else 'no version'}, not what the confirmation "
                        "showed. Review and confirm again.",
                        messages.ERROR,
                    )
                    return HttpResponseRedirect(request.path)
                try:
                    services.model_alias_set(
                        model=version.model,
                        alias=data["alias"],
                        version=version,
                        actor=request.user,
                        comment=data["comment"],
                    )
                except DomainError as exc:
                    self.message_user(request, f"Refused: {exc.full_message()}", messages.ERROR)
                    return HttpResponseRedirect(request.path)
                before = f"v{current.version}" if current is not None else "nothing"
                self.message_user(
                    request,
                    f"Alias {data['alias']} of {version.model.name} now points to "
                    f"v{version.version} (before: {before}).",
                )
                return HttpResponseRedirect(change_url)
            return self._render(
                request,
                "admin/mlregistry/modelversion/alias.html",
                title=f"Confirm: {version.model.name}@{data['alias']} → v{version.version}",
                version=version,
                aliases=aliases,
                confirming=True,
                alias=data["alias"],
                current=current,
                form=AliasSetForm(
                    initial={
                        **data,
                        "expected": str(current.version) if current is not None else "",
                    }
                ),
            )
        return self._render(
            request,
            "admin/mlregistry/modelversion/alias.html",
            title=f"Set an alias on {version}",
            version=version,
            aliases=aliases,
            confirming=False,
            form=form,
            change_url=change_url,
        )


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


# API tokens and client model restrictions register their admins there.
from mlregistry import admin_access  # noqa: E402, F401
from mlregistry.webhooks import admin as _webhooks_admin  # noqa: E402, F401  (registers them)
