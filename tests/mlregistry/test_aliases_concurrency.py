"""Sixteen threads moving one alias at once, on a real PostgreSQL: the model-row lock
serialises them, the end state is one pointer, and every move that happened has its audit row."""

import itertools
import threading

import pytest
from django.db import connection, connections
from rest_framework.test import APIClient

from mlregistry.models import AuditEvent, ModelAlias
from tests import factories

THREADS = 16


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_sixteen_threads_moving_one_alias_end_consistent_with_one_audit_row_per_move():
    model = factories.registered_model_create("race")
    versions = [factories.version_create(model, c=1.0 + i) for i in range(4)]
    token = factories.token_create(factories.staff_create())
    barrier = threading.Barrier(THREADS)
    answers: list[tuple[int, int, dict]] = []
    lock = threading.Lock()

    def move(index: int) -> None:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        target = versions[index % len(versions)].version
        barrier.wait()
        try:
            response = client.put(
                "/api/v1/models/race/aliases/champion",
                {"version": target, "comment": f"thread {index}"},
                format="json",
            )
            with lock:
                answers.append((response.status_code, target, response.json()))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=move, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert connection.vendor == "postgresql"
    assert len(answers) == THREADS
    assert all(status in (200, 409) for status, _, _ in answers), answers
    assert all(body["version"] == target for status, target, body in answers if status == 200)
    rows = ModelAlias.objects.filter(model=model)
    assert rows.count() == 1
    events = list(AuditEvent.objects.filter(verb="alias_set", model_name="race").order_by("id"))
    # Serialised by the lock: each event starts where the previous one ended, no move is lost
    # or doubled, and the last one is where the alias points.
    assert events[0].changes["version"][0] is None
    for before, after in itertools.pairwise(events):
        assert after.changes["version"][0] == before.changes["version"][1]
        assert after.changes["version"][0] != after.changes["version"][1]
    assert events[-1].changes["version"][1] == rows.get().version.version
    # A move to where the alias already pointed writes nothing: at most one event per 200.
    assert len(events) <= sum(1 for status, _, _ in answers if status == 200)
