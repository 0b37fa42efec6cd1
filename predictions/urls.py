from django.urls import path

from predictions import drift_views, views


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
            f"{prefix}predict/<str:model_id>",
            views.PredictAliasView.as_view(),
            name="predict-alias",
        ),
    ]


urlpatterns = [
    path("models/<slug:name>/traffic", views.TrafficSplitView.as_view(), name="traffic-split"),
    path(
        "predictions/<str:request_id>/feedback",
        views.FeedbackView.as_view(),
        name="prediction-feedback",
    ),
]

# --- Model-quality loop ---
urlpatterns += [
    path("models/<slug:name>/drift", drift_views.ModelDriftListView.as_view(), name="model-drift"),
]
