from django.urls import path

from quality import drift_views, views

urlpatterns = [
    path("datasets/", views.DatasetListView.as_view(), name="dataset-list"),
    path(
        "models/<slug:name>/training-jobs",
        views.TrainingJobListView.as_view(),
        name="training-job-list",
    ),
    path(
        "models/<slug:name>/training-jobs/<int:job_id>",
        views.TrainingJobDetailView.as_view(),
        name="training-job-detail",
    ),
    path("models/<slug:name>/drift", drift_views.ModelDriftListView.as_view(), name="model-drift"),
]
