"""Concurrent promotions on a real PostgreSQL: the row lock and the partial unique index hold."""

import threading

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
