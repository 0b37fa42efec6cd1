"""Admin of the model-quality loop: the per-model overview page with its charts, datasets and
training jobs. Every change calls the same service the API calls."""

from __future__ import annotations

import statistics

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from config.errors import DomainError
from mlregistry import admin as registry_admin
from mlregistry.forms import JSONTextField
from mlregistry.models import ModelVersion, RegisteredModel
from mlregistry.reference import model_version_reference_attach
from mlregistry.templatetags.registry_admin import metric
from quality import (
    drift_admin,  # noqa: F401  (registers DriftReport)
    overview,
    training,
)
from quality.estimators import ESTIMATORS
from quality.models import (
    RANDOM_STATE_MAX,
    Dataset,
    FileFormat,
    MissingPolicy,
    TrainingJob,
    TrainingPolicy,
    TrainingStatus,
)


def _form_page(model_admin, request, form, *, title: str, submit: str) -> TemplateResponse:
    context = {
        **model_admin.admin_site.each_context(request),
        "title": title,
        "form": form,
        "opts": model_admin.model._meta,
        "submit_label": submit,
    }
    return TemplateResponse(request, "admin/quality/quality_form.html", context)


# --- Overview page of a registered model ------------------------------------------------------


class ReferenceAttachForm(forms.Form):
    version = forms.ModelChoiceField(queryset=ModelVersion.objects.none())
    reference_sample = JSONTextField(
        expect=list,
        required=True,
        help_text="JSON list of feature rows the version was trained on (bounded and sampled).",
    )

    def __init__(self, *args, model: RegisteredModel, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["version"].queryset = model.versions.order_by("-version")


class RegisteredModelOverviewMixin:
    """Adds /admin/mlregistry/registeredmodel/<pk>/overview/ (URL name
    admin:mlregistry_registeredmodel_overview) and its chart images to the model's admin."""

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path(
                "<int:object_id>/overview/",
                wrap(self.overview_view),
                name="mlregistry_registeredmodel_overview",
            ),
            path(
                "<int:object_id>/overview/<slug:chart>.png",
                wrap(self.overview_chart_view),
                name="mlregistry_registeredmodel_overview_chart",
            ),
            *super().get_urls(),
        ]

    def _overview_model(self, request: HttpRequest, object_id: int) -> RegisteredModel:
        model = self.get_object(request, str(object_id))
        if model is None:
            raise Http404("No such registered model.")
        if not self.has_view_permission(request, model):
            raise PermissionDenied
        return model

    def overview_view(self, request: HttpRequest, object_id: int):
        from quality.drift import drift_check, drift_reports_list

        model = self._overview_model(request, object_id)
        here = reverse("admin:mlregistry_registeredmodel_overview", args=[model.pk])
        attach_form = ReferenceAttachForm(model=model)
        can_check = request.user.has_perm("quality.add_driftreport")
        can_attach = request.user.has_perm("mlregistry.change_modelversion")
        if request.method == "POST":
            action = request.POST.get("action")
            if action == "drift_check":
                if not can_check:
                    raise PermissionDenied
                reports = drift_check(model=model)
                summary = ", ".join(f"v{r.version.version}: {r.status}" for r in reports)
                self.message_user(request, f"Drift checked: {summary or 'no production version'}.")
                return HttpResponseRedirect(here)
            if action == "attach_reference":
                if not can_attach:
                    raise PermissionDenied
                attach_form = ReferenceAttachForm(request.POST, model=model)
                if attach_form.is_valid():
                    version = attach_form.cleaned_data["version"]
                    try:
                        model_version_reference_attach(
                            version=version,
                            reference_sample=attach_form.cleaned_data["reference_sample"],
                            actor=request.user,
                        )
                    except DomainError as exc:
                        attach_form.add_error(None, exc.full_message())
                    else:
                        self.message_user(
                            request,
                            f"{version}: reference sample of {len(version.reference_sample)} rows.",
                        )
                        return HttpResponseRedirect(here)
        reports = list(drift_reports_list(model=model)[:10])
        charts = [
            {
                "slug": chart.slug,
                "title": chart.title,
                "alt": f"{model.name}: {chart.alt}",
                "url": reverse(
                    "admin:mlregistry_registeredmodel_overview_chart", args=[model.pk, chart.slug]
                ),
            }
            for chart in overview.CHARTS.values()
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": f"Overview of {model.name}",
            "opts": self.model._meta,
            "original": model,
            "versions": model.versions.order_by("-version"),
            "production": overview.production_version(model=model),
            "charts": charts,
            "latest_drift": reports[0] if reports else None,
            "drift_reports": reports,
            "jobs": model.training_jobs.select_related("dataset", "candidate_version")[:10],
            "attach_form": attach_form,
            "can_check": can_check,
            "can_attach": can_attach,
        }
        return TemplateResponse(request, "admin/quality/registeredmodel/overview.html", context)

    def overview_chart_view(self, request: HttpRequest, object_id: int, chart: str):
        model = self._overview_model(request, object_id)
        if chart not in overview.CHARTS:
            raise Http404("No such chart.")
        response = HttpResponse(
            overview.chart_png(model=model, chart=chart), content_type="image/png"
        )
        response["Cache-Control"] = "private, max-age=60"
        return response


