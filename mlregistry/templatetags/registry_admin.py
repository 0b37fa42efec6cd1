"""Template tags for the registry's admin pages, and the display helpers the admin classes share."""

import json
import math
from typing import Any

from django import template
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

register = template.Library()

METRIC_DIGITS = 4


@register.filter
def metric(value: Any) -> SafeString | Any:
    """A metric value to 4 significant digits (0.9778), the full value on hover (title)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    if isinstance(value, float) and math.isfinite(value):
        shown = f"{value:.{METRIC_DIGITS}g}"
    else:
        shown = str(value)
    return format_html('<span class="mlr-metric" title="{}">{}</span>', repr(value), shown)


def metrics_html(metrics: dict[str, Any] | None, *, limit: int | None = None) -> SafeString | str:
    """`name=value` pairs with values through `metric`; "—" when there are none."""
    items = list((metrics or {}).items())
    if not items:
        return "—"
    shown = items[:limit] if limit else items
    html = format_html_join(", ", "{}={}", ((name, metric(value)) for name, value in shown))
    if limit and len(items) > limit:
        html = format_html("{}, …", html)
    return html


def json_html(data: Any) -> SafeString:
    """A JSON value as an indented, wrapped block (read-only fields: params, schema, metadata)."""
    return format_html(
        '<pre class="mlr-json">{}</pre>', json.dumps(data, indent=2, ensure_ascii=False)
    )
