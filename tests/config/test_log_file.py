"""LOG_FILE: the same JSON lines as stdout, in a file that several processes share and that
rotates (reopened after an external logrotate, or rotated by the app under a file lock).

Writers are real separate processes that load the project's settings, as web workers and
Celery children do; nothing is mocked."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

WRITER = """
import logging, os, sys, time
from pathlib import Path
from django.conf import settings
from django.utils.log import configure_logging
# What django.setup() does for logging, without loading every app (seconds per process).
configure_logging(settings.LOGGING_CONFIG, settings.LOGGING)
log = logging.getLogger("mlregistry.logtest")
writer, count = int(sys.argv[1]), int(sys.argv[2])
go = Path(sys.argv[3]) if len(sys.argv) > 3 else None
for seq in range(count):
    if go is not None and seq == count // 2:
        # Second half only once the test has rotated the file.
        while not go.exists():
            time.sleep(0.01)
    log.info("line %d of writer %d", seq, writer, extra={"writer": writer, "seq": seq})
"""


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LOG_", "DRIFT_")) and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "VAR_DIR": str(tmp_path / "var"),
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
            **extra,
        }
    )
    return env


def _writers(env, count: int, lines: int, *extra_args: str) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(k), str(lines), *extra_args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(count)
    ]


def _finish(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _test_lines(records: list[dict]) -> list[tuple[int, int]]:
    return [(r["writer"], r["seq"]) for r in records if r.get("logger") == "mlregistry.logtest"]


def test_the_file_gets_the_same_json_lines_as_stdout(tmp_path):
    log_file = tmp_path / "app.log"
    code = (
        "import logging; from django.conf import settings as s; "
        "from django.utils.log import configure_logging as c; c(s.LOGGING_CONFIG, s.LOGGING); "
        "from config.logging import request_id_var; request_id_var.set('req-7'); "
        "log = logging.getLogger('mlregistry.requests'); "
        "log.info('GET / 200', extra={'status': 200, 'path': '/'}); "
        "logging.getLogger('quality.drift').warning('drift checked \\u00e9')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=_env(tmp_path, LOG_FILE=str(log_file)),
        capture_output=True,
        text=True,
        check=True,
    )

    stdout_lines = [line for line in done.stderr.splitlines() if line.startswith("{")]
    file_lines = log_file.read_text(encoding="utf-8").splitlines()
    assert file_lines == stdout_lines and len(file_lines) == 2
    first, second = (json.loads(line) for line in file_lines)
    assert (first["logger"], first["status"], first["path"]) == ("mlregistry.requests", 200, "/")
    assert first["request_id"] == "req-7" and first["level"] == "INFO"
    assert second["message"] == "drift checked \u00e9"


def test_without_log_file_nothing_but_stdout_is_configured(tmp_path):
    code = (
        "from django.conf import settings as s; "
        "print(sorted(s.LOGGING['handlers']), s.LOGGING['root']['handlers'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "['stdout'] ['stdout']"


def test_every_process_reopens_the_file_after_an_external_logrotate(tmp_path):
    log_file, rotated, go = tmp_path / "app.log", tmp_path / "app.log.1", tmp_path / "go"
    writers, lines = 4, 200
    processes = _writers(_env(tmp_path, LOG_FILE=str(log_file)), writers, lines, str(go))
    deadline = time.monotonic() + 60
    while len(_safe_lines(log_file)) < writers * lines // 2:
        assert time.monotonic() < deadline, "writers did not write their first halves"
        time.sleep(0.05)
    # What logrotate does by default (`create`): rename, and let the writers make a new file.
    log_file.rename(rotated)
    go.touch()
    _finish(processes)

    before, after = _test_lines(_records(rotated)), _test_lines(_records(log_file))
    half = lines // 2
    assert sorted(before) == [(w, s) for w in range(writers) for s in range(half)]
    assert sorted(after) == [(w, s) for w in range(writers) for s in range(half, lines)]


def _safe_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []


def test_size_rotation_shared_by_several_processes_keeps_every_line_whole(tmp_path):
    log_file = tmp_path / "app.log"
    max_bytes = 16_384
    env = _env(
        tmp_path,
        LOG_FILE=str(log_file),
        LOG_FILE_MAX_BYTES=str(max_bytes),
        LOG_FILE_BACKUP_COUNT="200",
    )
    writers, lines = 4, 300

    _finish(_writers(env, writers, lines))

    files = sorted(tmp_path.glob("app.log*"))
    assert len(files) > 5  # it did rotate, many times, with four processes writing
    seen = []
    for path in files:
        seen += _test_lines(_records(path))  # every line of every file is whole JSON
        assert path.stat().st_size <= max_bytes + 1024
    assert sorted(seen) == [(w, s) for w in range(writers) for s in range(lines)]


FORKING_WRITER = """
import logging, os, sys
from django.conf import settings
from django.utils.log import configure_logging
configure_logging(settings.LOGGING_CONFIG, settings.LOGGING)
log = logging.getLogger("mlregistry.logtest")
log.info("parent", extra={"writer": -1, "seq": 0})
children = []
for writer in range(3):
    # Celery's prefork pool and a preloading gunicorn fork children from a configured parent:
    # they inherit its open log and lock files.
    pid = os.fork()
    if pid == 0:
        for seq in range(300):
            log.info("line %d", seq, extra={"writer": writer, "seq": seq})
        os._exit(0)
    children.append(pid)