# --- Datasets ---------------------------------------------------------------------------------


def _connection_choices():
    return [("", "—")] + [(name, name) for name in sorted(settings.DATASET_DATABASES)]


# The overview page hangs off the registry's own model admin, extended here and registered in
# its place: the registry does not import this app (quality comes after mlregistry in
# INSTALLED_APPS, so the admin autodiscovery has registered the registry's admin already).
admin.site.unregister(RegisteredModel)


@admin.register(RegisteredModel)
class RegisteredModelAdmin(RegisteredModelOverviewMixin, registry_admin.RegisteredModelAdmin):
    pass


class DatasetCreateForm(forms.Form):
    name = forms.SlugField(max_length=100)
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    target_column = forms.CharField(max_length=200)
    feature_columns = forms.CharField(
        help_text="Comma-separated column names, in the order the model takes them."
    )
    missing_policy = forms.ChoiceField(choices=MissingPolicy.choices, initial=MissingPolicy.DROP)
    file = forms.FileField(required=False, help_text="A CSV or Parquet file, or…")
    file_format = forms.ChoiceField(
        choices=[("", "from the file name"), *FileFormat.choices], required=False
    )
    sql_connection = forms.ChoiceField(choices=(), required=False)
    sql_query = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "cols": 80}),
        help_text="…one SELECT statement, run read-only against the connection.",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["sql_connection"].choices = _connection_choices()

    def clean_feature_columns(self) -> list[str]:
        return [c.strip() for c in self.cleaned_data["feature_columns"].split(",") if c.strip()]


@admin.register(Dataset)
class DatasetAdmin(registry_admin.DeletesThroughServices, admin.ModelAdmin):
    list_display = ("name", "source", "target_column", "missing_policy", "created_by", "created_at")
    list_filter = ("source",)
    search_fields = ("name", "description")
    readonly_fields = (
        "name",
        "description",
        "source",
        "file",
        "file_format",
        "file_sha256",
        "file_size",
        "sql_connection",
        "sql_query",
        "target_column",
        "feature_columns",
        "missing_policy",
        "created_by",
        "created_at",
    )

    actions = ["delete_selected"]

    def get_queryset(self, request):
        return super().get_queryset(request).defer("file_block_sha256")

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # jobs record what they trained on: a dataset does not change under them

    def _delete_with_service(self, request: HttpRequest, obj: Dataset) -> None:
        training.dataset_delete(dataset=obj, actor=request.user)

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = DatasetCreateForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                dataset = training.dataset_create(
                    actor=request.user,
                    name=data["name"],
                    description=data["description"],
                    target_column=data["target_column"],
                    feature_columns=data["feature_columns"],
                    missing_policy=data["missing_policy"],
                    file=data["file"],
                    file_format=data["file_format"] or None,
                    sql_connection=data["sql_connection"],
                    sql_query=data["sql_query"],
                )
            except DomainError as exc:
                form.add_error(None, exc.full_message())
            else:
                self.message_user(request, f"Dataset {dataset.name} created.")
                return HttpResponseRedirect(
                    reverse("admin:quality_dataset_change", args=[dataset.pk])
                )
        return _form_page(self, request, form, title="Add a dataset", submit="Create dataset")


