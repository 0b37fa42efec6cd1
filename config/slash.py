"""API paths answered with or without their trailing slash.

The API's routes are spelt as the contract spells them: the registry's collections end in a
slash (`models/`, `versions/`, `datasets/`, `webhooks/`), the routes added beside them do not
(`aliases`, `batch-jobs`, `predict`). A client that guesses wrong would meet Django's
APPEND_SLASH, a 301 to the slashed path; HTTP clients follow a 301 by sending the POST again as
a GET (RFC 9110 section 15.4.2 allows it; requests and browsers do it), so the write is lost and
the answer is a listing, or a 404 where the slash had to go. Served here instead, the request
keeps its method and body, and the schema keeps one spelling per route.

Listed last in the URLconf, this view sees only the paths no route matched, so the routes that
did match, predict's first, pay nothing for it.
"""

from __future__ import annotations

from django.middleware.csrf import CsrfViewMiddleware
from django.urls import Resolver404, resolve
from django.views.decorators.csrf import csrf_exempt

from config.errors import handler404


@csrf_exempt
def either_slash(request, *args, **kwargs):
    """Answers an unmatched /api/ path by the route its trailing slash toggled names, if any:
    that route's view runs with the request as sent (method, body, query string), and its
    path and resolver_match become that route's, so pagination links, logs and metrics name the
    canonical spelling. A path neither spelling matches is the usual JSON 404."""
    path = request.path_info
    canonical = path[:-1] if path.endswith("/") else f"{path}/"
    try:
        match = resolve(canonical, getattr(request, "urlconf", None))
    except Resolver404:
        return handler404(request)
    if getattr(match.func, "either_slash", False):
        return handler404(request)
    # The CSRF check ran for this view, which is exempt; the route's own view may not be.
    refused = CsrfViewMiddleware(lambda r: None).process_view(
        request, match.func, match.args, match.kwargs
    )
    if refused is not None:
        return refused
    request.path = request.path[: len(request.path) - len(path)] + canonical
    request.path_info = canonical
    request.resolver_match = match
    return match.func(request, *match.args, **match.kwargs)


either_slash.either_slash = True  # type: ignore[attr-defined]
