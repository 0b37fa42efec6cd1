"""deploy/serve, the web server of the image, the compose stack and `make run`, run for real:
granian on the embedded defaults, serving a prediction, and flushing its prediction-log buffer
when it is stopped (its workers are multiprocessing children, which end without atexit)."""

import sqlite3
import urllib.request

import orjson
import pytest

from tests import live


@pytest.mark.skipif(not live.GRANIAN.exists(), reason="granian not installed")
def test_serve_answers_and_flushes_the_prediction_log_when_stopped(tmp_path):
    env = live.product_env(
        tmp_path,
        # Only the exit flush can write these rows: the interval flush is a minute away.
        PREDICTION_LOG_FLUSH_SECONDS="60",
        PREDICTION_LOG_SAMPLE_RATE="1",
    )
    live.manage(env, "migrate", "--noinput")
    live.manage(env, "bootstrap_demo")
    token = live.manage(env, "create_api_token", "serve-test").strip().splitlines()[-1]
    port = live.free_port()
    server = live.serve(env, port, workers=2)
    try:
        live.wait_ready(f"http://127.0.0.1:{port}/health", server)
        request_ids = []
        for i in range(6):
            row = {"sepal_length": 5.0 + i / 10, "sepal_width": 3.4, "petal_length": 1.5}
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/v1/models/iris-classifier/predict",
                orjson.dumps({"features": {**row, "petal_width": 0.2}}),
                {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                body = orjson.loads(response.read())
            assert body["model"] == "iris-classifier" and body["prediction"] is not None
            request_ids.append(body["request_id"])
    finally:
        live.stop(server)

    with sqlite3.connect(tmp_path / "db.sqlite3") as db:
        logged = {r for (r,) in db.execute("SELECT request_id FROM predictions_predictionlog")}
    assert set(request_ids) <= logged
