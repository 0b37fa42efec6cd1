import json
import logging

import pytest

from config.logging import RequestIdFilter

pytestmark = pytest.mark.django_db


def _request_lines(caplog):
    return [r for r in caplog.records if r.name == "mlregistry.requests"]


def test_one_line_per_request_with_caller_status_latency_and_id(client_api, client_user, caplog):
    caplog.set_level(logging.INFO, logger="mlregistry.requests")
    response = client_api.get("/api/v1/models/", HTTP_X_REQUEST_ID="req-123")
    (record,) = _request_lines(caplog)
    assert record.method == "GET" and record.path == "/api/v1/models/"
    assert record.status == response.status_code == 200
    assert record.user == client_user.username and record.client == "127.0.0.1"
    assert record.latency_ms >= 0
    assert RequestIdFilter().filter(record) and record.request_id == "req-123"


def test_anonymous_and_failed_requests_are_logged_too(anon_api, caplog):
    caplog.set_level(logging.INFO, logger="mlregistry.requests")
    anon_api.get("/api/v1/models/")
    (record,) = _request_lines(caplog)
    assert record.status == 401 and record.user == "anonymous"


def test_probes_log_at_debug_only(anon_api, caplog):
    caplog.set_level(logging.INFO, logger="mlregistry.requests")
    anon_api.get("/health")
    assert _request_lines(caplog) == []


def test_json_format_renders_every_field_on_one_line(client_api, caplog):
    from pythonjsonlogger.json import JsonFormatter

    caplog.set_level(logging.INFO, logger="mlregistry.requests")
    client_api.get("/api/v1/models/", HTTP_X_REQUEST_ID="abc")
    (record,) = _request_lines(caplog)
    RequestIdFilter().filter(record)
    line = JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s").format(
        record
    )
    data = json.loads(line)
    assert "\n" not in line
    assert {"method", "path", "status", "latency_ms", "user", "client", "request_id"} <= set(data)
    assert data["request_id"] == "abc"


def test_log_format_text_is_chosen_by_environment(monkeypatch):
    import subprocess
    import sys

    monkeypatch.setenv("LOG_FORMAT", "text")
    monkeypatch.setenv("LOG_LEVEL", "warning")
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.LOGGING['handlers']['stdout']['formatter'], s.LOGGING['root']['level'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["text", "WARNING"]
