"""Fault script: prediction throughput with Redis up, then with Redis stopped.

Starts its own redis-server on a free loopback port (never the machine's shared one), the
product under granian as deploy/serve runs it (embedded SQLite database, REDIS_URL pointing at
that Redis), registers the demo model, and drives the same predict request for --duration
seconds with Redis up, then again after stopping that redis-server. Target: during the outage
at least 50% of the normal throughput (tokens and access policies come from a short
per-process memo, routing from its own, and the outage is logged once per retry period).

    .venv/bin/python bench/redis_outage.py [--duration 8] [--concurrency 8] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# bench/ is a folder of scripts, not a package: its shared helpers come from run.py.
from run import (
    BIN,
    ROOT,
    ensure_wrk,
    free_port,
    run_python_load,
    run_wrk,
    stop,
    wait_ready,
)

BODY = (
    '{"features": {"sepal_length": 5.1, "sepal_width": 3.5, '
    '"petal_length": 1.4, "petal_width": 0.2}}'
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="redis-outage-"))
    redis_port, web_port = free_port(), free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
    )
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}},
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "VAR_DIR": str(workdir),
        "DJANGO_DEBUG": "false",
        "LOG_LEVEL": "WARNING",
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "THROTTLE_PREDICT_RATE": "none",
        "PREDICTION_LOG_SAMPLE_RATE": "0",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    web = None
    try:
        time.sleep(0.3)

        def manage(*command: str) -> str:
            return subprocess.run(
                [sys.executable, "manage.py", *command],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout

        manage("migrate", "--noinput")
        manage("bootstrap_demo")
        token = manage("create_api_token", "bench-outage").strip().splitlines()[-1]
        log = open(workdir / "web.log", "w")  # noqa: SIM115 - closed with the process
        web = subprocess.Popen(
            [str(ROOT / "deploy" / "serve")],
            cwd=ROOT,
            env={
                **env,
                "GRANIAN": str(BIN / "granian"),
                "WEB_HOST": "127.0.0.1",
                "PORT": str(web_port),
                "WEB_CONCURRENCY": str(args.workers),
            },
            stderr=log,
            stdout=log,
        )
        wait_ready(f"http://127.0.0.1:{web_port}/health")
        url = f"http://127.0.0.1:{web_port}/api/v1/models/iris-classifier/predict"
        wrk = ensure_wrk()

        def load(duration: int) -> dict:
            runner = run_wrk if wrk else run_python_load
            extra = {"wrk": wrk} if wrk else {}
            return runner(
                **extra,
                url=url,
                token=token,
                body=BODY,
                random_rows=False,
                concurrency=args.concurrency,
                duration=duration,
                workdir=workdir,
            )

        load(2)  # warm: models loaded, token, access policy and routing cached
        normal = load(args.duration)
        redis.terminate()
        redis.wait(10)
        load(2)  # the first failures open the breaker in each worker
        outage = load(args.duration)
    finally:
        if web is not None:
            stop(web)
        if redis.poll() is None:
            redis.terminate()
            redis.wait(10)
    tracebacks = (workdir / "web.log").read_text().count("Traceback")
    ratio = outage["rps"] / normal["rps"] if normal["rps"] else 0.0
    print(f"load generator: {'wrk' if wrk else 'python threads'}, c={args.concurrency}")
    print(f"{'':16}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>10}")
    for name, row in (("redis up", normal), ("redis stopped", outage)):
        print(
            f"{name:16}{row['rps']:>10.1f}{row['p50_ms'] or 0:>10.2f}"
            f"{row['p99_ms'] or 0:>10.2f}{row['non_2xx']!s:>10}  {row['socket_errors']}"
        )
    print(f"outage / normal throughput: {ratio:.0%} (target >= 50%)")
    print(f"tracebacks in the web log: {tracebacks}")


if __name__ == "__main__":
    main()
