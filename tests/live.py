"""Live servers for tests.

`live_world`: pytest-django's in-process live server with real models, for the contract and
client tests: an iris classifier with string classes (production), a second iris version, a
regressor, and a classifier without predict_proba. Everything is trained here on data
scikit-learn ships.

Below it, the product as separate processes on loopback (deploy/serve, Celery worker and beat,
manage.py), for the deploy, concurrency and cluster tests and the bench scripts.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import pytest
import skops.io as sio
from django.conf import settings as django_settings


@cache
def iris_named_classifier():
    """Logistic regression on iris with the species' names as classes."""
    from sklearn.linear_model import LogisticRegression

    # Imported when used: the process helpers below serve scripts without Django set up.
    from tests import factories

    x, y = factories.iris_frame()
    names = y.map({0: "setosa", 1: "versicolor", 2: "virginica"})
    return LogisticRegression(max_iter=500).fit(x, names)


@cache
def iris_margin_classifier():
    """A linear SVM: string classes, no predict_proba."""
    from sklearn.svm import LinearSVC

    # Imported when used: the process helpers below serve scripts without Django set up.
    from tests import factories

    x, y = factories.iris_frame()
    names = y.map({0: "setosa", 1: "versicolor", 2: "virginica"})
    return LinearSVC().fit(x, names)


@cache
def diabetes_regressor():
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    frame = load_diabetes(as_frame=True)
    return Ridge().fit(frame.data, frame.target)


IRIS_ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


@dataclass
class World:
    url: str
    staff: str  # token of a staff user with the registry permissions
    client: str  # token of a plain API client
    staff_user: object
    client_user: object


def _version(model, estimator, actor):
    from mlregistry import services

    return services.model_version_create(
        model=model, artifact=io.BytesIO(sio.dumps(estimator)), actor=actor
    )


@pytest.fixture
def live_world(live_server, transactional_db, settings) -> World:
    from mlregistry import services  # imported when used, like factories above
    from tests import factories

    # Served rows are written by the request that serves them, so feedback finds them at once;
    # no rate limit unless a test sets one.
    settings.PREDICTION_LOG_FLUSH_SECONDS = 0
    settings.PREDICTION_LOG_FLUSH_ROWS = 1
    settings.REST_FRAMEWORK = {
        **django_settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {},
    }
    staff = factories.staff_create(extra_perms=["download_modelversion"])
    client = factories.user_create("client")
    iris = factories.registered_model_create("iris", actor=staff)
    v1 = _version(iris, iris_named_classifier(), staff)
    services.model_version_transition(version=v1, stage="production", actor=staff)
    diabetes = factories.registered_model_create("diabetes", actor=staff, task="regression")
    d1 = _version(diabetes, diabetes_regressor(), staff)
    services.model_version_transition(version=d1, stage="production", actor=staff)
    margin = factories.registered_model_create("iris-margin", actor=staff)
    m1 = _version(margin, iris_margin_classifier(), staff)
    services.model_version_transition(version=m1, stage="production", actor=staff)
    return World(
        url=live_server.url,
        staff=factories.token_create(staff),
        client=factories.token_create(client),
        staff_user=staff,
        client_user=client,
    )


# --- Processes of the product on loopback ---------------------------------------------------
# The web server as deployments run it (deploy/serve: granian), Celery workers and beat, and
# `manage.py` commands, each a real process with the environment it is given. The helpers
# below are shared by every test (and bench script) that starts one; none hard-codes a port.

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GRANIAN = BIN / "granian"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def product_env(var_dir: Path, **overrides: str) -> dict[str, str]:
    """The environment of a product process: this one's, minus the test run's database, cache
    and metrics settings (a product process names its own), with VAR_DIR as its local disk."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "PROMETHEUS_MULTIPROC_DIR"}
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "VAR_DIR": str(var_dir),
            "DJANGO_DEBUG": "false",
            "LOG_LEVEL": "WARNING",
        }
    )
    env.update(overrides)
    return env


def manage(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    """Runs `manage.py <args>` in a process of its own; its stdout, or CalledProcessError."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
    ).stdout


def _log_file(log: Path | None):
    return open(log, "ab") if log is not None else subprocess.DEVNULL


def spawn(command: list[str], env: dict[str, str], *, log: Path | None = None) -> subprocess.Popen:
    """Starts `command` in the repository as the leader of a new process group, so that
    `stop`/`kill` reach the processes it forks (granian's and Celery's workers) too."""
    out = _log_file(log)
    try:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        if out is not subprocess.DEVNULL:
            out.close()


def serve(
    env: dict[str, str], port: int, *, workers: int = 1, log: Path | None = None
) -> subprocess.Popen:
    """deploy/serve (granian) on 127.0.0.1:`port` with `workers` worker processes."""
    return spawn(
        [str(ROOT / "deploy" / "serve")],
        {
            **env,
            "GRANIAN": str(GRANIAN),
            "WEB_HOST": "127.0.0.1",
            "PORT": str(port),
            "WEB_CONCURRENCY": str(workers),
        },
        log=log,
    )


def celery_worker(
    env: dict[str, str], name: str, *, concurrency: int = 1, log: Path | None = None
) -> subprocess.Popen:
    """A Celery worker named `name`@localhost, as the compose stack runs one."""
    return spawn(
        [str(BIN / "celery"), "-A", "config", "worker", "--loglevel", "INFO",
         "--concurrency", str(concurrency), "--hostname", f"{name}@localhost",
         "--without-mingle", "--without-gossip"],
        env,
        log=log,
    )  # fmt: skip


