"""The topology, proven on loopback (tests/cluster/conftest.py): two web replicas, two Celery
workers and one beat on shared PostgreSQL, Redis and artifact storage."""

from __future__ import annotations

import http.client
import io
import os
import random
import signal
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from celery import Celery
from mlregistry_client import Registry

from tests import live
from tests.cluster.conftest import (
    MAX_ATTEMPTS,
    REAPER_EVERY,
    STALLED_AFTER,
    Cluster,
    Member,
    cluster_storage_env,
)

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


def predict(
    member: Member, token: str, row: dict, request_id: str | None = None, route: str = "/predict"
):
    headers = {"X-Request-ID": request_id} if request_id else None
    return live.http_json(
        "POST", f"{member.url}{API}{route}", token=token, body={"features": row}, headers=headers
    )


# --- Every change is seen on the next request, whichever replica answers -------------------


@dataclass(frozen=True)
class Change:
    """A routing change made through one replica's API, and the versions allowed to answer
    every request sent after it returned (to `route`: production or the split, or an alias)."""

    name: str
    method: str
    path: str
    body: dict | None
    answers: frozenset[int]
    route: str = "/predict"


CHANGES = [
    # Alias moves first, while v2 and v3 are neither archived nor in production.
    Change("alias champion -> v2", "PUT", f"{API}/aliases/champion", {"version": 2},
           frozenset({2}), "/aliases/champion/predict"),
    Change("alias champion -> v3", "PUT", f"{API}/aliases/champion", {"version": 3},
           frozenset({3}), "/aliases/champion/predict"),
    Change("alias champion -> v1", "PUT", f"{API}/aliases/champion", {"version": 1},
           frozenset({1}), "/aliases/champion/predict"),
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
]  # fmt: skip
REQUESTS_PER_CHANGE = 80
RAPID_FLIPS, RAPID_REQUESTS = 12, 6


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
    answered, changes = 0, len(CHANGES)
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
                status, body = predict(member, running.client, row, route=change.route)
                assert status == 200, (change.name, member.name, body)
                answered += 1
                if body["model_version"] not in change.answers:
                    stale.append((change.name, i, body["model_version"], member.name))
        # Rapid changes: rollbacks back and forth with few requests between them, while the
        # other clients refill the routing entries each one drops.
        for flip in range(RAPID_FLIPS):
            via = running.webs[flip % 2]
            status, body = live.http_json(
                "POST", f"{via.url}{API}/rollback", token=running.staff, body={}
            )
            assert status == 200, body
            changes += 1
            for i in range(RAPID_REQUESTS):
                member = running.webs[(flip + 1 + i) % 2]
                status, answer = predict(member, running.client, repeated if i % 2 else _row(rng))
                assert status == 200, answer
                answered += 1
                if answer["model_version"] != body["version"]:
                    stale.append((f"rollback {flip}", i, answer["model_version"], member.name))
    finally:
        stop.set()
        for thread in load:
            thread.join(30)
    assert answered >= 500 and changes >= 5
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
    process's pid. Sampled until one pool process clearly leads: on a machine busy with other
    work a process may get only a slice of a core."""
    pools = {w.name: live.children(w.process.pid) for w in cluster.workers}
    before = {pid: live.cpu_seconds(pid) for pids in pools.values() for pid in pids}
    deadline = time.monotonic() + 15
    while True:
        time.sleep(0.2)
        used = sorted(
            ((live.cpu_seconds(pid) - cpu, pid) for pid, cpu in before.items()), reverse=True
        )
        (most, busiest), (second, _) = used[0], used[1]
        if most >= 0.1 and most >= 3 * second:
            break
        assert time.monotonic() < deadline, used
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
    lost, the message goes back to the queue at once (acks_late + reject on worker lost), a
    worker takes it again and the job finishes once, with one candidate."""
    marks = {w.name: w.log_size() for w in running.workers}
    job_id = _training_job_create(running)
    live.wait_for(lambda: _started(running, job_id, 1), timeout=60, what="the job's start")
    killed, pid = _busy_worker(running)
    os.kill(pid, signal.SIGKILL)

    job = live.wait_for(lambda: _finished(running, job_id), timeout=180, what="the job's end")
    assert (job["status"], job["attempts"]) == ("succeeded", 2), job
    assert _candidates(running, job_id) == 1
    finished_by = [
        w.name
        for w in running.workers
        if "training_job_run_task SUCCESS" in w.log_from(marks[w.name])
    ]
    # Run to its end by one worker: the other one, which waits on the queue while the killed
    # one starts a new pool process (unless a reaper task happened to hold it just then).
    assert len(finished_by) == 1, (killed.name, finished_by)


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