assert all(os.waitpid(pid, 0)[1] == 0 for pid in children)
"""


def test_size_rotation_is_safe_in_children_forked_from_a_configured_parent(tmp_path):
    log_file = tmp_path / "app.log"
    env = _env(
        tmp_path,
        LOG_FILE=str(log_file),
        LOG_FILE_MAX_BYTES="16384",
        LOG_FILE_BACKUP_COUNT="200",
    )
    subprocess.run(
        [sys.executable, "-c", FORKING_WRITER], cwd=ROOT, env=env, check=True, capture_output=True
    )

    seen = [line for path in tmp_path.glob("app.log*") for line in _test_lines(_records(path))]
    assert sorted(seen) == [(-1, 0)] + [(w, s) for w in range(3) for s in range(300)]


def test_size_rotation_keeps_only_the_backup_count(tmp_path):
    log_file = tmp_path / "app.log"
    env = _env(
        tmp_path,
        LOG_FILE=str(log_file),
        LOG_FILE_MAX_BYTES="4096",
        LOG_FILE_BACKUP_COUNT="2",
    )

    _finish(_writers(env, 1, 300))

    assert sorted(p.name for p in tmp_path.glob("app.log*")) == [
        "app.log",
        "app.log.1",
        "app.log.2",
    ]
    newest = _test_lines(_records(log_file))
    assert newest[-1] == (0, 299)
    assert _test_lines(_records(tmp_path / "app.log.1"))[-1][1] < newest[0][1]


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"LOG_FILE": "/nonexistent-folder/app.log"}, "LOG_FILE: the folder"),
        ({"LOG_FILE": "x.log", "LOG_FILE_MAX_BYTES": "-1"}, "LOG_FILE_MAX_BYTES must be at"),
        ({"LOG_FILE": "x.log", "LOG_FILE_BACKUP_COUNT": "0"}, "LOG_FILE_BACKUP_COUNT must be"),
    ],
)
def test_a_bad_log_file_setting_stops_start_up(tmp_path, variables, message):
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=tmp_path,
        env={**_env(tmp_path, **variables), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert message in done.stderr


def test_handler_entry_picks_external_or_in_app_rotation(tmp_path):
    import logging

    from django.core.exceptions import ImproperlyConfigured

    from config.logging import log_file_handler

    external = log_file_handler(
        path=str(tmp_path / "a.log"), max_bytes=0, backup_count=5, formatter="json"
    )
    in_app = log_file_handler(
        path=str(tmp_path / "b.log"), max_bytes=1000, backup_count=3, formatter="json"
    )
    assert external["class"] == "logging.handlers.WatchedFileHandler"
    assert in_app["class"] == "concurrent_log_handler.ConcurrentRotatingFileHandler"
    assert (in_app["maxBytes"], in_app["backupCount"]) == (1000, 3)
    assert external["filters"] == in_app["filters"] == ["request_id"]
    with pytest.raises(ImproperlyConfigured, match="does not exist"):
        log_file_handler(
            path=str(tmp_path / "no" / "c.log"), max_bytes=0, backup_count=5, formatter="json"
        )

    # Both entries build the handler they name, with the arguments they give, and write whole
    # lines. (Not through dictConfig: that would close every handler of this test process.)
    from pydoc import locate

    from pythonjsonlogger.json import JsonFormatter

    from config.logging import RequestIdFilter

    for entry in (external, in_app):
        options = {k: v for k, v in entry.items() if k not in {"class", "formatter", "filters"}}
        handler = locate(entry["class"])(**options)
        handler.setFormatter(JsonFormatter())
        handler.addFilter(RequestIdFilter())
        try:
            handler.handle(logging.makeLogRecord({"msg": "hello", "seq": 1, "levelno": 30}))
        finally:
            handler.close()
    for name in ("a.log", "b.log"):
        (record,) = _records(tmp_path / name)
        assert (record["message"], record["seq"], record["request_id"]) == ("hello", 1, "-")
