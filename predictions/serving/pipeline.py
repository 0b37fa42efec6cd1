"""One Redis pipeline per request thread, below redis-py's Pipeline class.

redis-py's `Pipeline` costs more CPU than the round trip itself for the handful of commands a
predict request sends: response callbacks, retries and command stacks per command, and a
connection taken from the pool and given back (a lock and bookkeeping each side) per call.
`RedisPipeline` sends the commands in one write and reads their replies on a connection each
request thread keeps for itself.

It relies on these redis-py connection methods, pinned by tests/predictions/
test_serving_pipeline.py so that an upgrade that changes them fails loudly:
`ConnectionPool.get_connection()`, `ConnectionPool.release(conn)`,
`Connection.send_packed_command(bytes | list[bytes])`, `Connection.read_response()`,
`Connection.pack_commands(list[tuple])` and `Connection.disconnect()`; and, when installed,
`hiredis.pack_command(tuple) -> bytes` (byte-for-byte what `pack_commands` writes).
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

try:
    import hiredis
except ImportError:  # pragma: no cover - hiredis is in requirements.txt
    hiredis = None


class Reply:
    """A handle on one command's reply in a `CommandBatch` (no index arithmetic for callers)."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


class CommandBatch:
    """Commands to send in one round trip; `add` returns the handle of the command's reply."""

    __slots__ = ("commands", "replies")

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []
        self.replies: list[Any] | None = None

    def add(self, *command: Any) -> Reply:
        self.commands.append(command)
        return Reply(len(self.commands) - 1)

    def __len__(self) -> int:
        return len(self.commands)

    def __getitem__(self, reply: Reply) -> Any:
        if self.replies is None:
            raise RuntimeError("the batch was not sent")
        return self.replies[reply.index]


class _Held:
    """The connection one thread holds. threading.local drops a thread's values when the
    thread ends, and this gives the connection back to its pool then: a server that starts a
    thread per request (Django's runserver, the test live server) would otherwise drain the
    pool, one connection per finished thread."""

    __slots__ = ("conn", "pid", "pool")

    def __init__(self, conn: Any, pool: Any) -> None:
        self.conn, self.pool, self.pid = conn, pool, os.getpid()

    def __del__(self) -> None:
        if self.conn is not None and self.pid == os.getpid():
            with contextlib.suppress(Exception):
                self.pool.release(self.conn)


class RedisPipeline:
    """Sends a `CommandBatch` on a connection pinned to the calling thread (per process and
    pool) and given back when the thread ends. An error reply or a socket error raises, and
    the connection is closed and given back to its pool rather than kept with replies still
    unread."""

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def connection(self) -> Any:
        """The connection this thread holds, or None (tests)."""
        held = getattr(self._local, "held", None)
        return held.conn if held is not None else None

    def send(self, redis_client: Any, batch: CommandBatch) -> None:
        """Sends every command of `batch` and stores their replies in it."""
        if not batch.commands:
            batch.replies = []
            return
        pool = redis_client.connection_pool
        local = self._local
        held = getattr(local, "held", None)
        if held is None or held.pool is not pool or held.pid != os.getpid():
            held = local.held = _Held(pool.get_connection(), pool)
        conn = held.conn
        try:
            conn.send_packed_command(pack(conn, batch.commands))
            batch.replies = [conn.read_response() for _ in batch.commands]
        except BaseException:
            held.conn = None
            local.held = None
            conn.disconnect()
            pool.release(conn)
            raise


def pack(conn: Any, commands: list[tuple[Any, ...]]) -> list[bytes]:
    """The RESP bytes of `commands` (hiredis's packer when present: several times faster)."""
    if hiredis is None:
        return conn.pack_commands(commands)
    return [b"".join([hiredis.pack_command(command) for command in commands])]