# --- Training jobs ----------------------------------------------------------------------------


class TrainingJobCreateForm(forms.Form):
    model = forms.ModelChoiceField(queryset=RegisteredModel.objects.all())
    dataset = forms.ModelChoiceField(queryset=Dataset.objects.all())
    estimator = forms.ChoiceField(
        choices=[("", "clone the production version's estimator")]
        + [(name, name) for name in ESTIMATORS],
        required=False,
    )
    estimator_params = JSONTextField(expect=dict, help_text='e.g. {"C": 0.5, "max_iter": 500}')
    policy = forms.ChoiceField(choices=TrainingPolicy.choices, initial=TrainingPolicy.STAGE_ONLY)
    metric = forms.CharField(
        required=False, help_text="Empty: accuracy for classifiers, r2 for regressors."
    )
    margin = forms.FloatField(initial=0.0, min_value=0.0)
    cv_folds = forms.IntegerField(initial=5, min_value=2, max_value=20)
    holdout_fraction = forms.FloatField(initial=0.2, min_value=0.05, max_value=0.5)
    random_state = forms.IntegerField(initial=0, min_value=0, max_value=RANDOM_STATE_MAX)
    recurring = forms.BooleanField(
        required=False, help_text="Run again with these settings on the retraining schedule."
    )


