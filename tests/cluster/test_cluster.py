"""The topology, proven on loopback (tests/cluster/conftest.py): two web replicas, two Celery
workers and one beat on shared PostgreSQL, Redis and artifact storage."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass

import pytest

from tests import live
from tests.cluster.conftest import MAX_ATTEMPTS, REAPER_EVERY, STALLED_AFTER, Cluster, Member

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


# --- A worker killed in the middle of a job -------------------------------------------------

# Long enough to be killed in the middle: ~2 s of CPU per run (three fits of 500 boosting
# rounds); on a busy shared machine a run takes several times that.
SLOW_TRAINING = {
    "dataset": "iris-data",
    "estimator": "GradientBoostingClassifier",
    "estimator_params": {"n_estimators": 500, "learning_rate": 0.01, "max_depth": 5},
    "cv_folds": 2,
}
QUICK_TRAINING = {"dataset": "iris-data", "estimator": "LogisticRegression", "cv_folds": 2}


def _training_job_create(cluster: Cluster, settings: dict = SLOW_TRAINING) -> int:
    status, body = live.http_json(
        "POST", f"{cluster.webs[0].url}{API}/training-jobs", token=cluster.staff, body=settings
    )
    assert status == 202, body
    return body["id"]


def _training_job(cluster: Cluster, job_id: int) -> dict:
    status, body = live.http_json(
        "GET", f"{cluster.webs[1].url}{API}/training-jobs/{job_id}", token=cluster.staff
    )
    assert status == 200, body
    return body


def _busy_worker(cluster: Cluster) -> tuple[Member, int]:
    """The worker whose pool process is running the job (the one using the CPU), and that
    process's pid."""
    pools = {w.name: live.children(w.process.pid) for w in cluster.workers}
    before = {pid: live.cpu_seconds(pid) for pids in pools.values() for pid in pids}
    time.sleep(0.4)
    used = {pid: live.cpu_seconds(pid) - cpu for pid, cpu in before.items()}
    busiest = max(used, key=used.get)
    assert used[busiest] >= 0.05, used
    worker = next(w for w in cluster.workers if busiest in pools[w.name])
    return worker, busiest


def _started(cluster: Cluster, job_id: int, attempts: int):
    job = _training_job(cluster, job_id)
    return job if job["status"] == "running" and job["attempts"] >= attempts else None


def _finished(cluster: Cluster, job_id: int):
    job = _training_job(cluster, job_id)
    return job if job["status"] in ("succeeded", "failed") else None


def _candidates(cluster: Cluster, job_id: int) -> int:
    (count,) = cluster.query(
        "SELECT count(*) FROM mlregistry_modelversion WHERE metadata->>'training_job' = %s",
        (str(job_id),),
    )[0]
    return count


def test_a_job_whose_pool_process_is_killed_is_redelivered_and_finishes_once(running: Cluster):
    """SIGKILL of the process running the task (what the OOM killer does): the worker sees it
    lost, the message goes back to the queue at once (acks_late + reject on worker lost), the
    other worker takes it and the job finishes with one candidate."""
    job_id = _training_job_create(running)
    live.wait_for(lambda: _started(running, job_id, 1), timeout=60, what="the job's start")
    killed, pid = _busy_worker(running)
    os.kill(pid, signal.SIGKILL)

    job = live.wait_for(lambda: _finished(running, job_id), timeout=180, what="the job's end")
    assert (job["status"], job["attempts"]) == ("succeeded", 2), job
    assert _candidates(running, job_id) == 1
    finished_by = [
        w.name for w in running.workers if "training_job_run_task SUCCESS" in w.log_text()
    ]
    other = next(w.name for w in running.workers if w is not killed)
    assert finished_by == [other], (killed.name, finished_by)


def test_a_job_whose_worker_keeps_dying_is_failed_not_left_running(running: Cluster):
    """A job that kills its worker on every run (redelivered at once each time) is failed with
    its reason once it has started JOB_MAX_ATTEMPTS times."""
    job_id = _training_job_create(running)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        live.wait_for(
            lambda a=attempt: _started(running, job_id, a), timeout=60, what=f"start {attempt}"
        )
        _, pid = _busy_worker(running)
        os.kill(pid, signal.SIGKILL)

    job = live.wait_for(lambda: _finished(running, job_id), timeout=60, what="the job's end")
    assert (job["status"], job["error_type"]) == ("failed", "worker_lost"), job
    assert f"started {MAX_ATTEMPTS} times without finishing" in job["error"]
    assert _candidates(running, job_id) == 0


def test_a_job_whose_whole_worker_is_killed_is_failed_by_the_reaper(running: Cluster):
    """SIGKILL of a whole worker (a lost machine): nothing sends the message back before the
    broker's visibility timeout (hours), so the reaper, scheduled by beat, fails the job once
    its heartbeat is JOB_STALLED_AFTER_SECONDS old; the other worker goes on taking jobs."""
    job_id = _training_job_create(running)
    live.wait_for(lambda: _started(running, job_id, 1), timeout=60, what="the job's start")
    killed, _ = _busy_worker(running)
    live.kill(killed.process)
    killed_at = time.monotonic()

    job = live.wait_for(lambda: _finished(running, job_id), timeout=60, what="the reaper")
    bound = STALLED_AFTER + REAPER_EVERY + 10
    assert time.monotonic() - killed_at < bound
    assert (job["status"], job["error_type"]) == ("failed", "worker_lost"), job
    assert "The worker running this job stopped" in job["error"]
    assert _candidates(running, job_id) == 0
    # The surviving worker runs the next job to its end.
    next_id = _training_job_create(running, QUICK_TRAINING)
    job = live.wait_for(lambda: _finished(running, next_id), timeout=120, what="the next job")
    assert job["status"] == "succeeded", job


# batch: SIGKILL of a worker in the middle of a batch-scoring job goes here (the batch session
# adds it: each chunk redelivered and written once, or the job failed with its reason).
