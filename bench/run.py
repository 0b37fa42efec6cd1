"""`make bench`: the serving path under load, next to the yardsticks, in one run.

Starts the product with granian as deploy/serve does, or gunicorn with --server gunicorn
(Postgres + Redis when DATABASE_URL / REDIS_URL are set,
else the embedded SQLite + local-memory defaults), registers a logistic-regression pipeline
and a 100-tree random forest trained on 20 synthetic features, and drives load with wrk (Lua
scripts; unique random rows for the uncached case). The same run measures a minimal Django
view that just runs the model and a constant-answer view (bench/reference_app.py, same
server settings), in-process scikit-learn, and the CPU one request costs the web process
(bench/request_cost.py), then prints one table.

Options: --duration SECONDS (per cell, default 5), --concurrency 1,16,64, --workers N,
--server granian|gunicorn, --worker-class sync|gthread (gunicorn), --threads N (per process),
--models bench-lr,bench-rf, --json PATH, --protocols-only (only the native, MLflow-format and
V2 cells, which are compared: single rows native vs MLflow dataframe_split, and 1,000-row
batches native JSON vs V2 binary FP64). wrk comes from Debian (`apt-get install
-y wrk`); if it is missing and can't be installed, a Python load generator is used instead and
the table says so (its own CPU use makes the figures lower).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


# --- load generators ----------------------------------------------------------------------

LUA = r"""
local counter = 0
local threads = {}
function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  threads[counter] = thread
end
function init(args)
  math.randomseed(os.time() * 1000 + id * 7919)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "__CONTENT_TYPE__"
  wrk.headers["Authorization"] = "Bearer __TOKEN__"
__HEADERS__
  -- Read from a file: a Lua long string would turn a binary body's CR LF into LF.
  local file = io.open("__BODY_FILE__", "rb")
  wrk.body = file:read("*a")
  file:close()
