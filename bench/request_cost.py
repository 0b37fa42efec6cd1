"""CPU time one predict request costs the web process, measured in-process.

Run by bench/run.py after bench/prepare.py, in the product's environment: it calls the WSGI
application directly (every middleware, DRF, the Redis pipeline, the model, the log, the
metrics; no HTTP server, no load generator) and reads the calling thread's CPU clock. On a
shared machine this moves far less than req/s under wrk does, because time spent waiting for a
CPU is not counted; and its inverse bounds what one core can serve.

Usage: request_cost.py TOKEN MODEL [FEATURE ...]; prints one JSON object on the last line.
"""

import io
import itertools
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from bench.run import v2_binary_body  # noqa: E402
from config.wsgi import application  # noqa: E402


def _environ(path: str, body: bytes, token: str, headers: dict | None = None) -> dict:
    return {
        **(headers or {}),
        "REQUEST_METHOD": "POST" if body else "GET",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_AUTHORIZATION": f"Bearer {token}",
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def _cost(
    path: str, bodies: list[bytes], token: str, repeat: int, headers: dict | None = None
) -> float:
    """Median over 5 rounds of thread CPU microseconds per request."""
    statuses: list[str] = []

    def start_response(status, headers, exc_info=None):
        statuses.append(status)

    upcoming = itertools.cycle(bodies)  # unique rows stay unique across rounds
    for _ in range(20):  # warm: model loaded, token's user known, pipeline connected
        b"".join(application(_environ(path, next(upcoming), token, headers), start_response))
    rounds = []
    for _ in range(5):
        statuses.clear()
        started = time.thread_time()
        for _ in range(repeat):
            b"".join(application(_environ(path, next(upcoming), token, headers), start_response))
        rounds.append((time.thread_time() - started) / repeat * 1e6)
        bad = [s for s in statuses if not s.startswith("200")]
        if bad:
            raise SystemExit(f"{path}: {len(bad)} answers were not 200 (first: {bad[0]})")
    return sorted(rounds)[2]


def main() -> None:
    token, model, *features = sys.argv[1:]
    rng = random.Random(7)

    def row() -> dict:
        return {name: round(rng.uniform(-3, 3), 6) for name in features}

    path = f"/api/v1/models/{model}/predict"
    unique = [json.dumps({"features": row()}).encode() for _ in range(3000)]
    same = [json.dumps({"features": row()}).encode()]
    batches = {
        size: [json.dumps({"instances": [row() for _ in range(size)]}).encode() for _ in range(3)]
        for size in (100, 1000)
    }
    v2 = [v2_binary_body(features, 1000, seed) for seed in range(3)]
    mlflow = [
        json.dumps({"dataframe_split": {"columns": features, "data": [list(row().values())]}})
        for _ in range(3000)
    ]
    result = {
        "model": model,
        "health_us": _cost("/health", [b""], token, 400),
        "single_uncached_us": _cost(path, unique, token, 400),
        "single_cached_us": _cost(path, same, token, 400),
        "batch100_us": _cost(path, batches[100], token, 40),
        "batch1000_us": _cost(path, batches[1000], token, 8),
        "v2_binary1000_us": _cost(
            f"/v2/models/{model}/infer",
            [body for body, _ in v2],
            token,
            8,
            {
                "CONTENT_TYPE": "application/octet-stream",
                "HTTP_INFERENCE_HEADER_CONTENT_LENGTH": str(v2[0][1]),
            },
        ),
        "mlflow_single_us": _cost(
            f"/api/v1/models/{model}/invocations", [b.encode() for b in mlflow], token, 400
        ),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
