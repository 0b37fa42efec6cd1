"""`make bench`, batch scoring: a Parquet file of 2,000,000 rows and 20 features scored by the
logistic-regression pipeline as a batch job, by one and by two Celery worker processes, next
to in-process scikit-learn on the same data read from the same file.

A figure, not a test. Needs a Redis broker: CELERY_BROKER_URL, else CELERY_TEST_BROKER_URL,
else REDIS_URL (the chord joins there too). Uses DATABASE_URL (Postgres when set, else a SQLite
file in a temporary folder; SQLite serialises the workers' writes). Two sets of workers run
side by side, one `celery worker` process and two (prefork, concurrency 1 each), each set on a
queue of its own (BATCH_QUEUE). A job's time is wall clock from sending it to the finish's
`finished_at`, stamped as "succeeded" is committed: planning (reading the Parquet footer), the
chunks, and the finish (merging the parts into one output file while the input's SHA-256 is
checked). In-process scikit-learn
reads the same file with pyarrow and computes the same outputs (predict and predict_proba)
with the same estimator, writing nothing: the whole file at once with its threads, the same
with one thread, and (shown beside them, not the yardstick) in blocks of chunk_rows with one
thread, as a worker reads and scores. Each of `--repeat` rounds times every configuration
once, in an order that turns round by one each round, so a shared machine's slow spell or a
job's tail does not always land on the same one. The best run of each counts, against the
faster whole-file way; the workers' first runs (which load the model) are left out of the
medians. Two against one is also given as the median of each round's ratio, and beside it
what the machine gives a second process on the scoring alone: in blocks, split between two
forked processes, against one.

    .venv/bin/python bench/batch.py [--rows 2000000] [--chunk-rows 50000] [--repeat 5]
                                    [--json PATH]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
FEATURES = [f"f{i}" for i in range(20)]
SETTLE_SECONDS = 1.0


def _environment(workdir: Path) -> dict[str, str]:
    broker = (
        os.environ.get("CELERY_BROKER_URL")
        or os.environ.get("CELERY_TEST_BROKER_URL")
        or os.environ.get("REDIS_URL")
    )
    if not broker or not broker.startswith("redis"):
        sys.exit("bench/batch.py needs a Redis broker: set CELERY_BROKER_URL or REDIS_URL.")
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "VAR_DIR": str(workdir / "var"),
        "MODEL_STORE_DIR": str(workdir / "store"),
        "CELERY_BROKER_URL": broker,
        "BATCH_QUEUE": f"bench-batch-{uuid.uuid4().hex[:8]}",
        "DJANGO_DEBUG": "false",
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "text",
        "PYTHONPATH": str(ROOT),
    }
    if not os.environ.get("DATABASE_URL"):
        env["DATABASE_URL"] = f"sqlite:///{workdir / 'bench.sqlite3'}"
    return env


def _input(path: Path, rows: int, chunk_rows: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    with pq.ParquetWriter(path, pa.schema([(n, pa.float64()) for n in FEATURES])) as writer:
        for start in range(0, rows, chunk_rows):
            count = min(chunk_rows, rows - start)
            block = rng.normal(size=(count, len(FEATURES)))
            writer.write_table(pa.table({n: block[:, i] for i, n in enumerate(FEATURES)}))


def _model():
    """The logistic-regression pipeline of bench/prepare.py, registered in production."""
    import pandas as pd
    import skops.io as sio
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from mlregistry import services
    from mlregistry.models import Stage

    x, y = make_classification(
        n_samples=4000, n_features=20, n_informative=10, n_classes=3, random_state=0
    )
    frame = pd.DataFrame(x, columns=FEATURES)
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(frame, y)
    model = services.registered_model_create(
        name=f"bench-batch-{uuid.uuid4().hex[:8]}", actor="bench"
    )
    version = services.model_version_create(
        model=model, artifact=io.BytesIO(sio.dumps(lr)), actor="bench"
    )
    services.model_version_transition(version=version, stage=Stage.PRODUCTION, actor="bench")
    return model, version


def _in_process_estimator(version):
    """The estimator loaded and verified as a worker loads it."""
    from predictions.loader import ModelCache
    from predictions.serving import version_info

    return ModelCache().get(version_info(version), model_name=version.model.name).estimator


def _in_process(path: Path, estimator, *, one_thread: bool = False) -> float:
    """Seconds for pyarrow to read the file and scikit-learn to predict and predict_proba it.
    With `one_thread`, BLAS and pyarrow use one thread, as each worker process does: the same
    work per core."""
    import contextlib

    import numpy as np
    import pyarrow.parquet as pq
    from threadpoolctl import threadpool_limits

    limits = threadpool_limits(limits=1) if one_thread else contextlib.nullcontext()
    with limits:
        started = time.perf_counter()
        table = pq.read_table(path, columns=FEATURES, use_threads=not one_thread)
        x = np.column_stack([table.column(n).to_numpy() for n in FEATURES])
        estimator.predict(x)
        estimator.predict_proba(x)
        return time.perf_counter() - started


def _blocks_scored(path: Path, estimator, groups: range) -> None:
    """Reads Parquet row groups `groups` one at a time (chunk_rows rows each, as _input writes
    them) and predicts and predict_probas each block with one thread, as a worker process
    does, without the job around it."""
    import numpy as np
    import pyarrow.parquet as pq
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        source = pq.ParquetFile(path)
        for group in groups:
            block = source.read_row_group(group, columns=FEATURES, use_threads=False)
            x = np.column_stack([block.column(n).to_numpy() for n in FEATURES])
            estimator.predict(x)
            estimator.predict_proba(x)


def _in_process_batched(path: Path, estimator, *, processes: int = 1) -> float:
    """Seconds for the work of the workers' chunks alone, in blocks whose arrays stay in the
    CPU's caches where the whole file's do not: in this process, or split between
    `processes` forked ones (row groups dealt in turn), timed until the last is done. Two
    processes against one is what this machine gives a second process on this work alone:
    decoding and arithmetic that share the caches and the memory bus (well under 2x on a
    2-core VM). Workers, whose chunks also wait on the database and the broker, leave each
    other more room than that."""
    import pyarrow.parquet as pq

    groups = pq.ParquetFile(path).metadata.num_row_groups
    started = time.perf_counter()
    if processes == 1:
        _blocks_scored(path, estimator, range(groups))
        return time.perf_counter() - started
    children = []
    for n in range(processes):
        pid = os.fork()
        if pid == 0:  # the child scores its share and leaves without Python's exit handlers
            code = 1
            try:
                _blocks_scored(path, estimator, range(n, groups, processes))
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    for pid in children:
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"a scoring process failed ({status})")
    return time.perf_counter() - started


def _start_workers(count: int, env: dict[str, str], log: Path) -> list[subprocess.Popen]:
    """`count` worker processes (concurrency 1) consuming env's BATCH_QUEUE only."""
    workers = []
    for n in range(count):
        command = [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel", "INFO"]
        command += ["--concurrency", "1", "--pool", "prefork", "-Q", env["BATCH_QUEUE"]]
        command += ["--without-heartbeat", "--without-mingle", "--without-gossip"]
        command += ["-n", f"bench-{n}-{uuid.uuid4().hex[:6]}@%h"]
        handle = open(log.with_suffix(f".{n}.log"), "wb")  # noqa: SIM115 - lives with the process
        workers.append(
            subprocess.Popen(
                command,
                cwd=ROOT,
                # JSON task lines: the phases' durations are read back from them.
                env={**os.environ, **env, "LOG_LEVEL": "INFO", "LOG_FORMAT": "json"},
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    deadline = time.monotonic() + 120
    for n in range(count):
        path = log.with_suffix(f".{n}.log")
        while b"ready." not in path.read_bytes():
            if time.monotonic() > deadline or workers[n].poll() is not None:
                sys.exit(f"worker {n} did not start:\n{path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
    return workers


def _stop(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


def _task_seconds(logs: list[Path]) -> dict[str, float]:
    """Seconds each kind of batch task ran, summed over the workers' JSON log lines."""
    totals: dict[str, float] = {}
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            task = str(record.get("task", ""))
            if task.startswith("predictions.tasks.batch_") and "duration_ms" in record:
                name = task.removeprefix("predictions.tasks.")
                totals[name] = totals.get(name, 0.0) + record["duration_ms"] / 1000
    return {name: round(seconds, 3) for name, seconds in sorted(totals.items())}


def _job_seconds(model, path: Path, chunk_rows: int, env: dict[str, str], sender) -> dict:
    """Seconds from sending the job's start task (on `sender`, a Celery app whose broker
    connection is already open) until the finish's `finished_at`, stamped in the transaction
    that commits "succeeded". Read from the row rather than timed by a tight poll: on 2 cores
    a poll every 10 ms took CPU from the workers, the two-worker set (both cores busy) more
    than the one-worker set (a core to spare)."""
    from predictions import batch
    from predictions.models import BatchChunk, BatchJob, BatchStatus

    with open(path, "rb") as upload:
        job = batch.batch_job_create(
            model=model, actor="bench", upload=upload, chunk_rows=chunk_rows, enqueue=False
        )
    started = time.time()
    sender.send_task(
        "predictions.tasks.batch_job_start_task", args=[job.pk], queue=env["BATCH_QUEUE"]
    )
    while True:
        time.sleep(0.25)
        job = BatchJob.objects.get(pk=job.pk)
        if job.status not in (BatchStatus.QUEUED, BatchStatus.RUNNING):
            break
    if job.status != BatchStatus.SUCCEEDED:
        sys.exit(f"batch job {job.pk} {job.status}: {job.error}")
    seconds = job.finished_at.timestamp() - started
    # What follows the commit (the parts' deletion) must not run into the next measurement.
    time.sleep(SETTLE_SECONDS)
    chunks = list(BatchChunk.objects.filter(job=job).values_list("seconds", flat=True))
    return {
        "job": job.pk,
        "rows": job.rows_done,
        "chunks": len(chunks),
        "seconds": seconds,
        "chunk_seconds_sum": sum(chunks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "batch.json"))
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="mlr-bench-batch-"))
    env = _environment(workdir)
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    path = workdir / "input.parquet"
    _input(path, args.rows, args.chunk_rows)
    model, version = _model()
    estimator = _in_process_estimator(version)
    # Both worker sets stay up, each on a queue of its own (an idle worker only waits on
    # Redis), and each round times every configuration once, in turn: a shared machine's
    # slow minute then slows all of them, not one configuration's runs.
    sets = {count: {**env, "BATCH_QUEUE": f"{env['BATCH_QUEUE']}-{count}w"} for count in (1, 2)}
    workers = {
        count: _start_workers(count, sets[count], workdir / f"worker{count}") for count in sets
    }
    from celery import Celery

    sender = Celery("bench", broker=env["CELERY_BROKER_URL"], set_as_current=False)
    sender.connection_for_write().ensure_connection()
    measures = {
        "in_process": lambda: _in_process(path, estimator),
        "in_process_one_thread": lambda: _in_process(path, estimator, one_thread=True),
        "in_process_batched": lambda: _in_process_batched(path, estimator),
        "in_process_batched_2": lambda: _in_process_batched(path, estimator, processes=2),
        **{
            str(count): partial(_job_seconds, model, path, args.chunk_rows, sets[count], sender)
            for count in sets
        },
    }
    runs: dict[str, list] = {name: [] for name in measures}
    order = list(measures)
    try:
        for round_number in range(args.repeat):
            # Each round in another order: nothing always runs right after a job's tail.
            shift = round_number % len(order)
            for name in order[shift:] + order[:shift]:
                runs[name].append(measures[name]())
    finally:
        sender.close()
        for started in workers.values():
            _stop(started)
    ways = ("in_process", "in_process_one_thread", "in_process_batched", "in_process_batched_2")
    report: dict = {
        "rows": args.rows,
        "features": len(FEATURES),
        "chunk_rows": args.chunk_rows,
        "input_bytes": path.stat().st_size,
        "cpus": os.cpu_count(),
        "database": "postgres"
        if env.get("DATABASE_URL", os.environ.get("DATABASE_URL", "")).startswith("postgres")
        else "sqlite",
        "rounds": args.repeat,
        "workers": {},
    }
    for way in ways:
        best = min(runs[way])
        report[way] = {
            "seconds": best,
            "rows_per_s": args.rows / best,
            "median_seconds": median(runs[way]),
            "runs_seconds": [round(seconds, 3) for seconds in runs[way]],
        }
    # The yardstick is scikit-learn reading the whole file and scoring it, the faster of its
    # two ways (on a busy 2-core machine its own threads were sometimes the slower one). The
    # batched way is what a worker does, without the job: shown beside it.
    yardstick = min(report["in_process"]["seconds"], report["in_process_one_thread"]["seconds"])
    yardstick_median = min(
        report["in_process"]["median_seconds"], report["in_process_one_thread"]["median_seconds"]
    )
    batched = report["in_process_batched"]["seconds"]
    report["yardstick_seconds"] = yardstick
    try:
        for count in sets:
            jobs = runs[str(count)]
            figures = min(jobs, key=lambda run: run["seconds"])
            figures["first_run_seconds"] = jobs[0]["seconds"]
            figures["runs_seconds"] = [round(run["seconds"], 3) for run in jobs]
            figures["warm_median_seconds"] = median(run["seconds"] for run in jobs[1:] or jobs)
            logs = [(workdir / f"worker{count}").with_suffix(f".{n}.log") for n in range(count)]
            figures["task_seconds"] = _task_seconds(logs)
            figures["rows_per_s"] = args.rows / figures["seconds"]
            figures["vs_in_process"] = yardstick / figures["seconds"]
            figures["vs_in_process_batched"] = batched / figures["seconds"]
            report["workers"][str(count)] = figures
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    one, two = report["workers"]["1"], report["workers"]["2"]
    report["two_vs_one"] = one["seconds"] / two["seconds"]
    # Ratios of runs timed in the same round, where a slow spell of the machine slows both:
    # their median moves less with one lucky run than the ratio of the bests. The workers'
    # first round (the model's load) is left out.
    report["two_vs_one_paired_median"] = median(
        a["seconds"] / b["seconds"] for a, b in list(zip(runs["1"], runs["2"], strict=True))[1:]
    )
    two_processes = report["in_process_batched_2"]["seconds"]
    report["ceiling_two_vs_one"] = batched / two_processes
    report["ceiling_two_vs_one_paired_median"] = median(
        a / b for a, b in zip(runs["in_process_batched"], runs["in_process_batched_2"], strict=True)
    )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(
        f"\nbatch scoring: {args.rows:,} rows x {len(FEATURES)} features, Parquet "
        f"({report['input_bytes'] / 1e6:.0f} MB), chunks of {args.chunk_rows:,}, "
        f"{report['database']}, {report['cpus']} CPUs, best of {args.repeat} rounds"
    )
    print(f"{'':32}{'seconds':>9}{'rows/s':>12}{'vs in-process':>15}{'vs batched':>12}")
    lines = [
        ("in-process sklearn", report["in_process"]["seconds"]),
        ("  same, one thread", report["in_process_one_thread"]["seconds"]),
        ("  same, in blocks of chunk_rows", batched),
        ("  same, in two processes", two_processes),
        *(
            (f"{count} worker process(es)", figures["seconds"])
            for count, figures in report["workers"].items()
        ),
    ]
    for label, seconds in lines:
        print(
            f"{label:32}{seconds:>9.2f}{args.rows / seconds:>12,.0f}"
            f"{yardstick / seconds:>15.2f}{batched / seconds:>12.2f}"
        )
    one_median, two_median = one["warm_median_seconds"], two["warm_median_seconds"]
    print(
        f"medians: in-process {yardstick_median:.2f} s, in blocks "
        f"{report['in_process_batched']['median_seconds']:.2f} s; one worker {one_median:.2f} s "
        f"({yardstick_median / one_median:.2f} of in-process), two {two_median:.2f} s "
        f"({one_median / two_median:.2f}x one) (the workers' first runs, which load the model, "
        "left out)"
    )
    for count, figures in report["workers"].items():
        print(
            f"  {count} worker(s): runs {figures['runs_seconds']} s; seconds per task kind over "
            f"all runs: {figures['task_seconds']}"
        )
    print(
        f"scoring alone in blocks, two processes against one (what this machine gives a second "
        f"process): {report['ceiling_two_vs_one']:.2f}x best, "
        f"{report['ceiling_two_vs_one_paired_median']:.2f}x median of the rounds"
    )
    print(
        f"one worker: {one['vs_in_process']:.2f} of in-process (target >= 0.60); two workers: "
        f"{report['two_vs_one']:.2f}x one best, {report['two_vs_one_paired_median']:.2f}x median "
        "of the rounds (target >= 1.6x)"
    )


if __name__ == "__main__":
    main()
