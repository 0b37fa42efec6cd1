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
