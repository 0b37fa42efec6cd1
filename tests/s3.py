"""An S3-compatible server on loopback for tests, CI and the cluster test: moto's standalone
server (`moto[server]`, requirements-dev.txt) in its own process, speaking the S3 API over
real HTTP, so django-storages and boto3 run unmocked.

    server = s3_server_start()           # a free port on 127.0.0.1
    server.bucket_create("artifacts")
    env = server.env("artifacts", "run-1")   # ARTIFACT_STORAGE_URL, AWS_* for a subprocess
    ...
    server.stop()

`python -m tests.s3` starts one in the foreground and prints its environment (used by
`.ci/run` and handy for `make run` against S3).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen | None = None
    buckets: set[str] = field(default_factory=set)

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def bucket_create(self, name: str) -> str:
        if name not in self.buckets:
            self.client().create_bucket(Bucket=name)
            self.buckets.add(name)
        return name

    def aws_env(self) -> dict[str, str]:
        """The standard AWS variables pointing at this server."""
        return {
            "AWS_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
        }

    def env(self, bucket: str, prefix: str = "", *, backups: bool = True) -> dict[str, str]:
        """Environment for a product process storing artifacts (and backups, under
        `<prefix>/backups`) in `bucket`; creates the bucket."""
        self.bucket_create(bucket)
        base = f"s3://{bucket}/{prefix.strip('/')}".rstrip("/")
        env = {**self.aws_env(), "ARTIFACT_STORAGE_URL": f"{base}/artifacts"}
        if backups:
            env["BACKUP_STORAGE_URL"] = f"{base}/backups"
        return env

    def storage_entry(self, bucket: str, prefix: str) -> dict[str, Any]:
        """A STORAGES entry for `bucket`/`prefix` on this server (for `settings.STORAGES`)."""
        from config.storage_urls import storage_from_url

        self.bucket_create(bucket)
        entry = storage_from_url(
            f"s3://{bucket}/{prefix}",
            default_location=Path("/nonexistent"),
            setting="tests",
            endpoint_url=self.endpoint,
            region_name=REGION,
        )
        entry["OPTIONS"].update(access_key=ACCESS_KEY, secret_key=SECRET_KEY)
        return entry

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class CountingRelay:
    """A TCP relay on loopback in front of an S3 server that counts the bytes the server sends
    back (`served`, HTTP headers included): what a client fetched over the wire, whichever S3
    library it speaks. Point a storage's endpoint_url at `endpoint`; `stop()` when done."""

    def __init__(self, target: str):
        parts = urlsplit(target)
        self._target = (parts.hostname, parts.port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.served = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # stopped
            upstream = socket.create_connection(self._target)
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, counted: bool) -> None:
        try:
            while data := source.recv(65536):
                if counted:
                    # Counted before it is passed on: a client done reading is fully counted.
                    with self._lock:
                        self.served += len(data)
                target.sendall(data)
        except OSError:
            pass
        finally:
            # Either side hanging up ends the exchange (HTTP clients never half-close).
            source.close()
            target.close()

    def stop(self) -> None:
        self._listener.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def s3_server_start(*, port: int | None = None, timeout: float = 30.0) -> S3Server:
    """Starts moto's S3 server on 127.0.0.1 (a free port unless given) and waits until it
    answers; the caller stops it with `.stop()`."""
    port = port or free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MOTO_PORT": str(port)},
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                return S3Server(endpoint=endpoint, process=process)
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"moto server did not answer on {endpoint} within {timeout} s")


if __name__ == "__main__":  # pragma: no cover - operator entry point
    server = s3_server_start(port=int(sys.argv[1]) if len(sys.argv) > 1 else None)
    # Stopped with this process (.ci/run's trap sends SIGTERM): never an orphaned server. The
    # handler only signals: waiting for moto here, while the main thread holds Popen.wait's
    # lock below, would block this process for ever.
    signal.signal(signal.SIGTERM, lambda *_: server.process.terminate())
    print(f"export TEST_S3_ENDPOINT_URL={server.endpoint}")
    for key, value in server.env("mlregistry").items():
        print(f"export {key}={value}")
    sys.stdout.flush()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C reaches moto too
        server.process.wait()
    server.stop()