# --- A worker killed in the middle of a batch-scoring job -----------------------------------

# Small chunks, so a job runs for seconds and a kill lands in the middle of one: each chunk
# reads its rows from the S3 server and writes its part there (~0.05-0.1 s; a pool process's
# first chunk also loads the model, ~3 s). For the pool kill, enough chunks that the job is
# still running after a kill that landed between two chunks, the replacement pool process's
# model load and a second kill: the other worker goes on scoring alone meanwhile (80 chunks
# were all done in ~6 s). For the whole worker's kill, not many more than a few seconds'
# worth, as the survivor scores the rest alone before the reaper's wait.
BATCH_CHUNK_ROWS = 150
POOL_KILL_CHUNKS, WORKER_KILL_CHUNKS = 300, 60


@cache
def _batch_input(chunks: int) -> tuple[pd.DataFrame, bytes]:
    """(the rows, as a Parquet file in row groups of BATCH_CHUNK_ROWS): `chunks` chunks of
    random iris rows inside the schema's ranges, so every row is scored."""
    rng = np.random.default_rng(chunks)
    frame = pd.DataFrame(
        {
            name: rng.uniform(low, high, chunks * BATCH_CHUNK_ROWS).round(2)
            for name, low, high in zip(FEATURES, LOWS, HIGHS, strict=True)
        }
    )
    sink = io.BytesIO()
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, sink, row_group_size=BATCH_CHUNK_ROWS)
    return frame, sink.getvalue()


def _batch_job_submit(cluster: Cluster, chunks: int) -> int:
    """A batch job of _batch_input(chunks), scored by v1, submitted through the first
    replica."""
    _, data = _batch_input(chunks)
    status, body = live.http_upload(
        f"{cluster.webs[0].url}{API}/batch-jobs",
        token=cluster.staff,
        fields={"version": "1", "chunk_rows": str(BATCH_CHUNK_ROWS)},
        files={"file": ("rows.parquet", data)},
    )
    assert status == 202, body
    return body["id"]


def _batch_job(cluster: Cluster, job_id: int) -> dict:
    status, body = live.http_json(
        "GET", f"{cluster.webs[1].url}{API}/batch-jobs/{job_id}", token=cluster.staff
    )
    assert status == 200, body
    return body


def _batch_chunks(cluster: Cluster, job_id: int, status: str | None = None) -> dict[int, int]:
    """{chunk index: attempts} of a job's chunks (those in `status`), from the database."""
    rows = cluster.query(
        "SELECT index, attempts FROM predictions_batchchunk WHERE job_id = %s "
        "AND (%s IS NULL OR status = %s)",
        (job_id, status, status),
    )
    return dict(rows)


def _batch_started(cluster: Cluster, job_id: int):
    """The job once a few of its chunks are done and most are still to run."""
    job = _batch_job(cluster, job_id)
    assert job["status"] in ("queued", "running"), job
    if job["chunks_done"] >= 2:
        assert job["chunks_done"] < job["chunks_total"] // 2, f"too fast to be killed: {job}"
        return job
    return None


def _batch_finished(cluster: Cluster, job_id: int):
    job = _batch_job(cluster, job_id)
    return job if job["status"] in ("succeeded", "failed", "cancelled") else None


