"""Sizing figures for docs/scaling.md: predict throughput of one web replica and of two.

Starts the product as the cluster test does (tests/live.py): a PostgreSQL database of its own on
DATABASE_URL's server (created and dropped here), a redis-server of its own on a free port, and
web replicas under deploy/serve (granian, WEB_CONCURRENCY worker processes each). Registers
bench/prepare.py's models and drives wrk against

  1. one replica,
  2. two replicas at once (one wrk per replica, half the connections each; req/s summed),

for the logistic-regression pipeline (20 features), with unique random rows (every request
misses the result cache) and with one repeated row (result-cache hits). All processes share
this machine's cores, the load generator's included: two replicas on one machine show what a
second process costs and gains here, not what a second machine would add.

    DATABASE_URL=postgres://... .venv/bin/python bench/cluster_scale.py \
        [--duration 8] [--concurrency 16] [--workers 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# bench/ is a folder of scripts, not a package: its load generator comes from run.py, the
# product's processes from the tests' helpers (tests/live.py).
from run import ensure_wrk, run_wrk

from tests.live import (
    ROOT,
    children,
    database_create,
    database_drop,
    free_port,
    manage,
    product_env,
    redis_server,
    serve,
    stop,
    wait_ready,
)


def _group_rss_mb(pid: int) -> int:
    """Resident memory of `pid` and its descendants, in MB (Linux /proc)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{current}/status").read_text()
            total += int(status.split("VmRSS:")[1].split()[0])
        todo += children(current)
    return total // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="granian workers per replica")
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        raise SystemExit("set DATABASE_URL=postgres://... (the replicas share one database)")
    wrk = ensure_wrk()
    if wrk is None:
        raise SystemExit("wrk is needed (apt-get install -y wrk)")

    load_before = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="cluster-scale-"))
    db_name = f"mlr_scale_{uuid.uuid4().hex[:10]}"
    redis, redis_port = redis_server(workdir)
    webs: list[subprocess.Popen] = []
    try:
        env = product_env(
            workdir,
            DATABASE_URL=database_create(db_name),
            REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
            THROTTLE_PREDICT_RATE="none",
            MODEL_STORE_DIR=str(workdir / "artifacts"),
        )
        manage(env, "migrate", "--noinput")
        prepared = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "prepare.py"), str(workdir)],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        token = json.loads(prepared.stdout.strip().splitlines()[-1])["token"]
        ports = [free_port(), free_port()]
        for i, port in enumerate(ports):
            host = workdir / f"web-{i}"
            host.mkdir()
            webs.append(serve({**env, "VAR_DIR": str(host)}, port, workers=args.workers))
        for port, web in zip(ports, webs, strict=True):
            wait_ready(f"http://127.0.0.1:{port}/health/ready", web)

        body = json.dumps({"features": {f"f{i}": 0.1 * i for i in range(20)}})

        def load(port: int, concurrency: int, random_rows: bool, out: list, index: int) -> None:
            sub = workdir / f"wrk-{port}-{index}"
            sub.mkdir(exist_ok=True)
            out[index] = run_wrk(
                wrk,
                f"http://127.0.0.1:{port}/api/v1/models/bench-lr/predict",
                token=token,
                body=body,
                random_rows=random_rows,
                concurrency=concurrency,
                duration=args.duration,
                workdir=sub,
            )

        def cell(replicas: int, random_rows: bool) -> dict:
            results: list = [None] * replicas
            per = max(1, args.concurrency // replicas)
            threads = [
                threading.Thread(target=load, args=(ports[i], per, random_rows, results, i))
                for i in range(replicas)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return {
                "rps": sum(r["rps"] for r in results),
                "p99_ms": max(r["p99_ms"] or 0 for r in results),
                "non_2xx": sum(r["non_2xx"] for r in results),
            }

        for port in ports:  # warm: models loaded, token and routing cached in each replica
            warm: list = [None]
            load(port, 4, True, warm, 0)
        rows = []
        for label, random_rows in (("unique rows (cache misses)", True), ("one row (hits)", False)):
            one = cell(1, random_rows)
            two = cell(2, random_rows)
            rows.append((label, one, two))
        rss = [_group_rss_mb(web.pid) for web in webs]
    finally:
        for web in webs:
            stop(web)
        stop(redis)
        database_drop(db_name)

    cores = os.cpu_count()
    print(
        f"bench-lr predict, wrk c={args.concurrency} in total, {args.duration} s per cell, "
        f"{args.workers} granian worker(s) per replica, {cores} cores shared by everything; "
        f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
        "(other work on the machine lowers and scatters the figures)"
    )
    print(f"{'':28}{'1 replica':>12}{'2 replicas':>12}{'ratio':>8}{'p99 ms 1/2':>14}{'non-2xx':>9}")
    print(f"resident memory per replica after the runs (MB, all its processes): {rss}")
    for label, one, two in rows:
        ratio = two["rps"] / one["rps"] if one["rps"] else 0.0
        print(
            f"{label:28}{one['rps']:>12.0f}{two['rps']:>12.0f}{ratio:>8.2f}"
            f"{one['p99_ms']:>7.1f}/{two['p99_ms']:<6.1f}{one['non_2xx'] + two['non_2xx']:>9}"
        )


if __name__ == "__main__":
    main()