end
"""

# Only for unique rows. Each wrk thread builds its requests before the run starts (init runs
# before wrk starts its clock): building one per request in Lua cost the load generator, on the
# same two cores as the server, ~30 us of CPU per request. The pool is large enough that no row
# repeats within a cell (a repeat would be a cache hit); done() reports it if one did.
LUA_RANDOM_ROWS = r"""
local pool, next_index = {}, 1
wrapped = 0  -- a global: done() reads it with thread:get
local build_pool = init
function init(args)
  build_pool(args)
  for n = 1, __POOL__ do
    local parts = {}
    for i = 0, 19 do
      parts[#parts + 1] = __ITEM__
    end
    pool[n] = wrk.format(nil, nil, nil, '__PREFIX__' .. table.concat(parts, ",") .. '__SUFFIX__')
  end
end
function request()
  local r = pool[next_index]
  next_index = next_index + 1
  if next_index > #pool then
    next_index, wrapped = 1, 1
  end
  return r
end
function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    if thread:get("wrapped") == 1 then
      io.write("ROWS_REPEATED\n")
    end
  end
end
"""

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}

# How a unique random row of the 20 features f0..f19 is written, per request format: (a Lua
# expression of one feature's text given its index i, the request's prefix, its suffix).
_COLUMNS = ",".join(f'"f{i}"' for i in range(20))
ROW_FORMATS = {
    "native": (
        """string.format('"f%d":%.9f', i, math.random() * 6 - 3)""",
        '{"features":{',
        "}}",
    ),
    "mlflow": (
        "string.format('%.9f', math.random() * 6 - 3)",
        f'{{"dataframe_split":{{"columns":[{_COLUMNS}],"data":[[',
        "]]}}",
    ),
}


def ensure_wrk() -> str | None:
    found = shutil.which("wrk")
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "wrk"], capture_output=True, check=False)
    return shutil.which("wrk")


def run_wrk(
    wrk,
    url,
    *,
    token,
    body,
    random_rows,
    concurrency,
    duration,
    workdir,
    content_type="application/json",
    headers=None,
    row_format="native",
) -> dict:
    script = workdir / "bench.lua"
    body_file = workdir / "body.bin"
    body_file.write_bytes(body.encode() if isinstance(body, str) else (body or b""))
    threads = max(1, min(concurrency, 2))
    # Unique rows for up to 5,000 requests/s per thread (far above what this machine serves).
    pool = str(5000 * duration)
    item, prefix, suffix = ROW_FORMATS[row_format]
    extra = "\n".join(f'  wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items())
    script.write_text(
        LUA.replace("__TOKEN__", token)
        .replace("__BODY_FILE__", str(body_file))
        .replace("__CONTENT_TYPE__", content_type)
        .replace("__HEADERS__", extra)
        + (
            LUA_RANDOM_ROWS.replace("__POOL__", pool)
            .replace("__ITEM__", item)
            .replace("__PREFIX__", prefix)
            .replace("__SUFFIX__", suffix)
            if random_rows
            else ""
        )
    )
    out = subprocess.run(
        [
            wrk,
            f"-t{threads}",
            f"-c{concurrency}",
            f"-d{duration}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    latency = {}
    for pct, value, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M):
        latency[pct] = float(value) * _UNITS[unit]
    if "ROWS_REPEATED" in out:
        raise SystemExit(
            "wrk ran out of unique rows: a repeated row is a cache hit; raise the pool"
        )
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {
        "rps": rps,
        "p50_ms": latency.get("50"),
        "p99_ms": latency.get("99"),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(0) if errors else "",
    }


def run_python_load(
    url,
    *,
    token,
    body,
    random_rows,
    concurrency,
    duration,
    workdir,
    content_type="application/json",
    headers=None,
    row_format="native",
) -> dict:
    """Fallback when wrk is unavailable: keep-alive HTTP/1.1 clients in threads."""
    import http.client
    import random
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    latencies: list[float] = []
    bad = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + duration

    def worker(seed):
        rng = random.Random(seed)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        mine = []
        while time.perf_counter() < stop_at:
            payload = body
            if random_rows:
                row = {f"f{i}": rng.uniform(-3, 3) for i in range(20)}
                payload = json.dumps({"features": row})
                if row_format == "mlflow":
                    split = {"columns": list(row), "data": [list(row.values())]}
                    payload = json.dumps({"dataframe_split": split})
            started = time.perf_counter()
            try:
                conn.request(
                    "POST",
                    parts.path,
                    payload,
                    {
                        "Content-Type": content_type,
                        "Authorization": f"Bearer {token}",
                        **(headers or {}),
                    },
                )
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    with lock:
                        bad[0] += 1
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
            except OSError:
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
                with lock:
                    bad[0] += 1
            mine.append((time.perf_counter() - started) * 1000)
        with lock:
            latencies.extend(mine)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    latencies.sort()

    def pct(p):
        return latencies[min(len(latencies) - 1, int(len(latencies) * p))] if latencies else None

    return {
        "rps": len(latencies) / duration,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "non_2xx": bad[0],
        "socket_errors": "",
    }


# --- processes ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def serve(app: str, port: int, env: dict, args) -> subprocess.Popen:
    """The product or a yardstick, under the server being measured (same settings for all)."""
    if args.server == "granian":
        command = [
            str(BIN / "granian"),
            "--interface",
            "wsgi",
            app,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(args.workers),
            "--blocking-threads",
            str(args.threads),
            "--log-level",
            "warning",
        ]
        return subprocess.Popen(command, cwd=ROOT, env=env)
    command = [
        str(BIN / "gunicorn"),
        "-c",
        str(ROOT / "deploy" / "gunicorn.conf.py"),
        app,
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(args.workers),
        "--worker-class",
        args.worker_class,
        "--threads",
        str(args.threads),
        "--timeout",
        "120",
        "--log-level",
        "warning",
    ]
    return subprocess.Popen(command, cwd=ROOT, env=env)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- the run ------------------------------------------------------------------------------


def rows_body(features, count: int, seed: int) -> str:
    import random

    rng = random.Random(seed)
    rows = [{f: round(rng.uniform(-3, 3), 6) for f in features} for _ in range(count)]
    if count == 1:
        return json.dumps({"features": rows[0]})
    return json.dumps({"instances": rows})


def v2_binary_body(features, count: int, seed: int) -> tuple[bytes, int]:
    """(body, JSON header length) of an Open Inference Protocol request: one [count, F] FP64
    tensor as binary tensor data, every output asked for in binary (tritonclient's default)."""
    import random
    import struct

    rng = random.Random(seed)
    values = [round(rng.uniform(-3, 3), 6) for _ in range(count * len(features))]
    data = struct.pack(f"<{len(values)}d", *values)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": [count, len(features)],
                    "datatype": "FP64",
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return header + data, len(header)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--server", choices=("granian", "gunicorn"), default="granian")
    parser.add_argument("--worker-class", default="gthread", help="gunicorn only")
    parser.add_argument("--threads", type=int, default=1, help="per worker process")
    parser.add_argument("--models", default="bench-lr,bench-rf")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "latest.json"))
    parser.add_argument(
        "--protocols-only",
        action="store_true",
        help="only the native, MLflow and V2 cells compared with each other (no yardsticks)",
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    wrk = ensure_wrk()
    load = (lambda url, **kw: run_wrk(wrk, url, **kw)) if wrk else run_python_load
    generator = f"wrk ({wrk})" if wrk else "Python load generator (wrk unavailable)"

    workdir = Path(tempfile.mkdtemp(prefix="mlr-bench-"))
    env = {
        **os.environ,
        "VAR_DIR": str(workdir / "var"),
        "DJANGO_DEBUG": "false",
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "text",
        "CACHE_KEY_PREFIX": f"mlr-bench-{os.getpid()}",
        "PROMETHEUS_MULTIPROC_DIR": str(workdir / "prometheus"),
        "PYTHONPATH": str(ROOT),
        # The throttle still counts every request (its cost is measured) but never refuses one:
        # a 429 would be a cheap answer that flatters the figures.
        "THROTTLE_PREDICT_RATE": os.environ.get("THROTTLE_PREDICT_RATE", "1000000000/min"),
    }
    (workdir / "var").mkdir()
    (workdir / "prometheus").mkdir()
    backend = (
        f"database={'postgres' if env.get('DATABASE_URL', '').startswith('postgres') else 'sqlite'}"
        f", cache={'redis' if env.get('REDIS_URL') else 'local-memory'}"
    )
    print(f"bench: {backend}; load generator: {generator}; workdir {workdir}", flush=True)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    prepared = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "prepare.py"), str(workdir)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    setup = json.loads(prepared.stdout.strip().splitlines()[-1])
    token, features = setup["token"], setup["features"]
    models = [m for m in args.models.split(",") if m]
    costs = {}
    for model in [] if args.protocols_only else models:
        measured = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "request_cost.py"), token, model, *features],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        costs[model] = json.loads(measured.stdout.strip().splitlines()[-1])
    results: list[dict] = []

    def cell(
        target, model, scenario, url, *, body=None, random_rows=False, rows=1, levels=levels, **kw
    ):
        for concurrency in levels:
            figures = load(
                url,
                token=token,
                body=body,
                random_rows=random_rows,
                concurrency=concurrency,
                duration=args.duration,
                workdir=workdir,
                **kw,
            )
            figures.update(
                target=target,
                model=model,
                scenario=scenario,
                c=concurrency,
                rows=rows,
                rows_per_s=figures["rps"] * rows,
            )
            results.append(figures)
            print(_line(figures), flush=True)

    # Every server runs for the whole run and cells that are compared run back to back, so a
    # ratio is measured under the same background load (this machine is shared).
    servers: list[subprocess.Popen] = []
    references: dict[str, str] = {}
    try:
        port = free_port()
        servers.append(serve("config.wsgi:application", port, env, args))
        product_base = f"http://127.0.0.1:{port}"
        for model in [] if args.protocols_only else models:
            ref_env = {
                **env,
                "DJANGO_SETTINGS_MODULE": "bench.reference_app",
                "BENCH_MODEL_FILE": setup["models"][model]["file"],
            }
            ref_env.pop("PROMETHEUS_MULTIPROC_DIR")
            ref_port = free_port()
            servers.append(serve("bench.reference_app:application", ref_port, ref_env, args))
            references[model] = f"http://127.0.0.1:{ref_port}"
        wait_ready(f"{product_base}/health")
        for base in references.values():
            wait_ready(f"{base}/constant")

        for model in models:
            url = f"{product_base}/api/v1/models/{model}/predict"
            # Load the model in every worker before measuring (cold loads are timed apart).
            for _ in range(4 * args.workers * max(1, args.threads)):
                request = urllib.request.Request(
                    url,
                    rows_body(features, 1, 0).encode(),
                    {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
                )
                urllib.request.urlopen(request, timeout=30).read()
            for concurrency in levels:
                cell(
                    "product",
                    model,
                    "single, uncached (unique rows)",
                    url,
                    random_rows=True,
                    levels=[concurrency],
                )
                # The same rows in MLflow's dataframe_split, right after the native cell.
                cell(
                    "MLflow /invocations",
                    model,
                    "single, uncached (unique rows)",
                    f"{product_base}/api/v1/models/{model}/invocations",
                    random_rows=True,
                    levels=[concurrency],
                    row_format="mlflow",
                )
                if args.protocols_only:
                    continue
                cell(
                    "minimal Django view",
                    model,
                    "single, uncached (unique rows)",
                    f"{references[model]}/model",
                    random_rows=True,
                    levels=[concurrency],
                )
                if model == models[0]:
                    cell(
                        "constant-answer view",
                        "-",
                        "constant",
                        f"{references[model]}/constant",
                        body="{}",
                        levels=[concurrency],
                    )
            v2_body, v2_header = v2_binary_body(features, 1000, 1000)
            if args.protocols_only:
                cell(
                    "product",
                    model,
                    "batch of 1000",
                    url,
                    body=rows_body(features, 1000, 1000),
                    rows=1000,
                )
            else:
                cell("product", model, "single, cache hit", url, body=rows_body(features, 1, 1))
            for size in () if args.protocols_only else (100, 1000):
                cell(
                    "product",
                    model,
                    f"batch of {size}",
                    url,
                    body=rows_body(features, size, size),
                    rows=size,
                )
            # Right after the native batch of 1,000: the same rows as binary FP64 tensors.
            cell(
                "V2 /infer binary",
                model,
                "batch of 1000",
                f"{product_base}/v2/models/{model}/infer",
                body=v2_body,
                rows=1000,
                content_type="application/octet-stream",
                headers={"Inference-Header-Content-Length": str(v2_header)},
            )
        metrics = urllib.request.urlopen(f"{product_base}/metrics", timeout=10).read()
        load_seconds = re.findall(
            rb'mlregistry_model_load_seconds_(sum|count)\{model="([^"]+)"\} ([\d.e+-]+)', metrics
        )
    finally:
        for server in servers:
            stop(server)

    report = {
        "generator": generator,
        "backend": backend,
        "server": {
            "name": args.server,
            "workers": args.workers,
            "class": args.worker_class if args.server == "gunicorn" else "wsgi",
            "threads": args.threads,
        },
        "duration_s": args.duration,
        "cpus": os.cpu_count(),
        "results": results,
        "request_cost": costs,
        "models": {
            k: {kk: vv for kk, vv in v.items() if kk != "file"} for k, v in setup["models"].items()
        },
        "server_model_load_seconds": [
            (a.decode(), b.decode(), float(c)) for a, b, c in load_seconds
        ],
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print_table(report)
    shutil.rmtree(workdir, ignore_errors=True)


def _fmt(value, digits=1):
    return "-" if value is None else f"{value:,.{digits}f}"


def _line(r: dict) -> str:
    return (
        f"{r['target']:<21} {r['model']:<9} {r['scenario']:<31} c={r['c']:<3} "
        f"{_fmt(r['rps']):>9} req/s {_fmt(r['rows_per_s'], 0):>10} rows/s "
        f"p50 {_fmt(r['p50_ms'], 2):>7} ms  p99 {_fmt(r['p99_ms'], 2):>7} ms"
        + (f"  non-2xx {r['non_2xx']}" if r["non_2xx"] else "")
    )


def print_table(report: dict) -> None:
    print()
    print(
        f"Model Registry serving benchmark — {report['backend']}, {report['server']['name']} "
        f"{report['server']['workers']} x {report['server']['class']}"
        f" (threads {report['server']['threads']}), {report['cpus']} CPUs, "
        f"{report['generator']}, {report['duration_s']} s per cell"
    )
    header = (
        f"{'target':<21} {'model':<9} {'scenario':<31} {'c':<5} {'req/s':>9}       "
        f"{'rows/s':>10}        {'p50':>7}      {'p99':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in report["results"]:
        print(_line(row))
    print()
    print("In-process scikit-learn (predict + predict_proba, one thread):")
    for name, model in report["models"].items():
        ip = model["in_process"]
        print(
            f"  {name:<9} ({model['description']}): single row "
            f"{_fmt(ip['single_array_per_s'], 0)}/s"
            f" as an array, {_fmt(ip['single_frame_per_s'], 0)}/s as a DataFrame; batch of 100 "
            f"{_fmt(ip['batch100_rows_per_s'], 0)} rows/s; batch of 1,000 "
            f"{_fmt(ip['batch1000_rows_per_s'], 0)} rows/s; cold load (read + sha256 + skops) "
            f"{model['cold_load_s'] * 1000:.0f} ms for {model['artifact_bytes'] / 1e6:.2f} MB"
        )
    print()
    print("CPU per request in the web process (bench/request_cost.py: in-process, one thread):")
    for name, cost in report.get("request_cost", {}).items():
        print(
            f"  {name:<9} single uncached {cost['single_uncached_us'] / 1000:.2f} ms, cache hit "
            f"{cost['single_cached_us'] / 1000:.2f} ms, batch of 100 "
            f"{cost['batch100_us'] / 1000:.2f} ms, batch of 1,000 "
            f"{cost['batch1000_us'] / 1000:.2f} ms ({1e9 / cost['batch1000_us']:,.0f} rows/s "
            f"per core); GET /health {cost['health_us'] / 1000:.2f} ms; MLflow single "
            f"{cost['mlflow_single_us'] / 1000:.2f} ms, V2 binary batch of 1,000 "
            f"{cost['v2_binary1000_us'] / 1000:.2f} ms"
        )
    by_key = {(r["target"], r["model"], r["scenario"], r["c"]): r for r in report["results"]}
    print()
    for name in report["models"]:
        for c in sorted({r["c"] for r in report["results"]}):
            ours = by_key.get(("product", name, "single, uncached (unique rows)", c))
            ref = by_key.get(("minimal Django view", name, "single, uncached (unique rows)", c))
            if ours and ref and ref["rps"]:
                print(
                    f"  {name} c={c}: product uncached / minimal view = "
                    f"{ours['rps'] / ref['rps']:.2f}x"
                )
            mlflow = by_key.get(("MLflow /invocations", name, "single, uncached (unique rows)", c))
            if ours and mlflow and ours["rps"]:
                print(
                    f"  {name} c={c}: MLflow single / native single = "
                    f"{mlflow['rps'] / ours['rps']:.2f}x (target: within 15%)"
                )
            native = by_key.get(("product", name, "batch of 1000", c))
            v2 = by_key.get(("V2 /infer binary", name, "batch of 1000", c))
            if native and v2 and native["rows_per_s"]:
                print(
                    f"  {name} c={c}: V2 binary FP64 / native JSON, 1,000-row batches = "
                    f"{v2['rows_per_s'] / native['rows_per_s']:.2f}x rows/s (target: >= 1.5x)"
                )


if __name__ == "__main__":
    main()
