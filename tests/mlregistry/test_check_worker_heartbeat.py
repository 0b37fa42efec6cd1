import time

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from config.metrics import worker_heartbeat_record


def test_no_heartbeat_yet_is_unhealthy():
    with pytest.raises(CommandError, match="No worker heartbeat"):
        call_command("check_worker_heartbeat")


def test_a_stale_heartbeat_is_unhealthy():
    worker_heartbeat_record(now=time.time() - 600)
    with pytest.raises(CommandError, match="limit 180s"):
        call_command("check_worker_heartbeat", "--max-age", "180")


def test_a_fresh_heartbeat_is_healthy(capsys):
    worker_heartbeat_record()
    call_command("check_worker_heartbeat")
    assert "Worker heartbeat" in capsys.readouterr().out
