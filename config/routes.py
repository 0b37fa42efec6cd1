"""Routes an app lists at the top of the URLconf, ahead of the includes.

URL resolution tries each pattern in turn and every include is a resolver level of its own, so
the hottest routes (predict) are listed first and flat. The app that owns them registers them
from its AppConfig.ready(); config.urls reads this list and so needs no import of the app.
"""

from __future__ import annotations

from django.urls import URLPattern

TOP_LEVEL_ROUTES: list[URLPattern] = []


def top_level_routes_register(patterns: list[URLPattern]) -> None:
    """Adds `patterns` to the top of the URLconf, in order (call from AppConfig.ready())."""
    TOP_LEVEL_ROUTES.extend(patterns)
