"""Sending a Celery task once the transaction that recorded its work commits, and knowing
when the broker did not take it.

Sent before the commit, a worker could look for the row before it exists; sent after it, the
send can fail with the row already committed. So the send runs as an on_commit hook, and when
the broker refuses it the work's own row is told (`on_failure`, e.g. the job marked failed
and resumable), since no worker will ever pick that row up, and the caller raises
BrokerUnavailable (503 with Retry-After) instead of answering that the work is under way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from config.errors import BROKER_ERRORS, UnavailableError

logger = logging.getLogger(__name__)


class BrokerUnavailable(UnavailableError):
    """The Celery broker did not take a task (503, Retry-After)."""

    error_type = "broker_unavailable"


@dataclass
class Sending:
    """What became of a send_on_commit: `failure` names the broker's error once the hook ran
    and the send failed; None while it has not run (an outer transaction is still open) or
    once it succeeded."""

    failure: str | None = None

    def raise_if_failed(self, message: str) -> None:
        """BrokerUnavailable(`message` and the broker's error) if the send failed."""
        if self.failure is not None:
            raise BrokerUnavailable(f"{message} (the broker said: {self.failure})")


def _broker_error(exc: BaseException) -> bool:
    # kombu wraps most connection failures in its OperationalError; a socket error or a
    # transport client's own error (redis-py, py-amqp) can still come through bare.
    module = type(exc).__module__.split(".")[0]
    return isinstance(exc, (*BROKER_ERRORS, OSError)) or module in ("redis", "amqp", "kombu")


def send_on_commit(
    send: Callable[[], Any], *, task: str, on_failure: Callable[[str], Any]
) -> Sending:
    """Runs `send()` (e.g. a partial of a task's apply_async) once the current transaction
    commits, at once outside one. If it raises, logs it and calls `on_failure(reason)`, which
    records on the work's row that it was never sent. Returns the Sending to check after the
    outermost atomic block has exited."""
    sending = Sending()

    def hook() -> None:
        from config.celery import ensure_filesystem_broker_dirs

        try:
            ensure_filesystem_broker_dirs()
            send()
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"[:300]
            logger.exception("could not send a task", extra={"task": task})
            try:
                on_failure(reason)
            except Exception:
                # The database too, say: the work stays as recorded (queued), and the caller
                # still answers 503 rather than losing the other commit hooks to this one.
                logger.exception("could not record an unsent task", extra={"task": task})
            if not _broker_error(exc):
                raise  # a bug, not an outage: a 500, with the work marked unsent all the same
            sending.failure = reason

    transaction.on_commit(hook)
    return sending
