from django.urls import path

from predictions import drift_views

urlpatterns: list = []

# --- Model-quality loop (issue 5) ---
urlpatterns += [
    path("models/<slug:name>/drift", drift_views.ModelDriftListView.as_view(), name="model-drift"),
]
