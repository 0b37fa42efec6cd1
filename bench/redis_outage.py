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
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# bench/ is a folder of scripts, not a package: its load generators come from run.py, the
# product's processes from the tests' helpers (tests/live.py).
from run import ensure_wrk, run_python_load, run_wrk

from tests.live import free_port, manage, product_env, redis_server, serve, stop, wait_ready

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
    web_port = free_port()
    redis, redis_port = redis_server(workdir)
    env = product_env(
        workdir,
        REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        THROTTLE_PREDICT_RATE="none",
        PREDICTION_LOG_SAMPLE_RATE="0",
    )
    web = None
    try:
        manage(env, "migrate", "--noinput")
        manage(env, "bootstrap_demo")
        token = manage(env, "create_api_token", "bench-outage").strip().splitlines()[-1]
        web = serve(env, web_port, workers=args.workers, log=workdir / "web.log")
        wait_ready(f"http://127.0.0.1:{web_port}/health", web)
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
        stop(redis)
        load(2)  # the first failures open the breaker in each worker
        outage = load(args.duration)
    finally:
        if web is not None:
            stop(web)
        stop(redis)
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