def celery_beat(env: dict[str, str], *, log: Path | None = None) -> subprocess.Popen:
    """The one beat, reading its schedule from the database (django-celery-beat)."""
    return spawn(
        [str(BIN / "celery"), "-A", "config", "beat", "--loglevel", "INFO",
         "--scheduler", "django_celery_beat.schedulers:DatabaseScheduler", "--pidfile="],
        env,
        log=log,
    )  # fmt: skip


def wait_ready(url: str, process: subprocess.Popen | None = None, *, timeout: float = 60) -> None:
    """Waits until `url` answers 200; fails the test if `process` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(f"the server exited ({process.returncode}) before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} did not answer within {timeout}s")


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM to the process group (a graceful stop: buffers flushed, tasks finished), then
    SIGKILL for what is left after `timeout` seconds."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            kill(process)
    # A group's other members may outlive its leader (a pool child): none must be left.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def stop_all(processes: list[subprocess.Popen], timeout: float = 30) -> None:
    """`stop` for several processes at once: all are asked to stop first, then waited for."""
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(max(0.1, deadline - time.monotonic()))
        stop(process, timeout=0.1)


def kill(process: subprocess.Popen) -> None:
    """SIGKILL to the whole process group, as a lost machine or the OOM killer would."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)


def children(pid: int) -> list[int]:
    """The direct child processes of `pid` (Linux /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def http_json(
    method: str,
    url: str,
    *,
    token: str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, Any]:
    """One HTTP request with a JSON body; (status, decoded JSON answer or None). A refused
    connection raises OSError, as it does for any client."""
    sent = dict(headers or {})
    data = None
    if body is not None:
        data = orjson.dumps(body)
        sent["Content-Type"] = "application/json"
    if token:
        sent["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data, sent, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    return status, orjson.loads(raw) if raw else None


def http_upload(
    url: str,
    *,
    token: str | None = None,
    fields: dict[str, str] | None = None,
    files: dict[str, tuple[str, bytes]] | None = None,
    timeout: float = 60,
) -> tuple[int, Any]:
    """One multipart/form-data POST (what the upload operations take): `fields` as text
    parts, `files` as {field: (file name, bytes)}; (status, decoded JSON answer or None)."""
    from urllib3 import encode_multipart_formdata

    parts: dict[str, Any] = {**(fields or {}), **(files or {})}
    data, content_type = encode_multipart_formdata(parts)
    sent = {"Content-Type": content_type}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data, sent, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    return status, orjson.loads(raw) if raw else None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time `pid` has used so far (Linux /proc), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(predicate, *, timeout: float, every: float = 0.25, what: str = "the condition"):
    """Polls `predicate` until it returns something true and returns that; fails the test
    after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout}s")
        time.sleep(every)


# --- Databases of their own on the test run's PostgreSQL server ------------------------------


def database_url(name: str) -> str:
    """DATABASE_URL (a PostgreSQL server) with its database name replaced by `name`."""
    parts = urlsplit(os.environ["DATABASE_URL"])
    return urlunsplit(parts._replace(path=f"/{name}"))


def test_database_url() -> str:
    """The URL of the database this test process uses (for a worker it starts)."""
    from django.db import connection

    db = connection.settings_dict
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return (
        f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
        f"/{db['NAME']}"
    )


def broker_answers(url: str) -> bool:
    """Whether a Celery broker (Redis or AMQP) accepts a connection at `url` within ~2 s."""
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return True
    except Exception:
        return False


def broker_url() -> str | None:
    """CELERY_TEST_BROKER_URL when set, else the first local broker that answers (RabbitMQ,
    then Redis); None when none does."""
    configured = os.environ.get("CELERY_TEST_BROKER_URL")
    candidates = (
        [configured]
        if configured
        else ["amqp://guest:guest@127.0.0.1:5672//", "redis://127.0.0.1:6379/3"]
    )
    return next((url for url in candidates if broker_answers(url)), None)


def redis_broker_url() -> str | None:
    """CELERY_TEST_BROKER_URL when it is a Redis one, else the local Redis (db 3) when it
    answers; None otherwise."""
    configured = os.environ.get("CELERY_TEST_BROKER_URL", "")
    url = configured if configured.startswith("redis") else "redis://127.0.0.1:6379/3"
    return url if broker_answers(url) else None


def _postgres_admin(sql: str) -> None:
    import psycopg2

    with contextlib.closing(psycopg2.connect(database_url("postgres"))) as conn:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(sql)


def database_create(name: str) -> str:
    """Creates the empty database `name` on DATABASE_URL's server; its URL."""
    _postgres_admin(f'CREATE DATABASE "{name}"')
    return database_url(name)


def database_drop(name: str) -> None:
    """Drops the database `name`, ending the sessions still connected to it."""
    _postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def redis_server(workdir: Path, *args: str) -> tuple[subprocess.Popen, int]:
    """A redis-server of its own on a free loopback port (never the machine's shared one),
    without persistence; (its process, its port). Waits until it answers."""
    port = free_port()
    process = spawn(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir), *args],
        os.environ.copy(),
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return process, port
        if time.monotonic() > deadline or process.poll() is not None:
            stop(process)
            raise RuntimeError(f"redis-server did not start on port {port}")
        time.sleep(0.05)