def _batch_output_check(cluster: Cluster, job: dict, chunks: int) -> None:
    """The output file, read through the job's download link (on S3 a presigned URL to the
    bucket, not the API), holds every input row exactly once, with the answers of the
    version's estimator loaded in this process (downloaded through the API, SHA-256 checked)
    predicting the same rows."""
    frame, _ = _batch_input(chunks)
    link = job["links"]["output"]
    assert link.startswith(cluster.s3.endpoint) and "Signature=" in link, link
    with urllib.request.urlopen(link, timeout=60) as response:
        table = pq.read_table(io.BytesIO(response.read()))
    rows = table["row"].to_numpy()
    assert len(rows) == len(frame) and np.array_equal(np.sort(rows), np.arange(len(frame)))
    order = np.argsort(rows)
    with Registry(cluster.webs[1].url, cluster.staff) as registry:
        estimator = registry.load_model("iris", job["version"])
    assert np.array_equal(table["prediction"].to_numpy()[order], estimator.predict(frame))
    expected = estimator.predict_proba(frame)
    for j, label in enumerate(estimator.classes_):
        scored = table[f"probability_{label}"].to_numpy()[order]
        np.testing.assert_allclose(scored, expected[:, j], rtol=0, atol=1e-12)
    assert set(table["version"].to_pylist()) == {job["version"]}


def _finishes(cluster: Cluster, job_id: int) -> int:
    """How many times the job was marked succeeded (its audit trail's "finish" rows)."""
    ((count,),) = cluster.query(
        "SELECT count(*) FROM mlregistry_auditevent WHERE object_type = 'predictions.batchjob' "
        "AND object_id = %s AND verb = 'finish'",
        (str(job_id),),
    )
    return count


def _pool_process(worker: Member, not_in: set[int], timeout: float = 30) -> int:
    """The worker's pool process (concurrency 1), once it is not one of `not_in` (killed)."""

    def fresh() -> int | None:
        assert worker.process.poll() is None, worker.run_log()[-3000:]
        pids = [pid for pid in live.children(worker.process.pid) if pid not in not_in]
        return pids[0] if pids else None

    return live.wait_for(fresh, timeout=timeout, every=0.05, what=f"{worker.name}'s pool")


TASK_END = '"outcome": "'  # the line a worker logs when a task returns (or raises)


def _task_just_ended(worker: Member) -> None:
    """Returns just after `worker` ended a task: with the queue full of chunks, it is scoring
    the next one (not finishing an earlier job, nor between two tasks)."""
    mark = worker.log_size()
    live.wait_for(
        lambda: TASK_END in worker.log_from(mark),
        timeout=30,
        every=0.02,
        what=f"a task's end in {worker.name}",
    )
    time.sleep(0.05)  # the next chunk is taken in milliseconds and takes ~0.1 s


def _lost_chunks(cluster: Cluster, job_id: int, timeout: float = 30) -> dict[int, int]:
    """{index: attempts} of the chunks a killed pool process was scoring: running now, and,
    once every live pool process has ended the task it runs now (one at a time, so a chunk
    it scores is done by then), still running with the same attempts (its message is queued
    again behind the others) or started again since."""
    now = _batch_chunks(cluster, job_id, "running")
    marks = {w.name: w.log_size() for w in cluster.workers}
    live.wait_for(
        lambda: (
            all(TASK_END in w.log_from(marks[w.name]) for w in cluster.workers)
            or _batch_finished(cluster, job_id)
        ),
        timeout=timeout,
        every=0.1,
        what="a task's end in each worker",
    )
    running = _batch_chunks(cluster, job_id, "running")
    attempts = _batch_chunks(cluster, job_id)
    return {i: tried for i, tried in now.items() if running.get(i) == tried or attempts[i] > tried}


