import pytest

from config.throttling import parse_rate, request_scope

pytestmark = pytest.mark.django_db


@pytest.fixture
def rates(settings, throttle_window_room):
    def apply(**overrides):
        rates = {
            "predict": None,
            "predict_anon": None,
            "write": None,
            "write_anon": None,
            "read": None,
            "read_anon": None,
        }
        rates.update(overrides)
        settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}
        throttle_window_room(3600)

    return apply


class _Request:
    def __init__(self, path, method="GET"):
        self.path, self.method = path, method


class _View:
    pass


@pytest.mark.parametrize(
    ("path", "method", "scope"),
    [
        ("/api/v1/models/iris/predict", "POST", "predict"),
        ("/api/v1/models/iris/versions/2/predict", "POST", "predict"),
        ("/api/v1/predict/3", "POST", "predict"),
        ("/api/v1/predictions/abc/feedback", "POST", "predict"),
        ("/api/v1/models/", "POST", "write"),
        ("/api/v1/models/iris/", "DELETE", "write"),
        ("/api/v1/models/", "GET", "read"),
        ("/api/v1/models/predictor/", "GET", "read"),
    ],
)
def test_scope_follows_route_and_method(path, method, scope):
    assert request_scope(_Request(path, method), _View()) == scope


def test_a_view_attribute_overrides_the_scope():
    view = _View()
    view.throttle_scope = "predict"
    assert request_scope(_Request("/api/v1/anything", "POST"), view) == "predict"


def test_rates_parse_like_drf():
    assert parse_rate("100/min") == (100, 60)
    assert parse_rate("5/s") == (5, 1)
    assert parse_rate("7/hour") == (7, 3600)


def test_client_over_the_read_rate_gets_429_with_retry_after(client_api, rates):
    rates(read="2/hour")
    assert client_api.get("/api/v1/models/").status_code == 200
    assert client_api.get("/api/v1/models/").status_code == 200
    response = client_api.get("/api/v1/models/")
    assert response.status_code == 429
    body = response.json()["error"]
    assert body["type"] == "throttled" and body["request_id"] == response["X-Request-ID"]
    assert 1 <= int(response["Retry-After"]) <= 3600


def test_writes_are_counted_apart_from_reads(staff_api, rates):
    rates(write="1/hour", read="100/hour")
    assert staff_api.post("/api/v1/models/", {"name": "a"}, format="json").status_code == 201
    assert staff_api.post("/api/v1/models/", {"name": "b"}, format="json").status_code == 429
    assert staff_api.get("/api/v1/models/").status_code == 200


def test_each_client_has_its_own_budget(client_api, staff_api, rates):
    rates(read="1/hour")
    assert client_api.get("/api/v1/models/").status_code == 200
    assert client_api.get("/api/v1/models/").status_code == 429
    assert staff_api.get("/api/v1/models/").status_code == 200


def test_anonymous_callers_are_counted_per_address_not_forwarded_header(anon_api, rates, settings):
    rates(read_anon="1/hour")
    # The schema is public: an anonymous endpoint the throttle applies to.
    assert anon_api.get("/api/schema/", REMOTE_ADDR="10.0.0.1").status_code == 200
    # A forged X-Forwarded-For must not buy a fresh budget when no proxy is trusted.
    forged = anon_api.get(
        "/api/schema/", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.9"
    )
    assert forged.status_code == 429
    assert anon_api.get("/api/schema/", REMOTE_ADDR="10.0.0.2").status_code == 200


def test_behind_one_proxy_the_forwarded_client_is_counted(anon_api, rates, settings):
    rates(read_anon="1/hour")
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    proxy = "10.0.0.254"
    first = anon_api.get("/api/schema/", REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR="198.51.100.1")
    other = anon_api.get("/api/schema/", REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR="198.51.100.2")
    again = anon_api.get(
        "/api/schema/", REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR="1.2.3.4, 198.51.100.1"
    )
    assert (first.status_code, other.status_code, again.status_code) == (200, 200, 429)


def test_a_scope_without_rate_is_not_limited(client_api, rates):
    rates()
    for _ in range(5):
        assert client_api.get("/api/v1/models/").status_code == 200


def test_the_default_rates_come_from_the_environment(monkeypatch):
    import subprocess
    import sys

    monkeypatch.setenv("THROTTLE_PREDICT_RATE", "7/s")
    monkeypatch.setenv("THROTTLE_READ_RATE", "none")
    monkeypatch.setenv("NUM_PROXIES", "2")
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "r = s.REST_FRAMEWORK; print(r['DEFAULT_THROTTLE_RATES']['predict'], "
        "r['DEFAULT_THROTTLE_RATES']['read'], r['NUM_PROXIES'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["7/s", "None", "2"]


def test_an_unreachable_cache_lets_requests_through(client_api, rates, settings):
    # Fault injected on purpose: the cache points at a port nothing listens on.
    rates(read="1/hour")
    settings.CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.1, "SOCKET_TIMEOUT": 0.1},
        }
    }
    assert client_api.get("/api/v1/models/").status_code == 200
    assert client_api.get("/api/v1/models/").status_code == 200


def test_a_requests_counter_is_worked_out_once_per_caller(rates):
    from config.throttling import ScopeRateThrottle

    rates(predict="10/min", predict_anon="5/min")
    view, request = _View(), _Request("/api/v1/models/iris/predict", "POST")
    first = ScopeRateThrottle.counter(request, view, ident="user:7")
    assert first[0].startswith("throttle:predict:user:7:60:") and first[1] == 10
    rates(predict="99/min", predict_anon="5/min")
    # The same caller asking again (after authentication) gets the same answer.
    assert ScopeRateThrottle.counter(request, view, ident="user:7") is first
    anon = ScopeRateThrottle.counter(request, view, ident="addr:10.0.0.1")
    assert anon[0].startswith("throttle:predict_anon:addr:10.0.0.1:") and anon[1] == 5
    assert ScopeRateThrottle.counter(request, _View(), ident="user:7")[1] == 99  # a new request
