"""The cluster: the product as a team runs it past one machine, on loopback.

Two web replicas (deploy/serve, each its own granian process group and so its own model
cache), two Celery workers and one beat, sharing one PostgreSQL database (created here and
dropped afterwards), one Redis (a redis-server of its own on a free port: db 0 the cache, db 1
the broker, db 2 Celery's result backend) and one artifact and backup store. Each process has
a VAR_DIR of its own, as if it ran on a machine of its own: only what the environment names is
shared.

Nothing here is mocked. A test that kills a process leaves it dead; the `running` fixture starts
it again (`Cluster.restart_dead`) before the next test, so one cluster serves the whole module.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from tests import live
from tests.live import database_create, database_drop, database_url

# A dead worker's job is failed STALLED_AFTER seconds after its last heartbeat (1 s apart), by
# the reaper that beat runs every REAPER_EVERY seconds; a job is started at most MAX_ATTEMPTS
# times. The window is generous: on a machine busy with other work a redelivered job may take
# seconds to start again, and must not be reaped in between.
STALLED_AFTER = 15
REAPER_EVERY = 2
MAX_ATTEMPTS = 3


def cluster_storage_env(s3: Any, *, artifacts_bucket: str, backups_bucket: str) -> dict[str, str]:
    """THE one place the cluster's storage is configured: every process (web, worker, beat,
    manage.py, the restore) gets its storage from exactly these variables: artifacts and
    backups in buckets of the loopback S3 server (tests/s3.py), as replicas on several
    machines would share them."""
    s3.bucket_create(artifacts_bucket)
    s3.bucket_create(backups_bucket)
    return {
        **s3.aws_env(),
        "ARTIFACT_STORAGE_URL": f"s3://{artifacts_bucket}/artifacts",
        "BACKUP_STORAGE_URL": f"s3://{backups_bucket}/backups",
    }


# Runs in `manage.py shell` against the cluster's database: who calls, what is served.
_SETUP = """
import json
from django.contrib.auth import get_user_model
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from mlregistry import services
from tests import factories

