import logging

import pytest
from celery import Celery, shared_task

from config.logging import request_id_var

seen: list[str] = []


@shared_task(name="tests.record_request_id")
def record_request_id() -> str:
    seen.append(request_id_var.get())
    logging.getLogger("tests.task").info("inside the task")
    return request_id_var.get()


@pytest.fixture
def filesystem_broker(tmp_path):
    """A publisher on its own filesystem broker, so the test reads the message it sent."""
    queue = tmp_path / "queue"
    queue.mkdir()
    publisher = Celery("publisher", set_as_current=False)
    publisher.conf.broker_url = "filesystem://"
    publisher.conf.broker_transport_options = {
        "data_folder_in": str(queue),
        "data_folder_out": str(queue),
        "processed_folder": str(tmp_path),
        "control_folder": str(tmp_path / "control"),
    }
    yield publisher, queue
    publisher.close()


def test_a_task_enqueued_in_a_request_carries_its_id(filesystem_broker):
    import json

    publisher, queue = filesystem_broker
    token = request_id_var.set("req-from-http")
    try:
        publisher.send_task("tests.record_request_id")
    finally:
        request_id_var.reset(token)
    (message_file,) = list(queue.iterdir())
    message = json.loads(message_file.read_text())
    assert message["headers"]["request_id"] == "req-from-http"


def test_a_task_enqueued_outside_a_request_carries_no_id(filesystem_broker):
    import json

    publisher, queue = filesystem_broker
    publisher.send_task("tests.record_request_id")
    (message_file,) = list(queue.iterdir())
    assert "request_id" not in json.loads(message_file.read_text())["headers"]


def test_the_worker_logs_under_the_request_id_it_received(caplog):
    caplog.set_level(logging.INFO)
    result = record_request_id.apply(headers={"request_id": "req-42"})
    assert result.get() == "req-42"
    assert request_id_var.get() == "-"  # restored after the task
    finished = [r for r in caplog.records if r.name == "mlregistry.tasks"]
    assert finished[-1].task == "tests.record_request_id"
    assert finished[-1].outcome == "SUCCESS" and finished[-1].duration_ms >= 0


def test_a_scheduled_task_logs_under_its_own_task_id():
    result = record_request_id.apply(task_id="beat-run-1")
    assert result.get() == "beat-run-1"


def test_an_eager_task_keeps_the_id_of_the_request_running_it():
    token = request_id_var.set("req-eager")
    try:
        assert record_request_id.apply().get() == "req-eager"
    finally:
        request_id_var.reset(token)
