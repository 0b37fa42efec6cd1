"""Before/after on a shared machine: two checkouts served side by side, cells interleaved.

`make bench` measures one checkout; run twice, minutes apart, on a machine other work shares,
its figures differ by more than any change being judged. Here both checkouts (this one and
--base, e.g. `git worktree add /tmp/base main` with the same .venv) are prepared and served at
once, each with its own database and cache prefix, and every cell is measured on each side in
turn, alternating which goes first, --rounds times; medians are printed side by side. The
servers idle while the other side is measured, so both meet the same background load.

Cells: single row uncached (unique rows) and cache hit at c=16 and c=64, MLflow
dataframe_split single rows at c=16, and 1,000-row batches native JSON vs V2 binary FP64.

Usage: compare.py --base PATH [--base-database-url URL] [--rounds 5] [--duration 3]
With DATABASE_URL set (Postgres), --base-database-url must name another, existing database.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import (  # noqa: E402
    ensure_wrk,
    free_port,
    rows_body,
    run_wrk,
    stop,
    v2_binary_body,
    wait_ready,
)

MODEL = "bench-lr"
UNCACHED = "single, uncached"


def _side(tree: Path, database_url: str | None, name: str, workers: int) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix=f"mlr-compare-{name}-"))
    (workdir / "var").mkdir()
    (workdir / "prometheus").mkdir()
    env = {
        **os.environ,
        "VAR_DIR": str(workdir / "var"),
        "DJANGO_DEBUG": "false",
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "text",
        "CACHE_KEY_PREFIX": f"mlr-compare-{name}-{os.getpid()}",
        "PROMETHEUS_MULTIPROC_DIR": str(workdir / "prometheus"),
        "PYTHONPATH": str(tree),
        "THROTTLE_PREDICT_RATE": "1000000000/min",
    }
    env.pop("DATABASE_URL", None)
    if database_url:
        env["DATABASE_URL"] = database_url
    python = [sys.executable]
    subprocess.run(
        [*python, "manage.py", "migrate", "--noinput"],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
    )
    prepared = subprocess.run(
        [*python, str(tree / "bench" / "prepare.py"), str(workdir)],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    setup = json.loads(prepared.stdout.strip().splitlines()[-1])
    port = free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "granian"),
            "--interface",
            "wsgi",
            "config.wsgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--blocking-threads",
            "1",
            "--log-level",
            "warning",
        ],
        cwd=tree,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    wait_ready(f"{base}/health")
    for _ in range(40):  # every worker loads the model and learns the token
        request = urllib.request.Request(
            f"{base}/api/v1/models/{MODEL}/predict",
            rows_body(setup["features"], 1, 0).encode(),
            {"Content-Type": "application/json", "Authorization": f"Bearer {setup['token']}"},
        )
        urllib.request.urlopen(request, timeout=30).read()
    return {"name": name, "server": server, "base": base, "setup": setup, "workdir": workdir}


def _cells(side: dict) -> list[tuple[str, int, str, dict]]:
    features = side["setup"]["features"]
    predict = f"{side['base']}/api/v1/models/{MODEL}/predict"
    v2_body, v2_header = v2_binary_body(features, 1000, 1000)
    return [
        (UNCACHED, 16, predict, {"random_rows": True}),
        ("single, cache hit", 16, predict, {"body": rows_body(features, 1, 1)}),
        (UNCACHED, 64, predict, {"random_rows": True}),
        ("single, cache hit", 64, predict, {"body": rows_body(features, 1, 1)}),
        (
            "MLflow single, uncached",
            16,
            f"{side['base']}/api/v1/models/{MODEL}/invocations",
            {"random_rows": True, "row_format": "mlflow"},
        ),
        ("native batch of 1000", 16, predict, {"body": rows_body(features, 1000, 1000)}),
        (
            "V2 binary batch of 1000",
            16,
            f"{side['base']}/v2/models/{MODEL}/infer",
            {
                "body": v2_body,
                "content_type": "application/octet-stream",
                "headers": {"Inference-Header-Content-Length": str(v2_header)},
            },
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the checkout to compare against")
    parser.add_argument("--base-database-url", default=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write every cell's figures here")
    args = parser.parse_args()
    if os.environ.get("DATABASE_URL") and not args.base_database_url:
        raise SystemExit("DATABASE_URL is set: give --base-database-url (another database)")
    wrk = ensure_wrk()
    if not wrk:
        raise SystemExit("wrk is needed (apt-get install -y wrk)")
    sides = [
        _side(Path(args.base).resolve(), args.base_database_url, "base", args.workers),
        _side(ROOT, os.environ.get("DATABASE_URL"), "this", args.workers),
    ]
    figures: dict[tuple[str, int, str], list[dict]] = {}
    try:
        for round_ in range(args.rounds):
            order = sides if round_ % 2 == 0 else sides[::-1]
            for index in range(len(_cells(sides[0]))):
                for side in order:
                    scenario, concurrency, url, options = _cells(side)[index]
                    kwargs = {"body": None, "random_rows": False, **options}
                    result = run_wrk(
                        wrk,
                        url,
                        token=side["setup"]["token"],
                        concurrency=concurrency,
                        duration=args.duration,
                        workdir=side["workdir"],
                        **kwargs,
                    )
                    if result["non_2xx"] or result["socket_errors"]:
                        print(f"  {side['name']} {scenario}: {result}", flush=True)
                    figures.setdefault((scenario, concurrency, side["name"]), []).append(result)
            print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    finally:
        for side in sides:
            stop(side["server"])
    _print(figures, args)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                [{"cell": s, "c": c, "side": n, "runs": r} for (s, c, n), r in figures.items()]
            )
        )


def _median(results: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in results if r[key] is not None)


def _print(figures, args) -> None:
    print(
        f"\nbase = {args.base}, this = {ROOT}; medians of {args.rounds} interleaved rounds, "
        f"{args.duration} s per cell, {args.workers} granian workers each"
    )
    print(
        f"{'cell':<32} {'c':>3} {'base req/s':>11} {'this req/s':>11} {'ratio':>6} "
        f"{'base p99':>9} {'this p99':>9}"
    )
    scenarios = sorted(
        {(s, c) for s, c, _ in figures}, key=lambda sc: list(figures).index((*sc, "base"))
    )
    rps = {}
    for scenario, concurrency in scenarios:
        base = figures[(scenario, concurrency, "base")]
        this = figures[(scenario, concurrency, "this")]
        b, t = _median(base, "rps"), _median(this, "rps")
        rps[(scenario, concurrency)] = (b, t)
        # Each round measured both sides back to back: their ratio cancels that round's load.
        paired = sorted(x["rps"] / y["rps"] for x, y in zip(this, base, strict=True))
        print(
            f"{scenario:<32} {concurrency:>3} {b:>11,.1f} {t:>11,.1f} {t / b:>6.3f} "
            f"{_median(base, 'p99_ms'):>7.1f}ms {_median(this, 'p99_ms'):>7.1f}ms  "
            f"{paired[0]:.2f}..{paired[-1]:.2f} (median {statistics.median(paired):.2f})"
        )
    for label, index in (("base", 0), ("this", 1)):
        mlflow = rps[("MLflow single, uncached", 16)][index] / rps[(UNCACHED, 16)][index]
        v2 = rps[("V2 binary batch of 1000", 16)][index] / rps[("native batch of 1000", 16)][index]
        print(
            f"{label}: MLflow single / native single = {mlflow:.2f}x (target: within 15%); "
            f"V2 binary FP64 / native JSON 1,000-row rows/s = {v2:.2f}x (target: >= 1.5x)"
        )


if __name__ == "__main__":
    main()
