"""django-prometheus' HTTP series, trimmed to the ones the dashboard and alerts read
(config/http_metrics.py): those still move with every predict request, the rest stay still."""

import re

import pytest

from tests.predictions.conftest import IRIS_ROW

pytestmark = pytest.mark.django_db


def _sample(body: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in body.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _metrics(client) -> str:
    return client.get("/metrics").content.decode()


def test_predict_requests_move_the_series_the_dashboard_reads(client, client_api, iris_production):
    before = _metrics(client)
    for _ in range(3):
        ok = client_api.post("/api/v1/models/iris/predict", {"features": IRIS_ROW}, format="json")
        assert ok.status_code == 200
    bad = client_api.post("/api/v1/models/iris/predict", {"features": {}}, format="json")
    assert bad.status_code == 400
    after = _metrics(client)

    def moved(name, **labels):
        return _sample(after, name, **labels) - _sample(before, name, **labels)

    ok_responses = "django_http_responses_total_by_status_view_method_total"
    assert moved(ok_responses, status="200", view="predict", method="POST") == 3
    assert moved(ok_responses, status="400", view="predict", method="POST") == 1
    latency = "django_http_requests_latency_seconds_by_view_method_count"
    assert moved(latency, view="predict", method="POST") == 4
    by_view = "django_http_requests_total_by_view_transport_method_total"
    assert moved(by_view, view="predict", method="POST") == 4
    # The series nobody reads are no longer written on every request.
    assert moved("django_http_requests_total_by_method_total", method="POST") == 0
    assert moved("django_http_responses_total_by_charset_total") == 0