def test_a_batch_chunk_whose_pool_process_is_killed_is_redelivered_and_scored_once(
    running: Cluster,
):
    """SIGKILL of the pool process scoring a chunk: the worker sees it lost and the chunk's
    message goes back to the queue (acks_late, reject on worker lost); a worker scores the
    chunk again, the job succeeds once, and its output holds every row exactly once with the
    model's answers."""
    victim = running.workers[0]
    began = time.monotonic()
    job_id = _batch_job_submit(running, POOL_KILL_CHUNKS)
    live.wait_for(lambda: _batch_started(running, job_id), timeout=60, what="chunks")
    started = time.monotonic()

    # A kill between two chunks (or during another task) loses no chunk: kill again until
    # one is lost.
    killed: set[int] = set()
    lost: dict[int, int] = {}
    while not lost:
        assert len(killed) < 4, f"no chunk lost after {len(killed)} kills"
        assert not _batch_finished(running, job_id), "the job ended before a chunk was lost"
        pid = _pool_process(victim, killed)
        _task_just_ended(victim)
        mark = victim.log_size()
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
        live.wait_for(
            lambda p=pid, m=mark: f"pid:{p} exited" in victim.log_from(m),
            timeout=30,
            what="the worker seeing its pool process die",
        )
        lost = _lost_chunks(running, job_id)
    lost_at = time.monotonic()

    job = live.wait_for(lambda: _batch_finished(running, job_id), timeout=120, what="the end")
    ended = time.monotonic()
    print(
        f"\nbatch pool kill: {job['chunks_total']} chunks of {BATCH_CHUNK_ROWS} rows; "
        f"{started - began:.1f}s to the first chunks; {len(killed)} kill(s) until chunk(s) "
        f"{sorted(lost)} lost, seen {lost_at - started:.1f}s later; job {job['status']} "
        f"{ended - lost_at:.1f}s after that; {ended - began:.1f}s in all"
    )
    assert job["status"] == "succeeded", job
    assert (job["rows_done"], job["rows_failed"]) == (POOL_KILL_CHUNKS * BATCH_CHUNK_ROWS, 0)
    assert job["chunks_done"] == job["chunks_total"] == POOL_KILL_CHUNKS, job
    attempts = _batch_chunks(running, job_id)
    assert _batch_chunks(running, job_id, "done") == attempts
    # The lost chunks were started once more; every other chunk once.
    assert {i: attempts[i] for i in lost} == {i: tried + 1 for i, tried in lost.items()}
    assert {tried for i, tried in attempts.items() if i not in lost} == {1}, attempts
    assert "WorkerLostError" in victim.run_log()
    assert _finishes(running, job_id) == 1
    _batch_output_check(running, job, POOL_KILL_CHUNKS)


