import pytest

from config.metrics import worker_heartbeat_record

pytestmark = pytest.mark.django_db


def test_metrics_are_open_to_localhost_by_default(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert b"django_http_requests_total_by_view_transport_method" in response.content


def test_metrics_refuse_other_addresses_in_the_error_shape(client):
    response = client.get("/metrics", REMOTE_ADDR="203.0.113.5")
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_denied"


def test_metrics_allow_a_configured_network(client, settings):
    settings.METRICS_ALLOWED_IPS = ["10.20.0.0/16", "not-an-address"]
    assert client.get("/metrics", REMOTE_ADDR="10.20.3.4").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403


def test_metrics_accept_the_bearer_token_from_anywhere(client, settings):
    settings.METRICS_TOKEN = "s3cret-scrape-token"
    far = "198.51.100.7"
    ok = client.get("/metrics", REMOTE_ADDR=far, HTTP_AUTHORIZATION="Bearer s3cret-scrape-token")
    wrong = client.get("/metrics", REMOTE_ADDR=far, HTTP_AUTHORIZATION="Bearer nope")
    assert (ok.status_code, wrong.status_code) == (200, 403)


def test_a_forwarded_header_does_not_open_metrics(client):
    response = client.get("/metrics", REMOTE_ADDR="203.0.113.5", HTTP_X_FORWARDED_FOR="127.0.0.1")
    assert response.status_code == 403


def test_star_opens_metrics_to_everyone(client, settings):
    settings.METRICS_ALLOWED_IPS = ["*"]
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.5").status_code == 200


def test_worker_heartbeat_is_exposed_at_scrape_time(client):
    before = client.get("/metrics").content.decode()
    assert "mlregistry_worker_heartbeat_timestamp_seconds 0.0" in before
    worker_heartbeat_record(now=1_700_000_000.0)
    after = client.get("/metrics").content.decode()
    assert "mlregistry_worker_heartbeat_timestamp_seconds 1.7e+09" in after


def test_heartbeat_task_runs_through_celery(settings):
    from django.core.cache import cache

    from config.metrics import WORKER_HEARTBEAT_CACHE_KEY
    from config.tasks import worker_heartbeat_task

    worker_heartbeat_task.apply()
    assert cache.get(WORKER_HEARTBEAT_CACHE_KEY) > 1_700_000_000


def test_multiprocess_mode_aggregates_the_processes_files(client, tmp_path, monkeypatch):
    # Gunicorn's processes each write into PROMETHEUS_MULTIPROC_DIR; any one answers for all.
    from prometheus_client import CollectorRegistry, Counter, values

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    values.ValueClass = values.get_value_class()
    try:
        counter = Counter(
            "mlregistry_test_multiprocess_total", "test", registry=CollectorRegistry()
        )
        counter.inc(3)
        body = client.get("/metrics").content.decode()
    finally:
        monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
        values.ValueClass = values.get_value_class()
    assert "mlregistry_test_multiprocess_total 3.0" in body
    assert "mlregistry_worker_heartbeat_timestamp_seconds" in body


def test_schedule_runs_the_heartbeat_every_minute():
    from config.schedules import DEFAULT_SCHEDULES

    (entry,) = [s for s in DEFAULT_SCHEDULES if s["task"] == "config.tasks.worker_heartbeat_task"]
    assert entry["crontab"] == {"minute": "*"} and entry["enabled"]


def test_an_unparsable_client_address_is_refused(client):
    assert client.get("/metrics", REMOTE_ADDR="not-an-ip").status_code == 403


def test_an_unreachable_cache_reports_the_heartbeat_as_never_seen(client, settings):
    # Fault injected on purpose: the cache points at a port nothing listens on.
    settings.CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.1, "SOCKET_TIMEOUT": 0.1},
        }
    }
    body = client.get("/metrics").content.decode()
    assert "mlregistry_worker_heartbeat_timestamp_seconds 0.0" in body
