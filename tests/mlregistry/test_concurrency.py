"""Concurrent promotions: on a real PostgreSQL the row lock and the partial unique index hold;
on the embedded SQLite default, behind a real server with two worker processes, writers wait
for each other instead of failing."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.db import connection, connections
from rest_framework.test import APIClient

from mlregistry.models import ModelVersion, Stage, StageTransition
from tests import factories

THREADS = 16


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_sixteen_threads_promoting_end_with_one_production_version():
    model = factories.registered_model_create("race")
    versions = [factories.version_create(model, c=1.0 + i) for i in range(THREADS)]
    token = factories.token_create(factories.staff_create())
    barrier = threading.Barrier(THREADS)
    statuses: list[int] = []
    lock = threading.Lock()

    def promote(number: int) -> None:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        barrier.wait()
        try:
            response = client.post(
                f"/api/v1/models/race/versions/{number}/transition",
                {"stage": "production", "comment": f"thread {number}"},
                format="json",
            )
            with lock:
                statuses.append(response.status_code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=promote, args=(v.version,)) for v in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert connection.vendor == "postgresql"
    assert len(statuses) == THREADS
    assert all(code in (200, 409) for code in statuses), statuses
    assert ModelVersion.objects.filter(model=model, stage=Stage.PRODUCTION).count() == 1
    # Every successful promotion is audited; serialised by the lock, each archived its predecessor.
    promotions = StageTransition.objects.filter(version__model=model, to_stage=Stage.PRODUCTION)
    assert promotions.count() == statuses.count(200)
    archived = StageTransition.objects.filter(version__model=model, to_stage=Stage.ARCHIVED).count()
    assert archived == statuses.count(200) - 1


# --- The embedded default: SQLite behind a real multi-process server ---------------------

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PROMOTIONS = 48

_SETUP = """
from tests import factories
model = factories.registered_model_create("race")
for i in range({versions}):
    factories.version_create(model, c=1.0 + i)
print(factories.token_create(factories.staff_create()))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(url: str, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, "the server exited"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"{url} did not answer within {timeout}s")


def _post(url: str, token: str, body: dict) -> int:
    request = urllib.request.Request(
        url,
        json.dumps(body).encode(),
        {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.skipif(not (BIN / "granian").exists(), reason="granian not installed")
def test_sqlite_default_survives_concurrent_promotions_through_a_real_server(tmp_path):
    """16 client threads send 48 promotions to granian with 2 workers on the embedded SQLite
    file: every answer is 200 or 409 (or 503 with Retry-After, should a lock wait still time
    out), never a 500, and the invariant holds."""
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}},
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "VAR_DIR": str(tmp_path),
        "DJANGO_DEBUG": "false",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)

    def manage(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    manage("migrate", "--noinput")
    token = manage("shell", "-c", _SETUP.format(versions=THREADS)).strip().splitlines()[-1]
    port = _free_port()
    server = subprocess.Popen(
        [str(ROOT / "deploy" / "serve")],
        cwd=ROOT,
        env={
            **env,
            "GRANIAN": str(BIN / "granian"),
            "WEB_HOST": "127.0.0.1",
            "PORT": str(port),
            "WEB_CONCURRENCY": "2",
        },
        start_new_session=True,
    )
    statuses: list[int] = []
    lock = threading.Lock()
    try:
        _wait_ready(f"http://127.0.0.1:{port}/health", server)
        barrier = threading.Barrier(THREADS)

        def promote(thread: int) -> None:
            barrier.wait()
            for round_ in range(PROMOTIONS // THREADS):
                number = (thread + round_ * 5) % THREADS + 1
                code = _post(
                    f"http://127.0.0.1:{port}/api/v1/models/race/versions/{number}/transition",
                    token,
                    {"stage": "production", "comment": f"thread {thread}"},
                )
                with lock:
                    statuses.append(code)

        threads = [threading.Thread(target=promote, args=(i,)) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)

    assert len(statuses) == PROMOTIONS
    assert set(statuses) <= {200, 409, 503}, sorted(statuses)
    assert statuses.count(200) >= 1
    with sqlite3.connect(tmp_path / "db.sqlite3") as db:
        production = db.execute(
            "SELECT COUNT(*) FROM mlregistry_modelversion WHERE stage = 'production'"
        ).fetchone()[0]
        promotions = db.execute(
            "SELECT COUNT(*) FROM mlregistry_stagetransition WHERE to_stage = 'production'"
        ).fetchone()[0]
    assert production == 1
    assert promotions == statuses.count(200)
