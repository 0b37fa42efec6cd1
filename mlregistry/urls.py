from django.urls import path

from mlregistry import views
from mlregistry.webhooks import api as webhooks_api

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

urlpatterns += webhooks_api.urlpatterns
