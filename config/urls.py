from django.contrib import admin
from django.http import HttpResponsePermanentRedirect
from django.shortcuts import render
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from config import health
from config.admin_login import ThrottledAdminLoginForm
from config.errors import get_only
from config.metrics import metrics_view
from config.routes import TOP_LEVEL_ROUTES
from config.slash import either_slash

# The predict routes come first and at the top level (config.routes, filled by the predictions
# app): URL resolution tries each pattern in turn, and every include is a level of its own.
api_v1 = [
    path("", include("predictions.urls")),
    path("", include("mlregistry.urls")),
    path("", include("quality.urls")),
    path("", include("backups.urls")),
]


@get_only
def landing(request):
    """`/`: what this is, where the admin, API docs, health and metrics are, the first commands."""
    return render(request, "landing.html", {"base": request.build_absolute_uri("/").rstrip("/")})


def moved_admin_redirect(request, model: str, rest: str):
    """Admin pages of models that moved to the quality app: their old addresses (bookmarks,
    links in old messages) lead to the new ones, query string kept."""
    query = request.META.get("QUERY_STRING", "")
    return HttpResponsePermanentRedirect(
        f"/admin/quality/{model}/{rest}" + (f"?{query}" if query else "")
    )


urlpatterns = [
    path("", landing, name="landing"),
    *TOP_LEVEL_ROUTES,
    # Admin pages of the models the quality app took over from mlregistry and predictions.
    re_path(
        r"^admin/mlregistry/(?P<model>dataset|trainingjob)/(?P<rest>.*)$", moved_admin_redirect
    ),
    re_path(r"^admin/predictions/(?P<model>driftreport)/(?P<rest>.*)$", moved_admin_redirect),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("health", health.live, name="health"),
    path("health/ready", health.ready, name="health-ready"),
    path("health/deep", health.deep, name="health-deep"),
    # /metrics restricted to METRICS_ALLOWED_IPS or METRICS_TOKEN
    path("metrics", metrics_view, name="prometheus-django-metrics"),
    # Last: only what no route matched (config/slash.py).
    re_path(r"^api/", either_slash),
]

# Failed admin logins are throttled (config/admin_login.py)
admin.site.login_form = ThrottledAdminLoginForm
admin.site.site_header = admin.site.site_title = "Model Registry"
# The admin's "View site" goes to the landing page (links to the API docs, health, metrics).
admin.site.site_url = "/"
# The navigation sidebar takes a quarter of a 1280 px window from every list; the breadcrumbs
# and the dashboard's app list already lead everywhere.
admin.site.enable_nav_sidebar = False

handler400 = "config.errors.handler400"
handler403 = "config.errors.handler403"
handler404 = "config.errors.handler404"
handler500 = "config.errors.handler500"
