"""README.md played as a newcomer plays it: `make run` (scripts/run.sh) on a fresh SQLite database
in a temporary folder, then every ```bash block of the README, in order, in one bash session.

A `curl` that answers anything but 2xx fails the test, unless its line ends with
`# answers NNN` (the README shows a refusal on purpose). `sh` blocks are not run: they need
infrastructure of their own (a broker, Docker, a backup id). The server's terminal output is
checked too: the banner only once /health/ready answers, one plain-text access line per request,
none of the harmless warnings, and Ctrl-C (SIGINT to the process group) stops everything.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests import live

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BANNER = "Model Registry is running on"
EXPECTED_STATUS = re.compile(r"^(?P<command>.*\S)\s+# answers (?P<status>\d{3})\s*$")
# Harmless start-up warnings `make run` must not show (each was silenced at its source).
NOISE = ("seems quite high", "No hostname was supplied", "worker_heartbeat_task")

pytestmark = [
    pytest.mark.docs,
    pytest.mark.skipif(shutil.which("curl") is None, reason="the README's commands need curl"),
    pytest.mark.skipif(
        not (ROOT / ".venv" / "bin" / "python").exists(),
        reason="the README's commands use .venv/bin/python (make install creates it)",
    ),
]

# Every README curl goes through this: the body is shown as curl shows it, and an HTTP status
# other than the expected one (2xx, or EXPECT_STATUS) fails the session.
CURL_GUARD = r"""
curl() {
  local out code
  out=$(command curl -sS -w '\n%{http_code}' "$@") || return
  code=${out##*$'\n'}
  printf '%s\n' "${out%$'\n'*}"
  if [[ "$code" != "${EXPECT_STATUS:-2}"* ]]; then
    echo "README curl answered HTTP $code (expected ${EXPECT_STATUS:-2xx}): curl $*" >&2
    return 1
  fi
}
"""


def readme_bash_blocks(text: str) -> list[str]:
    """The ```bash blocks of a Markdown text, in order."""
    return re.findall(r"^```bash\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def session_script(blocks: list[str], *, port: int) -> str:
    """One bash script of the blocks, pointed at `port`, with expected refusals marked."""
    lines = []
    for line in "\n".join(blocks).splitlines():
        match = EXPECTED_STATUS.match(line)
        if match:
            line = f"EXPECT_STATUS={match['status']} {match['command']}"
        lines.append(line.replace("127.0.0.1:8000", f"127.0.0.1:{port}"))
    return "set -euo pipefail\n" + CURL_GUARD + "\n".join(lines) + "\n"


def test_session_script_marks_expected_refusals_and_moves_the_port():
    script = session_script(
        ["curl -s http://127.0.0.1:8000/x  # answers 403\ncurl -s http://127.0.0.1:8000/y"],
        port=9123,
    )
    assert "EXPECT_STATUS=403 curl -s http://127.0.0.1:9123/x\n" in script
    assert "\ncurl -s http://127.0.0.1:9123/y\n" in script


class _Output:
    """Collects a process's output lines in a thread, so the test can wait for one."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, *, timeout: float, process: subprocess.Popen) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return True
            if process.poll() is not None:
                return False
            time.sleep(0.1)
        return False

    def text(self) -> str:
        return "\n".join(self.lines)


def _ready_status(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=10) as r:
            return r.status
    except OSError as exc:
        return getattr(exc, "code", 0)


def _session_left(sid: int) -> str:
    """The processes still running in session `sid` (the script and everything it started)."""
    listing = subprocess.run(
        ["ps", "-o", "pid=,stat=,args=", "-s", str(sid)], capture_output=True, text=True
    ).stdout
    return "\n".join(line for line in listing.splitlines() if " Z" not in line[:14])


@pytest.fixture
def make_run(tmp_path):
    """scripts/run.sh on a free loopback port, everything under tmp_path (SQLite, artifacts,
    broker folders); yields (port, output, env). Stopped with SIGINT, as Ctrl-C does."""
    port = live.free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "LOG_LEVEL"}
        and not key.startswith(("DJANGO_", "PYTEST", "COV_"))
    }
    env.update({"PORT": str(port), "VAR_DIR": str(tmp_path / "var"), "PYTHONUNBUFFERED": "1"})
    process = subprocess.Popen(
        [str(ROOT / "scripts" / "run.sh")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output = _Output(process.stdout)
    try:
        yield process, port, output, env
    finally:
        for pid in _session_left(process.pid).split():
            if pid.isdigit():  # whatever outlived the test (it has failed by then)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        process.wait(timeout=30)


def test_the_readme_runs_as_written_against_make_run(make_run, tmp_path):
    process, port, output, env = make_run
    assert output.wait_for(BANNER, timeout=240, process=process), output.text()
    # The banner is printed only once the server answers readiness.
    assert _ready_status(port) == 200, output.text()

    # The README's commands run from a checkout's root; a scratch folder with the same
    # entries keeps what they write (model.skops) out of the repository.
    workdir = tmp_path / "checkout"
    workdir.mkdir()
    for entry in (".venv", "manage.py"):
        (workdir / entry).symlink_to(ROOT / entry)
    blocks = readme_bash_blocks(README.read_text())
    assert len(blocks) >= 4, "the README's first steps are no longer ```bash blocks"
    session = subprocess.run(
        ["bash", "-c", session_script(blocks, port=port)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert session.returncode == 0, (
        f"README session failed:\n{session.stdout}\n{session.stderr}\n--- server ---\n"
        + output.text()
    )
    # The prediction after the promotion came from the uploaded version, as a species name.
    assert re.search(
        r'"prediction":\s*"(setosa|versicolor|virginica)".*"model_version":\s*2', session.stdout
    ), session.stdout

    time.sleep(0.5)  # the access lines of the last requests
    log = output.text()
    after_banner = log[log.index(BANNER) :]
    for line in (
        "POST /api/v1/models/iris-classifier/versions/ 201",
        "POST /api/v1/models/iris-classifier/versions/2/transition 200",
        "POST /api/v1/models/iris-classifier/rollback 200",
        "POST /api/v1/models/iris-classifier/versions/ 403",
    ):
        assert line in after_banner, after_banner
    assert not [ln for ln in log.splitlines() if ln.lstrip().startswith("{")], log
    for noise in NOISE:
        assert noise not in log, noise

    # Ctrl-C: SIGINT to the foreground group (the script) stops the server and the worker.
    os.killpg(process.pid, signal.SIGINT)
    deadline = time.monotonic() + 60
    while (process.poll() is None or _session_left(process.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _session_left(process.pid)
    assert process.poll() is not None and not left, f"outlived Ctrl-C:\n{left}\n{output.text()}"
