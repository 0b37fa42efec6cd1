"""The prediction log's writer (predictions/logbuffer.py): rows arrive exactly as served, whatever
characters a client puts in them, and one row the database refuses costs only itself."""

import os

import pytest
from django.db import OperationalError
from django.utils import timezone

from predictions import logbuffer
from predictions.logbuffer import LogRow, PredictionLogBuffer
from predictions.metrics import PREDICTION_LOG_DROPPED, PREDICTION_LOG_WRITTEN
from predictions.models import PredictionLog

pytestmark = pytest.mark.django_db

# What these check is Postgres' (SQLite stores NUL and ignores varchar lengths).
_POSTGRES_ONLY = pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"), reason="needs Postgres"
)


def _row(version, request_id="r", *, index=0, names=("a",), values=(1.5,), **fields):
    defaults = {
        "output": 0,
        "confidence": 0.75,
        "latency_ms": 1.25,
        "cached": False,
        "client_id": "",
        "served_to_id": None,
        "created_at": timezone.now(),
    }
    defaults.update(fields)
    return LogRow(
        request_id,
        index,
        version.model_id,
        version.pk,
        names,
        list(values),
        defaults["output"],
        defaults["confidence"],
        defaults["latency_ms"],
        defaults["cached"],
        defaults["client_id"],
        defaults["served_to_id"],
        defaults["created_at"],
    )


def test_rows_arrive_as_served_whatever_characters_they_hold(iris_production):
    awkward = "tab\there, line\nbreak, cr\r, back\\slash \\N and \\t, quote\" and 'é ✓"
    rows = [
        _row(
            iris_production,
            "r1",
            names=("plain", awkward),
            values=(0.1, awkward),
            output=awkward,
            client_id=awkward,
        ),
        _row(iris_production, "r2", index=3, output=None, confidence=None, cached=True),
        _row(iris_production, "r3", names=None, values=(), output={"nested": [1, 2.5, None]}),
    ]
    buffer = PredictionLogBuffer()
    buffer.add(rows)
    assert buffer.flush() == 3
    first = PredictionLog.objects.get(request_id="r1")
    assert first.features == {"plain": 0.1, awkward: awkward}
    assert first.output == awkward and first.client_id == awkward
    assert first.confidence == 0.75 and first.latency_ms == 1.25 and first.cached is False
    second = PredictionLog.objects.get(request_id="r2")
    assert (second.row_index, second.output, second.confidence, second.cached) == (
        3,
        None,
        None,
        True,
    )
    assert PredictionLog.objects.get(request_id="r3").features is None
    assert PredictionLog.objects.get(request_id="r3").output == {"nested": [1, 2.5, None]}


@_POSTGRES_ONLY
def test_nul_characters_are_dropped_not_the_row(iris_production):
    # Postgres can hold NUL neither in text nor in jsonb; the rest of the row is kept.
    buffer = PredictionLogBuffer()
    buffer.add([_row(iris_production, "r1", values=("a\x00b",), client_id="c\x00d")])
    assert buffer.flush() == 1
    row = PredictionLog.objects.get()
    assert row.client_id == "cd" and row.features == {"a": "ab"}


@_POSTGRES_ONLY
def test_a_row_the_database_refuses_costs_only_itself(iris_production):
    # client_id is a varchar(200): a longer one is refused (the views cut it to 200).
    rows = [
        _row(iris_production, "good1"),
        _row(iris_production, "bad", client_id="x" * 201),
        _row(iris_production, "good2"),
    ]
    dropped, written = PREDICTION_LOG_DROPPED._value.get(), PREDICTION_LOG_WRITTEN._value.get()
    buffer = PredictionLogBuffer()
    buffer.add(rows)
    assert buffer.flush() == 2
    assert set(PredictionLog.objects.values_list("request_id", flat=True)) == {"good1", "good2"}
    assert PREDICTION_LOG_DROPPED._value.get() == dropped + 1
    assert PREDICTION_LOG_WRITTEN._value.get() == written + 2


def test_a_long_client_id_header_is_logged_cut_to_the_column(client_api, iris_production):
    from tests.predictions.conftest import IRIS_ROW

    response = client_api.post(
        "/api/v1/models/iris/predict",
        {"features": IRIS_ROW},
        format="json",
        HTTP_X_CLIENT_ID="k" * 300,
    )
    assert response.status_code == 200
    logbuffer.prediction_log_buffer.flush()
    assert PredictionLog.objects.get().client_id == "k" * 200


def test_rows_wait_for_a_database_that_is_away(iris_production, monkeypatch):
    # Fault injected on purpose: the first write fails as if Postgres were restarting.
    buffer = PredictionLogBuffer()
    buffer.add([_row(iris_production, "r1"), _row(iris_production, "r2")])
    real = logbuffer._write_postgres if _postgres() else logbuffer._write_orm

    def away(rows):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(logbuffer, real.__name__, away)
    assert buffer.flush() == 0 and len(buffer) == 2
    monkeypatch.setattr(logbuffer, real.__name__, real)
    assert buffer.flush() == 2
    assert PredictionLog.objects.count() == 2


def test_rows_put_back_stay_within_the_buffer_bound(iris_production, monkeypatch, settings):
    settings.PREDICTION_LOG_BUFFER_MAX = 2
    buffer = PredictionLogBuffer()
    buffer.add([_row(iris_production, "old1"), _row(iris_production, "old2")])
    real = logbuffer._write_postgres if _postgres() else logbuffer._write_orm

    def away(rows):
        buffer.add([_row(iris_production, "new")])  # served while the flush was failing
        raise OperationalError("connection refused")

    monkeypatch.setattr(logbuffer, real.__name__, away)
    dropped = PREDICTION_LOG_DROPPED._value.get()
    buffer.flush()
    assert len(buffer) == 2 and PREDICTION_LOG_DROPPED._value.get() == dropped + 1


def _postgres() -> bool:
    from django.db import connection

    return connection.vendor == "postgresql"


def test_a_resent_request_id_keeps_the_first_rows_and_loses_none_of_the_batch(
    iris_production, client_user
):
    buffer = PredictionLogBuffer()
    buffer.add([_row(iris_production, "r1", output=1, served_to_id=client_user.pk)])
    buffer.flush()
    # The next batch holds a retry of r1 (same client, same id) among new rows.
    buffer.add(
        [
            _row(iris_production, "r2", served_to_id=client_user.pk),
            _row(iris_production, "r1", output=2, served_to_id=client_user.pk),
            _row(iris_production, "r3", served_to_id=client_user.pk),
        ]
    )
    buffer.flush()
    assert sorted(PredictionLog.objects.values_list("request_id", "output")) == [
        ("r1", 1),
        ("r2", 0),
        ("r3", 0),
    ]
