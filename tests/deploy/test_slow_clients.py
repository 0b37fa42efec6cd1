"""Slow and chunked clients against the real server (deploy/serve: granian) on loopback.

A resilience test, not a timing of our code: 16 connections each send a predict request with a
made-up token, declare a 100,000-byte body and send only part of it. The token is checked
before any body is read, so they get their 401 at once and hold nothing; normal predictions
meanwhile keep a p99 within a generous 3x of the idle p99.
"""

from __future__ import annotations

import http.client
import socket
import time

import orjson
import pytest

from tests import live
from tests.live import BIN, ROOT

pytestmark = pytest.mark.skipif(not live.GRANIAN.exists(), reason="granian not installed")

ROW = {"sepal_length": 5.0, "sepal_width": 3.4, "petal_length": 1.5, "petal_width": 0.2}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("slow-clients")
    env = live.product_env(
        tmp,
        THROTTLE_PREDICT_RATE="none",
        THROTTLE_REFUSED_TOKEN_RATE="none",  # the slow clients must not be stopped by a 429
    )
    live.manage(env, "migrate", "--noinput")
    live.manage(env, "bootstrap_demo")
    token = live.manage(env, "create_api_token", "slow-test").strip().splitlines()[-1]
    port = live.free_port()
    process = live.serve(env, port, workers=1)
    try:
        live.wait_ready(f"http://127.0.0.1:{port}/health", process)
        yield port, token, env
    finally:
        live.stop(process)


def _predict(port: int, token: str) -> float:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(
            "POST",
            "/api/v1/models/iris-classifier/predict",
            orjson.dumps({"features": ROW}),
            {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        response = conn.getresponse()
        response.read()
        assert response.status == 200
    finally:
        conn.close()
    return time.perf_counter() - started


def _p99(port: int, token: str, n: int = 60) -> float:
    times = sorted(_predict(port, token) for _ in range(n))
    return times[int(len(times) * 0.99) - 1]


def test_slow_bodies_with_made_up_tokens_leave_predictions_unharmed(server):
    port, token, _ = server
    for _ in range(5):
        _predict(port, token)  # warm: model loaded, token and routing cached
    idle = _p99(port, token)
    slow = []
    try:
        for i in range(16):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(
                b"POST /api/v1/models/iris-classifier/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                + f"Authorization: Bearer made-up-{i}\r\n".encode()
                + b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
                + b'{"features": {"sepal_length": 5.0, '
            )
            slow.append(sock)
        time.sleep(0.2)
        loaded = _p99(port, token)
        # Each slow client got its 401 without the server waiting for the body.
        for sock in slow:
            assert sock.recv(64).startswith(b"HTTP/1.1 401")
    finally:
        for sock in slow:
            sock.close()
    # A floor of 50 ms keeps a very fast idle run from making the ratio meaningless.
    assert loaded < 3 * max(idle, 0.05), (idle, loaded)


def test_a_chunked_body_is_read_by_the_real_server(server):
    port, token, _ = server
    body = orjson.dumps({"features": ROW})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("POST", "/api/v1/models/iris-classifier/predict")
        conn.putheader("Content-Type", "application/json; charset=utf-8")
        conn.putheader("Authorization", f"Bearer {token}")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        for part in (body[:10], body[10:]):
            conn.send(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        conn.send(b"0\r\n\r\n")
        response = conn.getresponse()
        answer = orjson.loads(response.read())
    finally:
        conn.close()
    assert response.status == 200, answer
    assert answer["model"] == "iris-classifier"


@pytest.mark.skipif(not (BIN / "gunicorn").exists(), reason="gunicorn not installed")
def test_under_gunicorn_a_body_that_stops_arriving_is_a_408(server):
    """deploy/gunicorn.conf.py with the app's body timeout on the socket: an authenticated
    client that stops sending its body gets a 408 after REQUEST_BODY_TIMEOUT, not a worker
    held until gunicorn kills it."""
    _, token, server_env = server
    port = live.free_port()
    # The same database as the granian server's, served by gunicorn instead.
    env = {**server_env, "REQUEST_BODY_TIMEOUT": "1", "PORT": str(port), "WEB_CONCURRENCY": "1"}
    process = live.spawn(
        [
            str(BIN / "gunicorn"),
            "-c",
            str(ROOT / "deploy" / "gunicorn.conf.py"),
            "--bind",
            f"127.0.0.1:{port}",
            "config.wsgi:application",
        ],
        env,
    )
    try:
        live.wait_ready(f"http://127.0.0.1:{port}/health", process)
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        started = time.monotonic()
        sock.sendall(
            b"POST /api/v1/models/iris-classifier/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Authorization: Bearer {token}\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
            + b'{"features": {"sepal_length": 5.0, '
        )
        answer = sock.recv(200)
        waited = time.monotonic() - started
        sock.close()
    finally:
        live.stop(process)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert waited < 8
