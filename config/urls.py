from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from config import health
from config.admin_login import ThrottledAdminLoginForm
from config.metrics import metrics_view
from predictions.urls import predict_routes

# The predict routes come first and at the top level (predictions.urls.predict_routes): URL
# resolution tries each pattern in turn, and every include is a level of its own.
api_v1 = [
    path("", include("predictions.urls")),
    path("", include("mlregistry.urls")),
    path("", include("backups.urls")),
]

urlpatterns = [
    *predict_routes("api/v1/"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("health", health.live, name="health"),
    path("health/ready", health.ready, name="health-ready"),
    path("health/deep", health.deep, name="health-deep"),
    # /metrics restricted to METRICS_ALLOWED_IPS or METRICS_TOKEN
    path("metrics", metrics_view, name="prometheus-django-metrics"),
]

# Failed admin logins are throttled (config/admin_login.py)
admin.site.login_form = ThrottledAdminLoginForm

handler400 = "config.errors.handler400"
handler403 = "config.errors.handler403"
handler404 = "config.errors.handler404"
handler500 = "config.errors.handler500"
