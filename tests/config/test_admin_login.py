import pytest

from tests import factories

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/?next=/admin/"


@pytest.fixture
def admin_account(settings):
    settings.ADMIN_LOGIN_FAILURE_LIMIT = 3
    settings.ADMIN_LOGIN_LOCKOUT_SECONDS = 600
    return factories.user_create("ops", staff=True)


def _login(client, password, username="ops", address="192.0.2.10"):
    return client.post(LOGIN, {"username": username, "password": password}, REMOTE_ADDR=address)


def test_correct_password_logs_in(client, admin_account):
    response = _login(client, "pw-ops")
    assert response.status_code == 302


def test_failures_past_the_limit_lock_out_even_the_right_password(client, admin_account):
    for _ in range(3):
        assert _login(client, "wrong").status_code == 200
    response = _login(client, "pw-ops")
    assert response.status_code == 200
    assert "Too many failed login attempts. Try again in 10 minutes." in response.content.decode()


def test_the_lockout_is_per_address(client, admin_account):
    for _ in range(3):
        _login(client, "wrong")
    assert _login(client, "pw-ops", address="192.0.2.99").status_code == 302


def test_one_address_cannot_spray_many_accounts(client, admin_account):
    for index in range(12):
        _login(client, "wrong", username=f"someone{index}")
    assert _login(client, "pw-ops").status_code == 200


def test_a_success_resets_the_count_for_that_account(client, admin_account):
    _login(client, "wrong")
    _login(client, "wrong")
    assert _login(client, "pw-ops").status_code == 302
    client.logout()
    _login(client, "wrong")
    _login(client, "wrong")
    assert _login(client, "pw-ops").status_code == 302


def test_the_test_client_login_still_works(client, admin_account):
    assert client.login(username="ops", password="pw-ops")


def test_an_unreachable_cache_does_not_lock_admins_out(client, admin_account, settings):
    # Fault injected on purpose: the cache points at a port nothing listens on.
    settings.CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.1, "SOCKET_TIMEOUT": 0.1},
        },
    }
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.db"
    assert _login(client, "wrong").status_code == 200
    assert _login(client, "pw-ops").status_code == 302
