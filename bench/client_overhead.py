"""Client overhead: CPU the Python client (client/) spends per call above a bare httpx.post of
the same body, and how a 1,000-row DataFrame becomes a request body.

Only the client process's CPU is counted (time.process_time), so the server may be anything
that answers like the registry: by default a stub in a subprocess answering the documented
PredictResponse / BatchPredictResponse; with --url/--token/--model, a real registry.

    .venv/bin/python bench/client_overhead.py [--calls 600] [--url URL --token T --model NAME]

Target: client.predict of one row <= 0.3 ms CPU above the bare post.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pandas as pd
from mlregistry_client import Registry
from mlregistry_client.registry import records_json

FEATURES = [f"f{i}" for i in range(20)]
STUB = r"""
import json, socket, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMON = {"model": "bench", "model_version": 1, "stage": "production", "cached": False,
          "request_id": "0" * 32, "timestamp": "2026-01-01T00:00:00+00:00"}
ROW = {"prediction": 1, "confidence": 0.9, "probabilities": {"0": 0.1, "1": 0.9}}

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # headers and body go out in two writes: without this, delayed ACKs add ~40 ms
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if "instances" in body:
            answer = {"predictions": [ROW] * len(body["instances"]), **COMMON}
        else:
            answer = {**ROW, **COMMON}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Request-ID", "0" * 32)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def cpu_per_call(fn, calls: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per call of fn, after a warm-up."""
    for _ in range(min(50, calls)):
        fn()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        fn()
    return (
        (time.process_time() - cpu) * 1000 / calls,
        (time.perf_counter() - wall) * 1000 / calls,
    )


def paired(bare, client, calls: int, rounds: int = 10) -> tuple[float, float, float]:
    """Median CPU ms per call of each, and of their difference, over rounds that alternate
    the two (the machine is shared: alternating cancels drifts in load and clock)."""
    bares, clients, diffs = [], [], []
    for _ in range(rounds):
        b = cpu_per_call(bare, calls // rounds)[0]
        c = cpu_per_call(client, calls // rounds)[0]
        bares.append(b)
        clients.append(c)
        diffs.append(c - b)
    return statistics.median(bares), statistics.median(clients), statistics.median(diffs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=600)
    parser.add_argument("--url")
    parser.add_argument("--token", default="bench-token")
    parser.add_argument("--model", default="bench")
    args = parser.parse_args()

    stub = None
    url = args.url
    if url is None:
        stub = subprocess.Popen(
            [sys.executable, "-c", STUB], stdout=subprocess.PIPE, text=True, close_fds=True
        )
        url = f"http://127.0.0.1:{stub.stdout.readline().strip()}"
    try:
        run(url, args)
    finally:
        if stub is not None:
            stub.terminate()
            stub.wait(timeout=10)


def run(url: str, args) -> None:
    rng = np.random.default_rng(1)
    row = dict(zip(FEATURES, rng.normal(size=20).tolist(), strict=True))
    frame = pd.DataFrame(rng.normal(size=(1000, 20)), columns=FEATURES)
    path = f"{url}/api/v1/models/{args.model}/predict"
    headers = {"Authorization": f"Bearer {args.token}", "Content-Type": "application/json"}
    single_body = orjson.dumps({"features": row})

    registry = Registry(url, args.token)
    bare = httpx.Client(headers={"Accept": "application/json"})
    results = {}
    results["bare httpx.post, 1 row"] = cpu_per_call(
        lambda: bare.post(path, content=single_body, headers=headers), args.calls
    )
    results["bare httpx.post + .json(), 1 row"] = cpu_per_call(
        lambda: bare.post(path, content=single_body, headers=headers).json(), args.calls
    )
    results["client.predict(dict), 1 row"] = cpu_per_call(
        lambda: registry.predict(args.model, row), args.calls
    )
    batch_calls = max(args.calls // 20, 20)
    frame_body = records_json(FEATURES, [frame[c].to_numpy() for c in FEATURES])
    results["bare httpx.post, 1,000-row body"] = cpu_per_call(
        lambda: bare.post(path, content=frame_body, headers=headers), batch_calls
    )
    results["client.predict(DataFrame), 1,000 rows"] = cpu_per_call(
        lambda: registry.predict(args.model, frame), batch_calls
    )
    results["  body only: records_json (columns tolist + zip, orjson)"] = cpu_per_call(
        lambda: records_json(FEATURES, [frame[c].to_numpy() for c in FEATURES]), batch_calls
    )
    results["  body only: to_dict(records) + orjson (per-cell loop)"] = cpu_per_call(
        lambda: orjson.dumps({"instances": frame.to_dict(orient="records")}), batch_calls
    )
    results["  body only: DataFrame.to_json (15 digits, lossy)"] = cpu_per_call(
        lambda: frame.to_json(orient="records", double_precision=15), batch_calls
    )
    single = paired(
        lambda: bare.post(path, content=single_body, headers=headers),
        lambda: registry.predict(args.model, row),
        args.calls,
    )
    frame_over = paired(
        lambda: bare.post(path, content=frame_body, headers=headers),
        lambda: registry.predict(args.model, frame),
        batch_calls,
        rounds=5,
    )
    registry.close()
    bare.close()

    exact = json.loads(frame_body)["instances"]
    assert all(exact[i][c] == frame[c].iat[i] for i in (0, 500, 999) for c in FEATURES)

    width = max(len(k) for k in results)
    print(f"server: {url} ({'stub' if args.url is None else 'registry'}), CPU = this process")
    print(f"{'':{width}}  CPU ms/call  wall ms/call")
    for name, (cpu, wall) in results.items():
        print(f"{name:{width}}  {cpu:11.3f}  {wall:12.3f}")
    print(
        f"client overhead, 1 row: {single[2]:.3f} ms CPU per call, median of 10 alternating "
        f"rounds (bare {single[0]:.3f}, client {single[1]:.3f}; target <= 0.3)"
    )
    print(
        f"client overhead, 1,000-row DataFrame (body + DataFrame out): {frame_over[2]:.3f} ms "
        f"CPU per call (bare {frame_over[0]:.3f}, client {frame_over[1]:.3f})"
    )
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "client_overhead.json").write_text(
        json.dumps({k: {"cpu_ms": v[0], "wall_ms": v[1]} for k, v in results.items()}, indent=2)
    )


if __name__ == "__main__":
    main()
