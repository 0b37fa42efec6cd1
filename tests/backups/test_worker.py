"""A real Celery worker process against the local broker (RabbitMQ or Redis), not eager mode."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from celery import Celery
from django.conf import settings
from django.db import connection
from kombu import Connection

from backups.models import Backup, JobRun
from config.logging import request_id_var
from mlregistry.models import RegisteredModel
from mlregistry.storage import get_backup_storage
from quality import training
from quality.models import TrainingJob
from tests import factories, live
from tests.backups.conftest import backup_folders
from tests.storage import store_env

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True), pytest.mark.storage]

REPO = Path(__file__).resolve().parents[2]
WAIT_SECONDS = 120


@pytest.fixture
def broker(request):
    url = live.broker_url()
    if request.node.get_closest_marker("keeps_a_dead_workers_message"):
        # RabbitMQ hands a dead consumer's unacknowledged message on as soon as its connection
        # drops, so the next worker runs the job again (the pool-kill tests show that). Redis
        # keeps it until the visibility timeout, hours: only the reaper ends such a job.
        url = url if url and url.startswith("redis") else live.redis_broker_url()
        if url is None:
            pytest.skip("needs a Redis broker (a dead worker's message stays unacknowledged)")
    if url is None:
        pytest.skip("no broker answers: set CELERY_TEST_BROKER_URL or start RabbitMQ/Redis")
    # A queue of its own: other test runs may share the broker.
    queue = f"test-backups-{uuid.uuid4().hex[:10]}"
    publisher = Celery("tests", broker=url, set_as_current=False)
    yield url, queue, publisher
    try:
        with Connection(url, connect_timeout=2) as conn:
            conn.default_channel.queue_delete(queue)
    except Exception:  # noqa: S110 - a queue left behind is harmless
        pass


class Worker:
    """The test's database as the worker sees it, and the worker process itself."""

    def __init__(self, tmp_path: Path, broker_url: str, queue: str):
        self.tmp_path = tmp_path
        self.queue = queue
        self.log = tmp_path / "worker.log"
        self.processes: list[subprocess.Popen] = []
        self.sqlite_file: Path | None = None
        db = settings.DATABASES["default"]
        if connection.vendor == "postgresql":
            auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
            database_url = f"postgres://{auth}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        else:
            # The SQLite test database lives in memory: hand the worker a file copy of it.
            self.sqlite_file = tmp_path / "worker.sqlite3"
            target = sqlite3.connect(self.sqlite_file)
            connection.ensure_connection()
            connection.connection.backup(target)
            target.close()
            database_url = f"sqlite:///{self.sqlite_file}"
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "CELERY_BROKER_URL": broker_url,
            **store_env(),
            "VAR_DIR": str(tmp_path / "var"),
            "LOG_FORMAT": "json",
            "CELERY_TASK_ALWAYS_EAGER": "false",
            "KILL_TEST_MARKER": str(tmp_path / "paused.pid"),
        }

    def start(self, app: str = "config") -> subprocess.Popen:
        command = [sys.executable, "-m", "celery", "-A", app, "worker", "--loglevel", "INFO"]
        command += ["--concurrency", "1", "--pool", "prefork", "-Q", self.queue]
        command += ["--without-heartbeat", "--without-mingle", "--without-gossip"]
        command += ["-n", f"{self.queue.replace(',', '+')}-{len(self.processes)}@%h"]
        with open(self.log, "ab") as log:
            process = subprocess.Popen(
                command,
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def backups(self) -> list[dict]:
        return self._rows(Backup, "slot", "status", "attempts", "path")

    def job_runs(self) -> list[dict]:
        return self._rows(JobRun, "job", "outcome")

    def _rows(self, model, *fields: str) -> list[dict]:
        if self.sqlite_file is None:
            return list(model.objects.values(*fields))
        with sqlite3.connect(self.sqlite_file, timeout=20) as db:
            db.row_factory = sqlite3.Row
            query = f"SELECT {', '.join(fields)} FROM {model._meta.db_table}"  # noqa: S608
            return [dict(row) for row in db.execute(query)]

    def wait_for(self, predicate, what: str):
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            if all(p.poll() is not None for p in self.processes):
                break
            time.sleep(0.5)
        pytest.fail(f"timed out waiting for {what}; worker log:\n{self.log.read_text()[-4000:]}")


@pytest.fixture
def worker(tmp_path, broker, registry):
    url, queue, _ = broker
    worker = Worker(tmp_path, url, queue)
    yield worker
    worker.stop()


def _verified(worker: Worker):
    return [b for b in worker.backups() if b["status"] == "verified"]


def test_a_real_worker_runs_the_scheduled_backup_task_end_to_end(worker, broker):
    _, queue, publisher = broker
    worker.start()
    token = request_id_var.set("req-from-the-admin")
    try:
        publisher.send_task("backups.tasks.backup_create_task", queue=queue)
    finally:
        request_id_var.reset(token)

    (backup,) = worker.wait_for(lambda: _verified(worker), "a verified backup")

    # No slot given: the hour the message was published, so a duplicate publish reuses it.
    assert backup["slot"].startswith("scheduled-")
    assert get_backup_storage().exists(f"{backup['path']}/manifest.json")
    finished = worker.wait_for(
        lambda: [
            line
            for line in map(_json_or_none, worker.log.read_text().splitlines())
            if line and line.get("message", "").startswith("job finished")
        ],
        "the job's log line",
    )
    assert finished[0]["outcome"] == "success"
    assert finished[0]["job"] == "backup"
    assert finished[0]["request_id"] == "req-from-the-admin"
    assert finished[0]["duration_s"] >= 0
    # Recorded where every process's /metrics reads it, not in the worker's memory.
    assert worker.job_runs() == [{"job": "backup", "outcome": "success"}]


def test_a_task_killed_mid_backup_is_redelivered_and_makes_one_backup(worker, broker):
    _, queue, publisher = broker
    worker.start(app="tests.backups.slow_worker")
    publisher.send_task(
        "backups.tasks.backup_create_task", kwargs={"slot": "killed-slot"}, queue=queue
    )
    marker = Path(worker.env["KILL_TEST_MARKER"])
    worker.wait_for(lambda: marker.exists() and marker.read_text(), "the paused attempt")

    # The child running the task dies as under the OOM killer; acks_late keeps the message.
    os.kill(int(marker.read_text()), signal.SIGKILL)

    (backup,) = worker.wait_for(lambda: _verified(worker), "the redelivered attempt")
    assert backup["slot"] == "killed-slot"
    assert backup["attempts"] == 2
    assert len(worker.backups()) == 1
    assert backup_folders() == [backup["path"]]


@pytest.mark.keeps_a_dead_workers_message
def test_a_dead_worker_s_backup_is_reaped_and_the_next_run_goes_on(worker, broker):
    _, queue, publisher = broker
    # Beats every second, stalled after five: the same reaper, on a test's clock.
    worker.env.update(JOB_HEARTBEAT_SECONDS="1", JOB_STALLED_AFTER_SECONDS="5")
    first = worker.start(app="tests.backups.slow_worker")
    publisher.send_task(
        "backups.tasks.backup_create_task", kwargs={"slot": "lost-worker"}, queue=queue
    )
    marker = Path(worker.env["KILL_TEST_MARKER"])
    worker.wait_for(lambda: marker.exists() and marker.read_text(), "the paused attempt")
    assert [b["status"] for b in worker.backups()] == ["running"]

    # The whole worker dies (its machine is gone): nobody is left to requeue the message, and
    # the broker keeps it unacknowledged until the visibility timeout (hours).
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    child = int(marker.read_text())
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the pool child outlived its worker"
    time.sleep(6)

    worker.start()
    publisher.send_task("backups.tasks.stalled_jobs_reap_task", queue=queue)
    (lost,) = worker.wait_for(
        lambda: [b for b in worker.backups() if b["status"] == "failed"], "the reaper"
    )
    assert lost["slot"] == "lost-worker"
    (row,) = worker._rows(Backup, "error")
    assert "no heartbeat since" in row["error"]
    assert worker.job_runs() == [{"job": "reap_stalled_jobs", "outcome": "success"}]

    # The next scheduled run is not blocked by the dead one.
    publisher.send_task("backups.tasks.backup_create_task", kwargs={"slot": "next"}, queue=queue)
    (done,) = worker.wait_for(lambda: _verified(worker), "the next backup")
    assert done["slot"] == "next"
    assert {b["slot"]: b["status"] for b in worker.backups()} == {
        "lost-worker": "failed",
        "next": "verified",
    }


@pytest.mark.keeps_a_dead_workers_message
def test_a_dead_worker_s_training_job_is_reaped_and_the_next_job_runs(tmp_path, broker, registry):
    url, queue, publisher = broker
    model = RegisteredModel.objects.get(name="iris")
    dataset = factories.iris_dataset_create("iris-data", actor="tests")

    def job():
        return training.training_job_create(
            model=model,
            dataset=dataset,
            actor="tests",
            estimator="LogisticRegression",
            enqueue=False,
        )

    lost, following = job(), job()
    # The rows exist before the worker's view of the database is taken (a copy on SQLite).
    worker = Worker(tmp_path, url, queue)
    worker.env.update(JOB_HEARTBEAT_SECONDS="1", JOB_STALLED_AFTER_SECONDS="5")
    try:
        first = worker.start(app="tests.backups.slow_worker")
        publisher.send_task("mlregistry.tasks.training_job_run_task", args=[lost.pk], queue=queue)
        marker = Path(worker.env["KILL_TEST_MARKER"])
        worker.wait_for(lambda: marker.exists() and marker.read_text(), "the paused training")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        time.sleep(6)

        worker.start()
        publisher.send_task("backups.tasks.stalled_jobs_reap_task", queue=queue)

        def jobs() -> dict[int, dict]:
            return {r["id"]: r for r in worker._rows(TrainingJob, "id", "status", "error_type")}

        worker.wait_for(lambda: jobs()[lost.pk]["status"] == "failed", "the reaper")
        assert jobs()[lost.pk]["error_type"] == "worker_lost"

        publisher.send_task(
            "mlregistry.tasks.training_job_run_task", args=[following.pk], queue=queue
        )
        worker.wait_for(lambda: jobs()[following.pk]["status"] == "succeeded", "the next job")
        assert jobs()[lost.pk]["status"] == "failed"
    finally:
        worker.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _json_or_none(line: str):
    try:
        return json.loads(line)
    except ValueError:
        return None
