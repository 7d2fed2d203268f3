"""Readers of the event stream meet entries they cannot read (written by something else,
or damaged): they skip them, count them once, and read on past them."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
import redis.asyncio as aioredis

from cml_jobs.events import EventStream, StreamEntry
from cml_jobs.stores._redis_events import stream_key
from tests.test_events_stream import _event
from tests.workers import DEADLINE_S

pytestmark = pytest.mark.redis


#: Stream entries a reader must skip: not UTF-8, not JSON, not an array, no events field,
#: an array of things that are not events.
FOREIGN: list[dict[str, bytes]] = [
    {"events": b"\xff\xfe\x00 not text"},
    {"events": b"[{not json"},
    {"events": b'{"kind": "succeeded"}'},
    {"payload": b"someone else's entry"},
    {"events": b'[42, {"kind": "no-such-kind"}]'},
]


async def _write(client: aioredis.Redis, prefix: str, *fields: dict[str, bytes]) -> None:
    for entry in fields:
        await client.xadd(stream_key(prefix), entry)  # type: ignore[arg-type]


def _events_entry(*numbers: int) -> dict[str, bytes]:
    return {"events": ("[" + ",".join(_event(n).to_json() for n in numbers) + "]").encode()}


async def test_entries_that_hold_no_events_are_skipped_counted_once_and_read_past(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    """Foreign or damaged entries before, between and after good ones (and one bad event
    inside a good entry): readers see every good event in order, count each bad entry
    once, last_id() answers, and a reader resuming from any position it was handed (or
    from a full batch of nothing but bad entries) goes on past them."""
    mixed_entry = {"events": b"[" + _event(3).to_json().encode() + b', {"kind": 1}]'}
    await _write(redis_client, key_prefix, *FOREIGN, _events_entry(0, 1), FOREIGN[0])
    await _write(redis_client, key_prefix, _events_entry(2), mixed_entry, *FOREIGN)
    stream = EventStream(redis_client, prefix=key_prefix, batch=2, block=timedelta(0.05))

    entries = await _read_all(stream, "0-0")
    assert [e.event.task_id for e in entries] == ["t0", "t1", "t2", "t3"]
    # FOREIGN twice (six bad events: its last entry holds two), FOREIGN[0], the bad event
    assert stream.skipped == 14
    assert await _read_all(stream, "0-0") == entries and stream.skipped == 14  # counted once
    assert await stream.last_id() != "0-0"
    resumed = [await _read_all(stream, entry.id) for entry in entries]
    assert [[e.event.task_id for e in rest] for rest in resumed] == [
        ["t1", "t2", "t3"],
        ["t2", "t3"],
        ["t3"],
        [],
    ]
    await _write(redis_client, key_prefix, _events_entry(4))
    follower = stream.follow(entries[-1].id)
    async with asyncio.timeout(DEADLINE_S):
        assert (await anext(follower)).event.task_id == "t4"
    fresh = EventStream(redis_client, prefix=key_prefix, batch=1)
    assert [e.event.task_id for e in await fresh.read()] == ["t0", "t1"]  # past 5 bad ones


async def _read_all(stream: EventStream, after: str) -> list[StreamEntry]:
    """Every event after ``after``, read until a read finds nothing more."""
    found: list[StreamEntry] = []
    async with asyncio.timeout(DEADLINE_S):
        while batch := await stream.read(found[-1].id if found else after):
            found += batch
    return found