@admin.register(TrainingJob)
class TrainingJobAdmin(registry_admin.DeletesThroughServices, admin.ModelAdmin):
    list_display = (
        "id",
        "model",
        "dataset",
        "estimator_name",
        "policy",
        "status",
        "decision",
        "candidate_score_display",
        "champion_score_display",
        "created_at",
    )
    list_filter = ("status", "decision", "policy", "model")
    list_select_related = ("model", "dataset")
    search_fields = ("model__name", "dataset__name", "error")
    fieldsets = (
        (
            "Result",
            {
                "fields": (
                    "status",
                    "decision",
                    "comparison",
                    "cv_table",
                    "scores_chart",
                    "error_type",
                    "error",
                )
            },
        ),
        (
            "Settings",
            {
                "fields": (
                    "model",
                    "dataset",
                    "estimator",
                    "estimator_params",
                    "policy",
                    "metric",
                    "margin",
                    "cv_folds",
                    "holdout_fraction",
                    "random_state",
                    "recurring",
                    "template",
                )
            },
        ),
        (
            "Run",
            {
                "fields": (
                    "champion_version",
                    "candidate_version",
                    "details",
                    "attempts",
                    "created_by",
                    "created_at",
                    "started_at",
                    "finished_at",
                )
            },
        ),
    )
    readonly_fields = tuple(f for _, opts in fieldsets for f in opts["fields"])
    actions = ["run_again", "delete_selected"]

    @admin.display(description="candidate score", ordering="candidate_score")
    def candidate_score_display(self, obj) -> str:
        return "—" if obj.candidate_score is None else metric(obj.candidate_score)

    @admin.display(description="champion score", ordering="champion_score")
    def champion_score_display(self, obj) -> str:
        return "—" if obj.champion_score is None else metric(obj.champion_score)

    @admin.display(description="estimator")
    def estimator_name(self, obj) -> str:
        return obj.estimator or "clone of production"

    @admin.display(description="champion / challenger")
    def comparison(self, obj) -> str:
        if obj.candidate_score is None:
            return "—"
        rows = [
            ("candidate", obj.candidate_version, obj.candidate_score),
            ("champion", obj.champion_version, obj.champion_score),
        ]
        body = format_html_join(
            "",
            "<tr><th scope='row'>{}</th><td>{}</td><td>{}</td></tr>",
            (
                (label, f"v{v.version}" if v else "—", "—" if s is None else metric(s))
                for label, v, s in rows
            ),
        )
        return format_html(
            "<table><thead><tr><th></th><th>version</th><th>{} (holdout)</th></tr></thead>"
            "<tbody>{}</tbody></table><p>margin {} · {}</p>",
            obj.metric,
            body,
            metric(obj.margin),
            obj.details.get("decision_reason", ""),
        )

    @admin.display(description="cross-validation")
    def cv_table(self, obj) -> str:
        if not obj.cv_scores:
            return "—"
        cells = format_html_join("", "<td>{}</td>", ((metric(s),) for s in obj.cv_scores))
        heads = format_html_join(
            "", "<th scope='col'>fold {}</th>", ((i + 1,) for i in range(len(obj.cv_scores)))
        )
        return format_html(
            "<table><thead><tr>{}<th>mean ± std</th></tr></thead>"
            "<tbody><tr>{}<td>{} ± {}</td></tr></tbody></table>",
            heads,
            cells,
            metric(statistics.fmean(obj.cv_scores)),
            metric(statistics.pstdev(obj.cv_scores)),
        )

    @admin.display(description="scores chart")
    def scores_chart(self, obj) -> str:
        if not obj.cv_scores:
            return "—"
        return format_html(
            '<img src="{}" alt="{}" width="700" height="280">',
            reverse("admin:quality_trainingjob_scores", args=[obj.pk]),
            f"Training job #{obj.pk}: {obj.metric} of each cross-validation fold, and of the "
            "candidate and the champion on the same holdout.",
        )

    def get_urls(self):
        chart = path(
            "<int:object_id>/scores.png",
            self.admin_site.admin_view(self.scores_view),
            name="quality_trainingjob_scores",
        )
        return [chart, *super().get_urls()]

    def scores_view(self, request: HttpRequest, object_id: int):
        job = self.get_object(request, str(object_id))
        if job is None:
            raise Http404("No such training job.")
        if not self.has_view_permission(request, job):
            raise PermissionDenied
        return HttpResponse(overview.training_job_png(job=job), content_type="image/png")

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # a job's record is its audit trail

    def _delete_with_service(self, request: HttpRequest, obj: TrainingJob) -> None:
        training.training_job_delete(job=obj, actor=request.user)

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = TrainingJobCreateForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                job = training.training_job_create(
                    actor=request.user,
                    model=data["model"],
                    dataset=data["dataset"],
                    estimator=data["estimator"],
                    estimator_params=data["estimator_params"],
                    policy=data["policy"],
                    metric=data["metric"],
                    margin=data["margin"],
                    cv_folds=data["cv_folds"],
                    holdout_fraction=data["holdout_fraction"],
                    random_state=data["random_state"],
                    recurring=data["recurring"],
                )
            except DomainError as exc:
                form.add_error(None, exc.full_message())
            else:
                self.message_user(request, f"Training job #{job.pk} queued.")
                return HttpResponseRedirect(
                    reverse("admin:quality_trainingjob_change", args=[job.pk])
                )
        return _form_page(self, request, form, title="Start a training job", submit="Start")

    @admin.action(description="Send to a worker again (queued or stuck jobs)", permissions=["add"])
    def run_again(self, request, queryset):
        for job in queryset:
            if job.status in (TrainingStatus.SUCCEEDED, TrainingStatus.FAILED):
                self.message_user(request, f"{job}: already {job.status}.", messages.WARNING)
                continue
            # A stuck job may still be running somewhere: a failed send leaves it as it is.
            sending = training.training_job_enqueue(job=job, fail_unsent=False)
            if sending.failure is not None:
                self.message_user(
                    request,
                    f"{job}: not sent, the broker did not take it ({sending.failure}); "
                    "try again once it is back.",
                    messages.ERROR,
                )
            else:
                self.message_user(request, f"{job}: sent to a worker.")
