import pytest
from celery import signals

from config import celery as celery_config


def test_published_tasks_carry_their_publish_time():
    headers: dict = {}
    signals.before_task_publish.send(sender="t", headers=headers, body=None)
    assert headers["published_at"]


def test_broker_folders_are_created_for_the_filesystem_transport(settings, tmp_path):
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(tmp_path / "in"),
        "processed_folder": str(tmp_path / "done"),
        "control_folder": str(tmp_path / "control"),
    }
    celery_config._broker_dirs_for_workers()
    assert (tmp_path / "in").is_dir()
    assert (tmp_path / "done").is_dir()
    assert (tmp_path / "control").is_dir()


@pytest.mark.django_db(transaction=True)
def test_a_task_keeps_its_database_connection_as_a_request_does(settings):
    """Celery's Django fixup would close every connection around each task (a new PostgreSQL
    backend per batch chunk); config.celery keeps them for CONN_MAX_AGE, as Django does."""
    from types import SimpleNamespace

    from django.db import connection

    from config.celery import _database_connections_kept, app

    assert app.conf.get("CELERY_DB_REUSE_MAX")  # the fixup's per-task close is off
    task = SimpleNamespace(request=SimpleNamespace(is_eager=False))
    connection.ensure_connection()
    opened = connection.connection
    settings.DATABASES["default"]["CONN_MAX_AGE"] = connection.settings_dict["CONN_MAX_AGE"] = 60
    connection.close_at = None
    _database_connections_kept(task=task)
    assert connection.connection is opened
    if connection.vendor == "postgresql":  # SQLite's in-memory test database never closes
        connection.settings_dict["CONN_MAX_AGE"] = 0  # closed after each task, as configured
        connection.close_at = 0
        _database_connections_kept(task=task)
        assert connection.connection is None
