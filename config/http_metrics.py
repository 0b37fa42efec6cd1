"""django-prometheus' HTTP metrics, trimmed to the three the dashboard and alerts read.

Its middleware pair updates about a dozen series per request (by method, by transport, body
sizes, charset, latency twice, ...), each a locked write to a memory-mapped file in
multiprocess mode: ~0.2 ms of a ~1.7 ms predict request. These keep exactly
`django_http_requests_total_by_view_transport_method` (its own process_view),
`django_http_responses_total_by_status_view_method` and
`django_http_requests_latency_seconds_by_view_method` (plus exceptions by type and view),
with django-prometheus' names and labels, so deploy/alerts.yml and the Grafana dashboard are
unchanged.
"""

from __future__ import annotations

from typing import Any

from django_prometheus.middleware import PrometheusAfterMiddleware as _After
from django_prometheus.utils import Time, TimeSince

_children: dict[tuple[Any, ...], Any] = {}


def labelled(metric: Any, **labels: str) -> Any:
    """`metric.labels(**labels)`, remembered. labels() checks its arguments and takes a lock on
    every call (~3 us in place), and a predict request updates seven series. A child lives as
    long as its metric: nothing here removes one, and label values (models, versions, views,
    statuses) are as bounded as the series themselves."""
    key = (metric, *labels.items())
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(**labels)
    return child


class PrometheusAfterMiddleware(_After):
    def process_request(self, request):
        request.prometheus_after_middleware_event = Time()

    def process_template_response(self, request, response):
        return response

    def label_metric(self, metric, request, response=None, **labels):
        # Its process_view counts requests by view through here: children remembered.
        return labelled(metric, **labels) if labels else metric

    def process_response(self, request, response):
        method = self._method(request)
        name = self._get_view_name(request)
        labelled(
            self.metrics.responses_by_status_view_method,
            status=str(response.status_code),
            view=name,
            method=method,
        ).inc()
        started = getattr(request, "prometheus_after_middleware_event", None)
        if started is not None:
            labelled(
                self.metrics.requests_latency_by_view_method, view=name, method=method
            ).observe(TimeSince(started))
        return response
