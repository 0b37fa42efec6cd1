"""MLflow's own tools for the tests, from a virtualenv of their own (var/mlflow-venv, pinned by
requirements-mlflow.txt): mlflow's pins conflict with ours, so it never enters .venv.

The virtualenv is made on first use (a couple of minutes) and reused while
requirements-mlflow.txt is unchanged; when it cannot be made (no package index), the tests
that need it are skipped with the reason, never failed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
REQUIREMENTS = REPO / "requirements-mlflow.txt"
VENV = Path(os.environ.get("MLFLOW_TEST_VENV", REPO / "var" / "mlflow-venv"))
CLIENT_SCRIPT = REPO / "tests" / "mlflow_client.py"
# MLflow phones home unless told not to; this machine reaches no such host.
ENV = {
    **os.environ,
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "PYTHONWARNINGS": "ignore",
    # One BLAS thread per process: on a shared two-core machine, threads fighting over the
    # cores made fitting iris take a minute.
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
}
ENV.pop("DJANGO_SETTINGS_MODULE", None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_install_failure: list[str] = []


def mlflow_python() -> Path:
    """The virtualenv's python with the pinned mlflow, made when missing; skips when it
    cannot be made (tried once per test run)."""
    if _install_failure:
        pytest.skip(_install_failure[0])
    return _mlflow_python()


@cache
def _mlflow_python() -> Path:
    stamp = VENV / ".requirements-sha256"
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    python = VENV / "bin" / "python"
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / "mlflow-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test processes build it once
        if python.exists() and stamp.exists() and stamp.read_text() == wanted:
            return python
        shutil.rmtree(VENV, ignore_errors=True)
        log = VENV.parent / "mlflow-venv.log"
        steps = [
            [sys.executable, "-m", "venv", str(VENV)],
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-q",
                "-r",
                str(REQUIREMENTS),
            ],
        ]
        with open(log, "w") as out:
            for step in steps:
                try:
                    done = subprocess.run(
                        step, stdout=out, stderr=subprocess.STDOUT, timeout=900, check=False
                    )
                except subprocess.TimeoutExpired:
                    done = None
                if done is None or done.returncode != 0:
                    shutil.rmtree(VENV, ignore_errors=True)
                    tail = log.read_text()[-600:].strip().replace("\n", " | ")
                    _install_failure.append(
                        f"mlflow could not be installed into {VENV} from "
                        f"requirements-mlflow.txt (see {log}): {tail}"
                    )
                    pytest.skip(_install_failure[0])
        stamp.write_text(wanted)
    return python


def mlflow_bin() -> Path:
    return mlflow_python().parent / "mlflow"


def client(*args: str, timeout: float = 600) -> dict:
    """Runs tests/mlflow_client.py with the virtualenv's python; its JSON answer."""
    done = subprocess.run(
        [str(mlflow_python()), str(CLIENT_SCRIPT), *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _wait(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{url} exited early: {log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise AssertionError(f"{url} did not come up in {timeout}s: {log.read_text()[-3000:]}")


@contextlib.contextmanager
def process(args: list[str], health: str, log: Path) -> Iterator[None]:
    """A server process on loopback, up (its health URL answers 200) until the block ends."""
    # `mlflow models serve` starts the virtualenv's uvicorn by name.
    env = {**ENV, "PATH": f"{mlflow_python().parent}{os.pathsep}{ENV.get('PATH', '')}"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        _wait(health, proc, log)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


@contextlib.contextmanager
def tracking_server(folder: Path) -> Iterator[str]:
    """`mlflow server` with a SQLite backend and a local artifact root; yields its URI."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    args = [
        str(mlflow_bin()),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination",
        str(folder / "artifacts"),
        "--workers",
        "1",
    ]
    with process(args, f"{uri}/health", folder / "mlflow-server.log"):
        yield uri


@contextlib.contextmanager
def models_serve(model_dir: Path, folder: Path) -> Iterator[str]:
    """`mlflow models serve --env-manager local` on a model folder; yields its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [
        str(mlflow_bin()),
        "models",
        "serve",
        "-m",
        str(model_dir),
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with process(args, f"{url}/ping", folder / "mlflow-serve.log"):
        yield url
