import logging

import pytest

from backups.jobs import job_run
from backups.models import JobRun

pytestmark = pytest.mark.django_db


def test_job_run_logs_one_line_and_records_the_run(caplog):
    with caplog.at_level(logging.INFO, logger="jobs"), job_run("demo", source="test") as run:
        run["rows"] = 3
    (record,) = [r for r in caplog.records if r.name == "jobs"]
    assert record.getMessage().startswith("job finished: demo success in ")
    assert (record.job, record.outcome, record.rows, record.source) == (
        "demo",
        "success",
        3,
        "test",
    )
    assert record.duration_s >= 0
    run = JobRun.objects.get()
    assert (run.job, run.outcome, run.details) == ("demo", "success", {"source": "test", "rows": 3})


def test_job_run_records_a_failure_and_lets_the_error_through(caplog):
    with (
        caplog.at_level(logging.INFO, logger="jobs"),
        pytest.raises(ValueError),
        job_run("demo-fail"),
    ):
        raise ValueError("boom")
    (record,) = [r for r in caplog.records if r.name == "jobs"]
    assert record.levelno == logging.ERROR
    assert record.error == "ValueError: boom"
    assert JobRun.objects.get().error == "ValueError: boom"


@pytest.mark.django_db(transaction=True)
def test_a_run_is_still_logged_when_its_record_cannot_be_written(caplog, monkeypatch):
    # Fault injected on purpose: the database refuses the JobRun insert.
    def refuse(**kwargs):
        raise RuntimeError("database is down")

    monkeypatch.setattr(JobRun.objects, "create", refuse)
    with caplog.at_level(logging.INFO, logger="jobs"), job_run("demo"):
        pass
    messages = [r.getMessage() for r in caplog.records if r.name == "jobs"]
    assert messages[0].startswith("job finished: demo success")
    assert messages[1] == "could not record the job run"