def test_a_batch_job_whose_whole_worker_is_killed_is_reaped_then_resumed_without_redoing_chunks(
    running: Cluster,
):
    """SIGKILL of a whole worker (main process and pool) in the middle of a batch job: the
    chunk it held goes back to the queue only after the broker's visibility timeout (hours).
    The other worker scores the rest; then either it finished the job (the dead worker held
    no chunk), or the reaper fails the job (`worker_lost`) within JOB_STALLED_AFTER_SECONDS of
    its last heartbeat, and a resume through the API scores only the chunks not done."""
    victim, survivor = running.workers
    began = time.monotonic()
    job_id = _batch_job_submit(running, WORKER_KILL_CHUNKS)
    live.wait_for(lambda: _batch_started(running, job_id), timeout=60, what="chunks")
    _task_just_ended(victim)
    live.kill(victim.process)
    killed_at = time.monotonic()

    # The job's progress is polled so the reaper's delay is measured from its last change.
    progress = {"chunks": -1, "at": killed_at}

    def finished():
        job = _batch_job(running, job_id)
        if job["chunks_done"] != progress["chunks"]:
            progress.update(chunks=job["chunks_done"], at=time.monotonic())
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    bound = STALLED_AFTER + REAPER_EVERY + 10
    job = live.wait_for(finished, timeout=120 + bound, what="the job's end or its reaping")
    ended = time.monotonic()
    timings = (
        f"\nbatch worker kill: killed {killed_at - began:.1f}s after submitting; the survivor "
        f"scored until +{progress['at'] - killed_at:.1f}s; job {job['status']} "
        f"({job['error_type'] or '-'}) at +{ended - killed_at:.1f}s"
    )
    if job["status"] == "failed":
        assert job["error_type"] == "worker_lost", job
        assert "The worker running this job stopped" in job["error"], job
        assert ended - progress["at"] < bound, timings
        before = _batch_chunks(running, job_id)
        done = _batch_chunks(running, job_id, "done")
        assert 0 < len(done) < len(before) == job["chunks_total"], before

        status, body = live.http_json(
            "POST",
            f"{running.webs[0].url}{API}/batch-jobs/{job_id}/resume",
            token=running.staff,
            body={},
        )
        assert status == 202 and body["status"] == "running", body
        resumed = time.monotonic()
        job = live.wait_for(lambda: _batch_finished(running, job_id), timeout=60, what="resume")
        after = _batch_chunks(running, job_id)
        timings += (
            f"; resumed, {len(before) - len(done)} chunk(s) scored again by {survivor.name} "
            f"in {time.monotonic() - resumed:.1f}s"
        )
        print(timings)
        assert job["status"] == "succeeded", job
        # Done chunks kept (not started again); each other one started once more.
        assert {i: after[i] for i in done} == done
        assert all(after[i] == before[i] + 1 for i in after if i not in done), (before, after)
    else:
        print(timings + " (the dead worker held no chunk)")
        assert job["status"] == "succeeded", job
    assert (job["rows_done"], job["rows_failed"]) == (WORKER_KILL_CHUNKS * BATCH_CHUNK_ROWS, 0)
    assert len(_batch_chunks(running, job_id, "done")) == WORKER_KILL_CHUNKS
    assert _finishes(running, job_id) == 1
    _batch_output_check(running, job, WORKER_KILL_CHUNKS)


# --- A web replica killed under load -------------------------------------------------------


def test_a_web_replica_killed_under_load_leaves_the_other_answering_and_the_log_single(
    running: Cluster,
):
    """Four clients send predictions to either replica, each with its own X-Request-ID, and
    retry a failed one on the other replica with the same id (as a load balancer would). One
    replica is SIGKILLed midway: every request sent to the other is answered, every request is
    answered by one of them, and no prediction-log row is written twice."""
    victim, survivor = running.webs
    prefix = f"kill-{uuid.uuid4().hex[:8]}-"
    results: list[tuple[str, str, object]] = []
    stop = threading.Event()

    def client(seed: int) -> None:
        rng = random.Random(seed)  # noqa: S311 - test data
        while not stop.is_set():
            request_id = f"{prefix}{uuid.uuid4().hex}"
            row = _row(rng)
            order = [victim, survivor] if rng.random() < 0.5 else [survivor, victim]
            for member in order:
                try:
                    status, _ = predict(member, running.client, row, request_id)
                except (OSError, http.client.HTTPException) as exc:
                    results.append((request_id, member.name, repr(exc)))
                    continue
                results.append((request_id, member.name, status))
                break

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(3)
        sent_before_kill = len(results)
        live.kill(victim.process)
        time.sleep(4)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)

    by_survivor = [status for _, name, status in results if name == survivor.name]
    assert by_survivor and set(by_survivor) == {200}, sorted(set(map(str, by_survivor)))
    after_kill = results[sent_before_kill:]
    assert any(name == survivor.name for _, name, _ in after_kill)
    assert any(name == victim.name and status != 200 for _, name, status in after_kill)
    request_ids = {request_id for request_id, _, _ in results}
    answered = {request_id for request_id, _, status in results if status == 200}
    assert answered == request_ids, len(request_ids - answered)

    # The survivor's rows reach the log within its flush interval (1 s); a row the victim had
    # buffered but not flushed dies with it (the log's documented loss on a crash).
    survivor_answered = {
        r for r, name, status in results if name == survivor.name and status == 200
    }

    def logged() -> set[str]:
        rows = running.query(
            "SELECT request_id FROM predictions_predictionlog WHERE request_id LIKE %s",
            (prefix + "%",),
        )
        return {r for (r,) in rows}

    live.wait_for(lambda: survivor_answered <= logged(), timeout=30, what="the log's flush")
    twice = running.query(
        "SELECT request_id, row_index, count(*) FROM predictions_predictionlog "
        "WHERE request_id LIKE %s GROUP BY 1, 2 HAVING count(*) > 1",
        (prefix + "%",),
    )
    assert twice == []