staff = get_user_model().objects.create_superuser("ops", password="ops-password")
client = factories.user_create("client")
iris = factories.registered_model_create("iris", actor=staff)
versions = [factories.version_create(iris, c=c, actor=staff) for c in (1.0, 0.05, 20.0)]
services.model_version_transition(version=versions[0], stage="production", actor=staff)
factories.iris_dataset_create("iris-data", actor=staff)
# An operator's edit in the admin: the reaper every 2 s instead of every minute, so a test
# waits seconds, not a minute, for a dead worker's job to be failed.
every, _ = IntervalSchedule.objects.get_or_create(
    every=REAPER_EVERY, period=IntervalSchedule.SECONDS
)
PeriodicTask.objects.filter(name="stalled-jobs-reaper").update(interval=every, crontab=None)
tokens = {"staff": factories.token_create(staff), "client": factories.token_create(client)}
print(json.dumps(tokens))
"""


@dataclass
class Member:
    """One process of the cluster: what it is, how to start it again, where it logs."""

    name: str
    start: Any  # () -> Popen
    log: Path
    process: Any = None
    port: int | None = None
    started_at_byte: int = 0  # where this run's lines begin in the log

    def launch(self) -> None:
        self.started_at_byte = self.log_size()
        self.process = self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def log_from(self, offset: int) -> str:
        """The log from byte `offset` on (a mark taken with log_size())."""
        if not self.log.exists():
            return ""
        with open(self.log, "rb") as file:
            file.seek(offset)
            return file.read().decode(errors="replace")

    def run_log(self) -> str:
        """The log lines of the current run only."""
        return self.log_from(self.started_at_byte)


@dataclass
class Cluster:
    root: Path
    db_name: str
    env: dict[str, str]
    shared: Path
    staff: str = ""
    client: str = ""
    webs: list[Member] = field(default_factory=list)
    workers: list[Member] = field(default_factory=list)
    beat: Member | None = None
    extra_databases: list[str] = field(default_factory=list)
    s3: Any = None  # the loopback S3 server (tests/s3.py) holding artifacts and backups

    def env_for(self, name: str, **overrides: str) -> dict[str, str]:
        var_dir = self.root / "hosts" / name
        var_dir.mkdir(parents=True, exist_ok=True)
        return {**self.env, "VAR_DIR": str(var_dir), **overrides}

    def manage(self, *args: str, **overrides: str) -> str:
        return live.manage(self.env_for("manage", **overrides), *args)

    def web_member(self, name: str, **overrides: str) -> Member:
        """A web replica (not started): deploy/serve on a port of its own."""
        member = Member(name=name, start=None, log=self.root / f"{name}.log")
        member.port = live.free_port()
        env = self.env_for(name, **overrides)
        member.start = lambda: live.serve(env, member.port, workers=1, log=member.log)
        return member

    def web_add(self, name: str) -> Member:
        member = self.web_member(name)
        self.webs.append(member)
        return member

    def worker_add(self, name: str) -> Member:
        member = Member(name=name, start=None, log=self.root / f"{name}.log")
        env = self.env_for(name, LOG_LEVEL="INFO")
        member.start = lambda: live.celery_worker(env, name, log=member.log)
        self.workers.append(member)
        return member

    def beat_add(self) -> Member:
        member = Member(name="beat", start=None, log=self.root / "beat.log")
        env = self.env_for("beat", LOG_LEVEL="INFO")
        member.start = lambda: live.celery_beat(env, log=member.log)
        self.beat = member
        return member

    def members(self) -> list[Member]:
        return [*self.webs, *self.workers, *([self.beat] if self.beat else [])]

    def start(self, member: Member) -> None:
        member.launch()
        if member.port is not None:
            live.wait_ready(f"{member.url}/health/ready", member.process, timeout=90)

    def restart_dead(self) -> None:
        """Starts again every member that is not running (after a test killed one): all at
        once, then waits for each to be ready."""
        started = []
        for member in self.members():
            if member.process is None or member.process.poll() is not None:
                member.launch()
                started.append(member)
        for member in started:
            if member.port is not None:
                live.wait_ready(f"{member.url}/health/ready", member.process, timeout=120)
        self.workers_wait_ready()

    def workers_wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        for member in self.workers:
            while "ready." not in member.run_log():
                if member.process.poll() is not None:
                    pytest.fail(f"{member.name} exited:\n{member.run_log()[-3000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"{member.name} not ready:\n{member.run_log()[-3000:]}")
                time.sleep(0.2)

    def query(self, sql: str, params: tuple = (), *, db_name: str | None = None) -> list[tuple]:
        """Rows of one SQL query on the cluster's database (or another one of its own)."""
        url = database_url(db_name or self.db_name)
        with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def database_create(self, suffix: str) -> tuple[str, str]:
        name = f"{self.db_name}_{suffix}"
        url = database_create(name)
        self.extra_databases.append(name)
        return name, url


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_server) -> Iterator[Cluster]:
    if not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        pytest.skip("the cluster shares a PostgreSQL database: set DATABASE_URL=postgres://...")
    if not live.GRANIAN.exists() or shutil.which("redis-server") is None:
        pytest.skip("the cluster needs granian and redis-server")
    root = tmp_path_factory.mktemp("cluster")
    shared = root / "shared"
    shared.mkdir()
    # The cache may evict only what has a TTL; the broker's db must never lose a key (see
    # docs/scaling.md: one Redis for both is fine on loopback, not in production).
    redis, redis_port = live.redis_server(root, "--maxmemory-policy", "volatile-lru")
    db_name = f"mlr_cluster_{uuid.uuid4().hex[:10]}"
    buckets = f"cluster-{uuid.uuid4().hex[:10]}"
    env = live.product_env(
        root,
        DATABASE_URL=database_create(db_name),
        REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        CELERY_BROKER_URL=f"redis://127.0.0.1:{redis_port}/1",
        # Read by Celery itself; where a chord (a batch job's join) keeps its count.
        CELERY_RESULT_BACKEND=f"redis://127.0.0.1:{redis_port}/2",
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        # Every answer is checked, none refused for its rate.
        THROTTLE_PREDICT_RATE="none",
        THROTTLE_WRITE_RATE="none",
        THROTTLE_READ_RATE="none",
        PREDICTION_LOG_SAMPLE_RATE="1",
        PREDICTION_LOG_FLUSH_SECONDS="1",
        # A dead worker's job is found in seconds (the production defaults are 30 s / 180 s).
        JOB_HEARTBEAT_SECONDS="1",
        JOB_STALLED_AFTER_SECONDS=str(STALLED_AFTER),
        JOB_MAX_ATTEMPTS=str(MAX_ATTEMPTS),
        **cluster_storage_env(
            s3_server, artifacts_bucket=f"{buckets}-a", backups_bucket=f"{buckets}-b"
        ),
    )
    cluster = Cluster(root=root, db_name=db_name, env=env, shared=shared)
    cluster.s3 = s3_server
    try:
        cluster.manage("migrate", "--noinput")
        cluster.manage("setup_schedules")
        tokens = json.loads(
            cluster.manage("shell", "-c", _SETUP.replace("REAPER_EVERY", str(REAPER_EVERY)))
            .strip()
            .splitlines()[-1]
        )
        cluster.staff, cluster.client = tokens["staff"], tokens["client"]
        for name in ("web-a", "web-b"):
            cluster.web_add(name)
        for name in ("worker-a", "worker-b"):
            cluster.worker_add(name)
        cluster.beat_add()
        cluster.restart_dead()
        yield cluster
    finally:
        live.stop_all([m.process for m in cluster.members() if m.process is not None], 15)
        live.stop(redis, timeout=10)
        for name in [db_name, *cluster.extra_databases]:
            with contextlib.suppress(psycopg2.Error):
                database_drop(name)


@pytest.fixture
def running(cluster: Cluster) -> Cluster:
    """The cluster with every member up (a previous test may have killed one)."""
    cluster.restart_dead()
    return cluster
