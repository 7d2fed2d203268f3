"""Cheap run records for the benchmark jobs, inside worker processes.

A run appends ``"task,occurrence_ms,start_ms"`` to an in-process list; a background task
flushes the list every 100 ms as ONE list element (records joined by ";") with one
pipelined ``RPUSH key batch`` + ``INCRBY key:n count``. So the recording costs two Redis
commands per flush, not per run, and the harness knows exactly how many it issued
(``LLEN key`` flushes, two commands each) and subtracts them from ``INFO commandstats``.
"""

from __future__ import annotations

import asyncio
import os
import time

import redis.asyncio as aioredis

FLUSH_EVERY = 0.1

_buffer: list[str] = []
_client: aioredis.Redis | None = None
_flusher: asyncio.Task[None] | None = None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def record(task: str, occurrence_ms: int, start_ms: int) -> None:
    """Note one run; flushed to Redis within ``FLUSH_EVERY`` seconds."""
    global _flusher
    _buffer.append(f"{task},{occurrence_ms},{start_ms}")
    if _flusher is None or _flusher.done():
        _flusher = asyncio.get_running_loop().create_task(_flush_forever())


async def _flush_forever() -> None:
    while True:
        await asyncio.sleep(FLUSH_EVERY)
        await flush()


async def flush() -> None:
    global _client
    if not _buffer:
        return
    key = os.environ["BENCH_RECORD_KEY"]
    if _client is None:
        _client = aioredis.Redis.from_url(os.environ["BENCH_RECORD_URL"])
    batch = _buffer[:]
    del _buffer[:]
    async with _client.pipeline(transaction=False) as pipe:
        pipe.rpush(key, ";".join(batch))
        pipe.incrby(f"{key}:n", len(batch))
        await pipe.execute()
