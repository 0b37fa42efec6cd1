"""deploy/serve, the web server of the image, the compose stack and `make run`, run for real:
granian on the embedded defaults, serving a prediction, and flushing its prediction-log buffer
when it is stopped (its workers are multiprocessing children, which end without atexit)."""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(url: str, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, "the server exited"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"{url} did not answer within {timeout}s")


@pytest.mark.skipif(not (BIN / "granian").exists(), reason="granian not installed")
def test_serve_answers_and_flushes_the_prediction_log_when_stopped(tmp_path):
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}},
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "VAR_DIR": str(tmp_path),
        "DJANGO_DEBUG": "false",
        "LOG_LEVEL": "WARNING",
        # Only the exit flush can write these rows: the interval flush is a minute away.
        "PREDICTION_LOG_FLUSH_SECONDS": "60",
        "PREDICTION_LOG_SAMPLE_RATE": "1",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)

    def manage(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    manage("migrate", "--noinput")
    manage("bootstrap_demo")
    token = manage("create_api_token", "serve-test").strip().splitlines()[-1]
    port = _free_port()
    server = subprocess.Popen(
        [str(ROOT / "deploy" / "serve")],
        cwd=ROOT,
        env={
            **env,
            "GRANIAN": str(BIN / "granian"),
            "WEB_HOST": "127.0.0.1",
            "PORT": str(port),
            "WEB_CONCURRENCY": "2",
        },
        start_new_session=True,
    )
    try:
        _wait_ready(f"http://127.0.0.1:{port}/health", server)
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
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)

    with sqlite3.connect(tmp_path / "db.sqlite3") as db:
        logged = {r for (r,) in db.execute("SELECT request_id FROM predictions_predictionlog")}
    assert set(request_ids) <= logged
