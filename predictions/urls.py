from django.urls import path

from predictions import drift_views, views

urlpatterns = [
    path("models/<slug:name>/predict", views.PredictView.as_view(), name="predict"),
    path(
        "models/<slug:name>/versions/<int:version>/predict",
        views.PredictVersionView.as_view(),
        name="predict-version",
    ),
    path("predict/<str:model_id>", views.PredictAliasView.as_view(), name="predict-alias"),
    path("models/<slug:name>/traffic", views.TrafficSplitView.as_view(), name="traffic-split"),
    path(
        "predictions/<str:request_id>/feedback",
        views.FeedbackView.as_view(),
        name="prediction-feedback",
    ),
]

# --- Model-quality loop (issue 5) ---
urlpatterns += [
    path("models/<slug:name>/drift", drift_views.ModelDriftListView.as_view(), name="model-drift"),
]
