import pytest
from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_float, env_int, env_list, env_str


def test_booleans_are_strict(monkeypatch):
    for raw, expected in [("true", True), ("FALSE", False), (" yes ", True), ("0", False)]:
        monkeypatch.setenv("X_FLAG", raw)
        assert env_bool("X_FLAG", not expected) is expected
    monkeypatch.setenv("X_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="X_FLAG must be true or false"):
        env_bool("X_FLAG", False)
    monkeypatch.setenv("X_FLAG", "")
    assert env_bool("X_FLAG", True) is True


def test_integers_have_a_minimum(monkeypatch):
    monkeypatch.delenv("X_INT", raising=False)
    assert env_int("X_INT", 5) == 5
    monkeypatch.setenv("X_INT", "12")
    assert env_int("X_INT", 5, minimum=1) == 12
    monkeypatch.setenv("X_INT", "0")
    with pytest.raises(ImproperlyConfigured, match="at least 1"):
        env_int("X_INT", 5, minimum=1)
    monkeypatch.setenv("X_INT", "ten")
    with pytest.raises(ImproperlyConfigured, match="must be an integer"):
        env_int("X_INT", 5)


def test_floats_lists_and_strings(monkeypatch):
    monkeypatch.setenv("X_FLOAT", "0.5")
    assert env_float("X_FLOAT", 1.0) == 0.5
    monkeypatch.setenv("X_FLOAT", "fast")
    with pytest.raises(ImproperlyConfigured, match="must be a number"):
        env_float("X_FLOAT", 1.0)
    monkeypatch.delenv("X_FLOAT")
    assert env_float("X_FLOAT", 1.0) == 1.0
    monkeypatch.setenv("X_LIST", " a, b ,,c ")
    assert env_list("X_LIST", []) == ["a", "b", "c"]
    monkeypatch.setenv("X_LIST", "  ")
    assert env_list("X_LIST", ["d"]) == ["d"]
    monkeypatch.setenv("X_STR", "value")
    assert env_str("X_STR", "default") == "value"
