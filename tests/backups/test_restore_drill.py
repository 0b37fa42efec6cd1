"""Disaster recovery drills: `manage.py restore_backup PATH --yes` into a database that has no
tables at all, in a fresh process, as an operator runs it on a new server.

PostgreSQL: a throwaway database named after the test database, dropped and created by the test.
SQLite: an empty file.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import psycopg2
import pytest
from django.conf import settings
from django.core.files.storage import storages
from django.db import connection

from backups import services
from mlregistry.storage import storage_walk
from tests.backups.conftest import artifact_digests, production_predictions
from tests.storage import store_digests, store_env, store_read, store_sibling

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.storage]

REPO = Path(__file__).resolve().parents[2]

# Run in the restored database: what a drill checks, as JSON.
INSPECT = """
import json, django
django.setup()
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from backups import services
from backups.models import Backup
from tests.backups.conftest import production_predictions
executor = MigrationExecutor(connection)
print(json.dumps({
    "counts": services.registry_row_counts(),
    "unapplied": len(executor.migration_plan(executor.loader.graph.leaf_nodes())),
    "catalogue": list(Backup.objects.order_by("id").values("id", "slot", "status", "path")),
    "predictions": production_predictions("iris").tolist(),
}))
"""


def _manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _inspect(env: dict[str, str]) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", INSPECT],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _drill(tmp_path: Path, database_url: str, *, offsite: bool) -> None:
    """Backs up the registry, restores it into `database_url` (no tables) in a new process,
    and checks rows, artifacts, predictions, the catalogue and the id sequence."""
    counts = services.registry_row_counts()
    digests = artifact_digests()
    predictions = production_predictions("iris")
    older = services.backup_create(slot="older", actor="tests")
    backup = services.backup_create(slot="drill", actor="tests")
    # Named as backup_create prints it: a folder, or s3://bucket/prefix/folder.
    source = str(services.backup_location(backup))
    backups = settings.STORAGES["backups"]
    if offsite:
        # The new server's backup storage is empty; the backup comes back from an off-site
        # copy, a local folder.
        source = str(_download(backup, tmp_path / "offsite"))
        backups = store_sibling(tmp_path / "new-server-backups", private=True)
    artifacts = store_sibling(tmp_path / "new-server-artifacts")
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)},
        "DATABASE_URL": database_url,
        **store_env(artifacts, backups),
        "VAR_DIR": str(tmp_path / "var"),
        "CELERY_TASK_ALWAYS_EAGER": "false",
    }

    dry = _manage(env, "restore_backup", str(source))
    assert dry.returncode == 0, dry.stderr
    assert "no tables" in dry.stdout
    assert "nothing changed" in dry.stdout

    restored = _manage(env, "restore_backup", str(source), "--yes")
    assert restored.returncode == 0, restored.stderr + restored.stdout
    assert "row count differs" not in restored.stderr

    state = _inspect(env)
    assert state["counts"] == counts
    assert state["unapplied"] == 0
    np.testing.assert_array_equal(np.array(state["predictions"]), predictions)
    assert store_digests(storages.create_storage(artifacts)) == digests
    # The backup restored from is in the catalogue, verified, under the id it had, and its
    # folder is where verification and the next restore look.
    by_slot = {row["slot"]: row for row in state["catalogue"]}
    assert by_slot["drill"]["id"] == backup.pk
    assert by_slot["drill"]["status"] == "verified"
    assert storages.create_storage(backups).exists(f"{by_slot['drill']['path']}/manifest.json")
    if offsite:
        # The older backup's folder did not come along: no row claims files that are not here.
        assert "older" not in by_slot
    else:
        assert by_slot["older"]["id"] == older.pk
    verify = _manage(env, "backup_verify", str(backup.pk))
    assert verify.returncode == 0, verify.stderr + verify.stdout

    # Ids go on from where they were: a backup on the new server never reuses one.
    after = _manage(env, "backup_create", "--slot", "after-recovery")
    assert after.returncode == 0, after.stderr
    state = _inspect(env)
    ids = {row["slot"]: row["id"] for row in state["catalogue"]}
    assert ids["after-recovery"] > backup.pk


def _download(backup, folder: Path) -> Path:
    """A copy of a stored backup's folder in local `folder`, as an operator keeps off-site."""
    location = services.backup_location(backup)
    target = folder / location.name
    target.mkdir(parents=True)
    for name in storage_walk(location.storage, location.name):
        (target / name.rsplit("/", 1)[-1]).write_bytes(store_read(name, location.storage))
    return target


@pytest.mark.parametrize("offsite", [False, True], ids=["in-place", "offsite-copy"])
def test_restore_into_an_empty_sqlite_file_creates_the_schema_and_the_catalogue(
    registry, tmp_path, offsite
):
    if connection.vendor != "sqlite":
        pytest.skip("the SQLite drill; the PostgreSQL one runs on PostgreSQL")
    empty = tmp_path / "new-server.sqlite3"
    empty.touch()
    _drill(tmp_path, f"sqlite:///{empty}", offsite=offsite)


@pytest.fixture
def drill_database():
    """A database of its own, named after the test database, with no tables."""
    db = settings.DATABASES["default"]
    name = f"{db['NAME']}_drill"
    params = {
        "host": db["HOST"],
        "port": db["PORT"],
        "user": db["USER"],
        "password": db.get("PASSWORD") or None,
        "dbname": "postgres",
    }

    def admin(sql: str) -> None:
        conn = psycopg2.connect(**params)
        conn.autocommit = True
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql)
        finally:
            conn.close()

    admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin(f'CREATE DATABASE "{name}"')
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    yield f"postgres://{auth}@{db['HOST']}:{db['PORT']}/{name}"
    admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.postgres
@pytest.mark.parametrize("offsite", [False, True], ids=["in-place", "offsite-copy"])
def test_restore_into_a_new_postgres_database_creates_the_schema_and_the_catalogue(
    registry, tmp_path, drill_database, offsite
):
    _drill(tmp_path, drill_database, offsite=offsite)


def test_commands_on_a_database_without_tables_say_what_to_do(tmp_path):
    empty = tmp_path / "new-server.sqlite3"
    empty.touch()
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{empty}", "VAR_DIR": str(tmp_path / "var")}
    env["BACKUP_DIR"] = str(tmp_path / "backups")
    for command in (["backup_verify"], ["backup_create"], ["restore_backup", "1"]):
        result = _manage(env, *command)
        assert result.returncode == 1, result.stderr
        assert "no tables" in result.stderr
        assert "Traceback" not in result.stderr