# --- A backup taken by a worker, restored into an empty database and store -----------------


def _answers(member: Member, token: str, rows: list[dict]) -> list[tuple]:
    found = []
    for row in rows:
        status, body = predict(member, token, row)
        assert status == 200, body
        found.append((body["model_version"], body["prediction"], body.get("probabilities")))
    return found


def test_a_backup_taken_by_a_worker_restores_into_an_empty_database_and_store(
    running: Cluster,
):
    rng = random.Random(7)  # noqa: S311 - test data
    rows = [_row(rng) for _ in range(20)]
    before = _answers(running.webs[0], running.client, rows)

    marks = {w.name: w.log_size() for w in running.workers}
    slot = f"cluster-{uuid.uuid4().hex[:8]}"
    publisher = Celery(
        "cluster-test", broker=running.env["CELERY_BROKER_URL"], set_as_current=False
    )
    publisher.send_task("backups.tasks.backup_create_task", kwargs={"slot": slot})

    def verified():
        found = running.query("SELECT status, path FROM backups_backup WHERE slot = %s", (slot,))
        assert not found or found[0][0] in ("running", "verified"), found
        return found[0][1] if found and found[0][0] == "verified" else None

    folder = live.wait_for(verified, timeout=180, what="the backup")

    def taken_by() -> list[str]:
        return [
            w.name
            for w in running.workers
            if "backup_create_task SUCCESS" in w.log_from(marks[w.name])
        ]

    # The worker logs the task's end after its last commit, so a moment after "verified".
    finished_by = live.wait_for(taken_by, timeout=15, what="the backup task's end in a log")
    assert len(finished_by) == 1, finished_by

    _, restored_url = running.database_create("restored")
    # An empty bucket for the artifacts; the backups are read where the worker wrote them.
    empty = f"restored-{uuid.uuid4().hex[:10]}"
    storage = {
        **cluster_storage_env(running.s3, artifacts_bucket=empty, backups_bucket=empty),
        "BACKUP_STORAGE_URL": running.env["BACKUP_STORAGE_URL"],
    }
    env = {
        "DATABASE_URL": restored_url,
        # A cache of its own: nothing the first cluster cached may answer for the restored one.
        "REDIS_URL": running.env["REDIS_URL"].rsplit("/", 1)[0] + "/3",
        "CELERY_BROKER_URL": running.env["REDIS_URL"].rsplit("/", 1)[0] + "/4",
        "CELERY_RESULT_BACKEND": running.env["REDIS_URL"].rsplit("/", 1)[0] + "/5",
        **storage,
    }
    out = running.manage("restore_backup", Path(folder).name, "--yes", **env)
    assert "Restored" in out, out
    listed = running.s3.client().list_objects_v2(Bucket=empty, Prefix="artifacts/")
    assert listed.get("KeyCount", 0) > 0, "no artifact restored into the empty bucket"

    replica = running.web_member("web-restored", **env)
    running.start(replica)
    try:
        after = _answers(replica, running.client, rows)
    finally:
        live.stop(replica.process, timeout=15)
    assert after == before
