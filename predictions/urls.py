from django.urls import path

from config import health
from predictions import batch_views, views
from predictions.protocols import mlflow, v2


def predict_routes(prefix: str) -> list:
    """The predict routes, for config/urls.py to list first at the top level: each include a
    path goes through is a resolver level of its own, and the nested lookup cost ~25 us of a
    predict request against ~6 us for a top-level pattern."""
    return [
        path(f"{prefix}models/<slug:name>/predict", views.PredictView.as_view(), name="predict"),
        path(
            f"{prefix}models/<slug:name>/versions/<int:version>/predict",
            views.PredictVersionView.as_view(),
            name="predict-version",
        ),
        path(
            f"{prefix}models/<slug:name>/aliases/<str:alias>/predict",
            views.PredictByAliasView.as_view(),
            name="predict-alias-name",
        ),
        path(
            f"{prefix}predict/<str:model_id>",
            views.PredictAliasView.as_view(),
            name="predict-alias",
        ),
        # MLflow's scoring protocol (predictions/protocols/mlflow.py)
        path(
            f"{prefix}models/<slug:name>/invocations",
            mlflow.InvocationsView.as_view(),
            name="mlflow-invocations",
        ),
        path(
            f"{prefix}models/<slug:name>/versions/<int:version>/invocations",
            mlflow.InvocationsVersionView.as_view(),
            name="mlflow-invocations-version",
        ),
        path(
            f"{prefix}models/<slug:name>/aliases/<str:alias>/invocations",
            mlflow.InvocationsAliasView.as_view(),
            name="mlflow-invocations-alias",
        ),
    ]


def v2_routes() -> list:
    """The Open Inference Protocol's routes, under /v2/ as it defines (config/urls.py), infer
    first for the same reason as predict_routes."""
    model = "v2/models/<slug:name>"
    version = f"{model}/versions/<int:version>"
    return [
        path(f"{model}/infer", v2.InferView.as_view(), name="v2-infer"),
        path(f"{version}/infer", v2.InferVersionView.as_view(), name="v2-infer-version"),
        path("v2/health/live", health.live, name="v2-health-live"),
        path("v2/health/ready", health.ready, name="v2-health-ready"),
        path("v2", v2.ServerMetadataView.as_view(), name="v2-server-metadata"),
        path(model, v2.ModelMetadataView.as_view(), name="v2-model-metadata"),
        path(version, v2.ModelMetadataView.as_view(), name="v2-model-version-metadata"),
        path(f"{model}/ready", v2.ModelReadyView.as_view(), name="v2-model-ready"),
        path(f"{version}/ready", v2.ModelReadyView.as_view(), name="v2-model-version-ready"),
    ]


urlpatterns = [
    path("models/<slug:name>/traffic", views.TrafficSplitView.as_view(), name="traffic-split"),
    path(
        "predictions/<str:request_id>/feedback",
        views.FeedbackView.as_view(),
        name="prediction-feedback",
    ),
]

# --- Batch scoring jobs ---
urlpatterns += [
    path(
        "models/<slug:name>/batch-jobs",
        batch_views.BatchJobListView.as_view(),
        name="batch-jobs",
    ),
    path(
        "models/<slug:name>/batch-jobs/<int:job_id>",
        batch_views.BatchJobDetailView.as_view(),
        name="batch-job",
    ),
    path(
        "models/<slug:name>/batch-jobs/<int:job_id>/cancel",
        batch_views.BatchJobCancelView.as_view(),
        name="batch-job-cancel",
    ),
    path(
        "models/<slug:name>/batch-jobs/<int:job_id>/resume",
        batch_views.BatchJobResumeView.as_view(),
        name="batch-job-resume",
    ),
    path(
        "models/<slug:name>/batch-jobs/<int:job_id>/output",
        batch_views.BatchJobOutputFileView.as_view(),
        name="batch-job-output",
    ),
    path(
        "models/<slug:name>/batch-jobs/<int:job_id>/errors",
        batch_views.BatchJobErrorsFileView.as_view(),
        name="batch-job-errors",
    ),
]
