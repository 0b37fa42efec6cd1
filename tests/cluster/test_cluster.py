"""The topology, proven on loopback (tests/cluster/conftest.py): two web replicas, two Celery
workers and one beat on shared PostgreSQL, Redis and artifact storage."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

import pytest

from tests import live
from tests.cluster.conftest import Cluster, Member

pytestmark = [pytest.mark.cluster, pytest.mark.postgres]

API = "/api/v1/models/iris"
FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
# Inside the schema's ranges (the training data's), so every row is served.
LOWS, HIGHS = (4.3, 2.0, 1.0, 0.1), (7.9, 4.4, 6.9, 2.5)


def _row(rng: random.Random) -> dict[str, float]:
    return {
        name: round(rng.uniform(low, high), 2)
        for name, low, high in zip(FEATURES, LOWS, HIGHS, strict=True)
    }


def predict(member: Member, token: str, row: dict, request_id: str | None = None):
    headers = {"X-Request-ID": request_id} if request_id else None
    return live.http_json(
        "POST", f"{member.url}{API}/predict", token=token, body={"features": row}, headers=headers
    )


# --- Every change is seen on the next request, whichever replica answers -------------------


@dataclass(frozen=True)
class Change:
    """A routing change made through one replica's API, and the versions allowed to answer
    every request sent after it returned."""

    name: str
    method: str
    path: str
    body: dict | None
    answers: frozenset[int]


CHANGES = [
    Change("promote v2", "POST", f"{API}/versions/2/transition", {"stage": "production"},
           frozenset({2})),
    Change("rollback to v1", "POST", f"{API}/rollback", {}, frozenset({1})),
    Change("split v1/v3 50/50", "PUT", f"{API}/traffic",
           {"splits": [{"version": 1, "weight": 50}, {"version": 3, "weight": 50}]},
           frozenset({1, 3})),
    Change("split v3 100%", "PUT", f"{API}/traffic",
           {"splits": [{"version": 3, "weight": 100}]}, frozenset({3})),
    Change("split cleared", "DELETE", f"{API}/traffic", None, frozenset({1})),
    Change("promote v3", "POST", f"{API}/versions/3/transition", {"stage": "production"},
           frozenset({3})),
    Change("rollback to v1 again", "POST", f"{API}/rollback", {}, frozenset({1})),
    # registry (aliases): the alias moves go here: a Change that moves an alias, whose
    # requests are sent to .../aliases/<alias>/predict (the integrator adds it).
]  # fmt: skip
REQUESTS_PER_CHANGE = 80


def _background_load(cluster: Cluster, stop: threading.Event, errors: list) -> None:
    """Other clients predicting at the same time, so routing entries are refilled by one
    replica while the other invalidates them (the race a lone client never meets)."""
    rng = random.Random()  # noqa: S311 - test data
    while not stop.is_set():
        member = rng.choice(cluster.webs)
        try:
            status, body = predict(member, cluster.client, _row(rng))
        except OSError as exc:
            errors.append(repr(exc))
            continue
        if status != 200:
            errors.append((status, body))


def test_every_change_is_seen_on_the_next_request_to_either_replica(running: Cluster):
    rng = random.Random(19)  # noqa: S311 - test data
    repeated = _row(rng)  # half the requests repeat one row: the result cache answers those
    stale: list[tuple[str, int, int, str]] = []
    answered = 0
    stop, background_errors = threading.Event(), []
    load = [
        threading.Thread(target=_background_load, args=(running, stop, background_errors))
        for _ in range(2)
    ]
    for thread in load:
        thread.start()
    try:
        for index, change in enumerate(CHANGES):
            via = running.webs[index % 2]
            status, body = live.http_json(
                change.method, f"{via.url}{change.path}", token=running.staff, body=change.body
            )
            assert status in (200, 204), (change.name, status, body)
            # The first request after the change goes to the replica that did not make it.
            for i in range(REQUESTS_PER_CHANGE):
                member = running.webs[(index + 1 + i) % 2]
                row = repeated if i % 2 else _row(rng)
                status, body = predict(member, running.client, row)
                assert status == 200, (change.name, member.name, body)
                answered += 1
                if body["model_version"] not in change.answers:
                    stale.append((change.name, i, body["model_version"], member.name))
    finally:
        stop.set()
        for thread in load:
            thread.join(30)
    assert answered >= 500 and len(CHANGES) >= 5
    assert stale == [], f"{len(stale)} stale answers of {answered}: {stale[:20]}"
    assert background_errors == [], background_errors[:5]
