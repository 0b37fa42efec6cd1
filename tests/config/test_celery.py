from celery import signals

from config import celery as celery_config
from config.logging import request_id_var


def test_published_tasks_carry_the_request_id_and_publish_time():
    headers: dict = {}
    token = request_id_var.set("req-1")
    try:
        signals.before_task_publish.send(sender="t", headers=headers, body=None)
    finally:
        request_id_var.reset(token)
    assert headers["request_id"] == "req-1"
    assert headers["published_at"]


class _Task:
    def __init__(self, **request):
        self.request = type("Request", (), request)()


def test_a_task_logs_under_its_publishers_request_id_or_its_own_id():
    celery_config._request_id_bind(task_id="t1", task=_Task(request_id="req-2"))
    assert request_id_var.get() == "req-2"
    celery_config._request_id_bind(task_id="t1", task=_Task(request_id="-"))
    assert request_id_var.get() == "task-t1"
    celery_config._request_id_unbind()
    assert request_id_var.get() == "-"


def test_broker_folders_are_created_for_the_filesystem_transport(settings, tmp_path):
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(tmp_path / "in"),
        "processed_folder": str(tmp_path / "done"),
    }
    celery_config._broker_dirs_for_workers()
    assert (tmp_path / "in").is_dir()
    assert (tmp_path / "done").is_dir()
