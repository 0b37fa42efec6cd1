"""`manage.py check --deploy` with the production environment, in a fresh process."""

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("redirect at the app", "redirect at the proxy")


def documented_production_env(variant: str) -> dict[str, str]:
    """The variables of one production block of the README, placeholders (`<…>`) filled in.

    The check runs with what the README tells operators to set, so the two cannot drift apart.
    """
    readme = (ROOT / "README.md").read_text()
    match = re.search(
        rf"<!-- check-deploy: {re.escape(variant)} -->\n```sh\n(.*?)\n```", readme, re.DOTALL
    )
    assert match, f"README has no production block for {variant!r}"
    env = {}
    for line in match.group(1).splitlines():
        name, _, value = line.partition("=")
        env[name.strip()] = secrets.token_urlsafe(48) if value.startswith("<") else value
    return env


PRODUCTION_ENV = documented_production_env("redirect at the app")


def _check(extra: dict[str, str], *, drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "SECURE_"))}
    env.update(extra)
    for name in drop:
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_check_deploy_passes_with_the_documented_production_variables(variant):
    env = documented_production_env(variant)
    assert env["DJANGO_SECURE_HSTS_PRELOAD"] == "true"
    result = _check(env)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "no issues" in result.stdout


@pytest.mark.parametrize(
    ("drop", "warning"),
    [
        ("DJANGO_SECURE_HSTS_PRELOAD", "security.W021"),
        ("DJANGO_SECURE_SSL_REDIRECT", "security.W008"),
    ],
)
def test_check_deploy_names_what_a_missing_documented_variable_leaves_open(drop, warning):
    result = _check(PRODUCTION_ENV, drop=(drop,))
    assert result.returncode != 0
    assert warning in result.stderr + result.stdout


def test_check_deploy_fails_without_a_real_secret_key():
    result = _check(PRODUCTION_ENV, drop=("DJANGO_SECRET_KEY",))
    assert result.returncode != 0
    assert "security.W009" in result.stderr + result.stdout


def test_check_deploy_fails_with_debug_on():
    result = _check({**PRODUCTION_ENV, "DJANGO_DEBUG": "true"})
    assert result.returncode != 0
    assert "security.W018" in result.stderr + result.stdout


def test_production_defaults_turn_on_hsts_and_secure_cookies():
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.SECURE_HSTS_SECONDS, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, "
        "s.SECURE_SSL_REDIRECT)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env.update(DJANGO_DEBUG="false", DJANGO_SETTINGS_MODULE="config.settings")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["31536000", "True", "True", "False"]
