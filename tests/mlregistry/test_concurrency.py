"""Concurrent promotions: on a real PostgreSQL the row lock and the partial unique index hold;
on the embedded SQLite default, behind a real server with two worker processes, writers wait
for each other instead of failing."""

import json
import sqlite3
import threading
import urllib.error
import urllib.request

import pytest
from django.db import connection, connections
from rest_framework.test import APIClient

from mlregistry.models import ModelVersion, Stage, StageTransition
from tests import factories, live

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

PROMOTIONS = 48

_SETUP = """
from tests import factories
model = factories.registered_model_create("race")
for i in range({versions}):
    factories.version_create(model, c=1.0 + i)
print(factories.token_create(factories.staff_create()))
"""


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


@pytest.mark.skipif(not live.GRANIAN.exists(), reason="granian not installed")
def test_sqlite_default_survives_concurrent_promotions_through_a_real_server(tmp_path):
    """16 client threads send 48 promotions to granian with 2 workers on the embedded SQLite
    file: every answer is 200 or 409 (or 503 with Retry-After, should a lock wait still time
    out), never a 500, and the invariant holds."""
    env = live.product_env(tmp_path)
    live.manage(env, "migrate", "--noinput")
    setup = _SETUP.format(versions=THREADS)
    token = live.manage(env, "shell", "-c", setup).strip().splitlines()[-1]
    port = live.free_port()
    server = live.serve(env, port, workers=2)
    statuses: list[int] = []
    lock = threading.Lock()
    try:
        live.wait_ready(f"http://127.0.0.1:{port}/health", server)
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
        live.stop(server)

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
