from django.urls import path

from mlregistry import training_views, views

urlpatterns = [
    path("audit-events/", views.AuditEventListView.as_view(), name="audit-event-list"),
    path("models/", views.RegisteredModelListView.as_view(), name="model-list"),
    path("models/<slug:name>/", views.RegisteredModelDetailView.as_view(), name="model-detail"),
    path("models/<slug:name>/rollback", views.ModelRollbackView.as_view(), name="model-rollback"),
    path("models/<slug:name>/versions/", views.ModelVersionListView.as_view(), name="version-list"),
    path(
        "models/<slug:name>/versions/<int:version>/",
        views.ModelVersionDetailView.as_view(),
        name="version-detail",
    ),
    path(
        "models/<slug:name>/versions/<int:version>/artifact",
        views.ModelVersionArtifactView.as_view(),
        name="version-artifact",
    ),
    path("models/<slug:name>/aliases", views.ModelAliasListView.as_view(), name="alias-list"),
    path(
        "models/<slug:name>/aliases/<str:alias>",
        views.ModelAliasDetailView.as_view(),
        name="alias-detail",
    ),
    path(
        "models/<slug:name>/versions/<int:version>/transition",
        views.ModelVersionTransitionView.as_view(),
        name="version-transition",
    ),
]

# --- Model-quality loop: datasets and training jobs ---
urlpatterns += [
    path("datasets/", training_views.DatasetListView.as_view(), name="dataset-list"),
    path(
        "models/<slug:name>/training-jobs",
        training_views.TrainingJobListView.as_view(),
        name="training-job-list",
    ),
    path(
        "models/<slug:name>/training-jobs/<int:job_id>",
        training_views.TrainingJobDetailView.as_view(),
        name="training-job-detail",
    ),
]
