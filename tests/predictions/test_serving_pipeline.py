"""predictions.serving.RedisPipeline: one round trip for a batch of commands, on a connection
each thread keeps; and the redis-py internals it relies on, pinned so an upgrade fails here."""

import inspect
import os
import threading

import hiredis
import pytest
from django.core.cache import cache
from redis.connection import AbstractConnection, Connection, ConnectionPool
from redis.exceptions import ResponseError

from predictions.serving import CommandBatch, RedisPipeline

needs_redis = pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs Redis (REDIS_URL)")


# --- redis-py below its public API: what RedisPipeline calls, as it calls it ---------------


def test_the_pool_hands_out_and_takes_back_a_connection_without_a_command_name():
    get = inspect.signature(ConnectionPool.get_connection)
    get.bind(object())  # pool.get_connection(): no command name
    inspect.signature(ConnectionPool.release).bind(object(), object())


def test_a_connection_sends_packed_bytes_and_reads_one_reply_per_call():
    inspect.signature(AbstractConnection.send_packed_command).bind(object(), [b"x"])
    inspect.signature(AbstractConnection.read_response).bind(object())
    inspect.signature(AbstractConnection.pack_commands).bind(object(), [("GET", "k")])
    inspect.signature(AbstractConnection.disconnect).bind(object())


@pytest.mark.parametrize(
    "command",
    [
        ("MGET", "a", "b:c"),
        ("SET", "k", 0, "EX", 61, "NX"),
        ("INCR", "throttle:predict:user:1:60:1"),
        ("SET", "pred:v1:1:abc", b"\x80\x05binary\r\n", "PX", 300000),
    ],
)
def test_hiredis_packs_exactly_what_redis_py_packs(command):
    packed_by_redis_py = b"".join(Connection().pack_commands([command]))
    assert hiredis.pack_command(command) == packed_by_redis_py


# --- against a real Redis ------------------------------------------------------------------


def _client():
    return cache.client.get_client(write=True)


@needs_redis
def test_a_batch_is_one_write_and_replies_are_found_by_handle(monkeypatch):
    """A spy, not a mock: counts the writes and calls through."""
    writes = []
    real = AbstractConnection.send_packed_command

    def spy(self, command, check_health=True):
        writes.append(command)
        return real(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", spy)
    redis = _client()
    redis.delete("seam:test:counter", "seam:test:value")
    writes.clear()
    pipeline = RedisPipeline()
    batch = CommandBatch()
    stored = batch.add("SET", "seam:test:value", b"v", "PX", 10_000)
    created = batch.add("SET", "seam:test:counter", 0, "EX", 10, "NX")
    counted = batch.add("INCR", "seam:test:counter")
    values = batch.add("MGET", "seam:test:value", "seam:test:missing")
    pipeline.send(redis, batch)
    assert len(writes) == 1 and len(batch) == 4
    assert batch[stored] is not None and batch[created] is not None
    assert batch[counted] == 1
    assert batch[values] == [b"v", None]
    redis.delete("seam:test:counter", "seam:test:value")


@needs_redis
def test_each_thread_keeps_its_own_connection():
    redis = _client()
    pipeline = RedisPipeline()
    pipeline.send(redis, _ping())
    mine = pipeline.connection
    pipeline.send(redis, _ping())
    assert pipeline.connection is mine
    theirs = []

    def other():
        pipeline.send(redis, _ping())
        theirs.append(pipeline.connection)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert theirs[0] is not None and theirs[0] is not mine


@needs_redis
def test_a_finished_thread_gives_its_connection_back_to_the_pool():
    # A server that starts a thread per request (Django's runserver, the test live server)
    # must not drain the pool one finished thread at a time.
    redis = _client()
    pool = redis.connection_pool
    pipeline = RedisPipeline()
    pipeline.send(redis, _ping())  # this thread's own, kept
    in_use = len(pool._in_use_connections)

    def request():
        pipeline.send(redis, _ping())

    for _ in range(20):
        thread = threading.Thread(target=request)
        thread.start()
        thread.join()
    assert len(pool._in_use_connections) == in_use


@needs_redis
def test_an_error_reply_raises_and_the_connection_is_not_kept():
    redis = _client()
    redis.set("seam:test:text", "not a number")
    pipeline = RedisPipeline()
    pipeline.send(redis, _ping())
    first = pipeline.connection
    batch = CommandBatch()
    batch.add("INCR", "seam:test:text")
    batch.add("PING")  # its reply is never read: the connection must not be reused
    with pytest.raises(ResponseError):
        pipeline.send(redis, batch)
    assert pipeline.connection is None
    pipeline.send(redis, _ping())
    assert pipeline.connection is not None
    redis.delete("seam:test:text")
    assert first is not None


def test_an_empty_batch_sends_nothing_and_replies_before_sending_are_refused():
    batch = CommandBatch()
    reply = batch.add("PING")
    with pytest.raises(RuntimeError):
        batch[reply]
    empty = CommandBatch()
    RedisPipeline().send(None, empty)  # no client needed: nothing to send
    assert empty.replies == []


def _ping() -> CommandBatch:
    batch = CommandBatch()
    batch.add("PING")
    return batch
