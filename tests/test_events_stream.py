"""Lifecycle events across processes: the bounded Redis Stream that workers publish to."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import pytest
import redis.asyncio as aioredis

from cml_jobs import BackgroundTaskScheduler, EventKind, RecurrentTaskDescriptor, TaskEvent
from cml_jobs.events import EventStream, StreamEntry
from cml_jobs.stores._redis_events import EventPublisher, stream_key
from tests.workers import fleet

pytestmark = pytest.mark.redis

RUNS = 6  # the recording job stops its task after this many runs
T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
async def app(redis_url: str, key_prefix: str) -> AsyncIterator[BackgroundTaskScheduler]:
    """The app side: schedules into Redis (and publishes its own events to the stream)."""
    scheduler = BackgroundTaskScheduler.configure(
        redis_url=redis_url,
        modules=["tests.fixtures.recording"],
        key_prefix=key_prefix,
        queue_name=f"{key_prefix}queue",
    )
    async with scheduler:
        yield scheduler


async def _until_stopped(stream: EventStream, after: str, limit: int = 1000) -> list[StreamEntry]:
    """Follow the stream from ``after`` until the task's ``stopped`` event."""
    seen: list[StreamEntry] = []
    async with asyncio.timeout(30):
        async for entry in stream.follow(after):
            seen.append(entry)
            if entry.event.kind is EventKind.STOPPED or len(seen) >= limit:
                return seen
    return seen


async def _reconnecting(redis_url: str, prefix: str, after: str) -> list[StreamEntry]:
    """An observer that drops its connection after every 3 events, and resumes from the
    last id it handled with a new connection."""
    seen: list[StreamEntry] = []
    position = after
    async with asyncio.timeout(30):
        while not seen or seen[-1].event.kind is not EventKind.STOPPED:
            client = aioredis.Redis.from_url(redis_url)
            stream = EventStream(client, prefix=prefix, block=timedelta(seconds=0.2))
            try:
                async for entry in stream.follow(position):
                    seen.append(entry)
                    position = entry.id
                    if len(seen) % 3 == 0 or entry.event.kind is EventKind.STOPPED:
                        break
            finally:
                await client.aclose()
    return seen


async def test_a_worker_processes_events_reach_observers_in_another_process_in_order(
    app: BackgroundTaskScheduler, redis_client: aioredis.Redis, redis_url: str, key_prefix: str
) -> None:
    """A worker process's run events reach this process through the stream, in order; a
    reconnecting observer and an independent one each receive every one of them."""
    stream = EventStream(redis_client, prefix=key_prefix, block=timedelta(seconds=0.2))
    start = await stream.last_id()
    with fleet(redis_url, key_prefix) as workers:
        workers.start(1)
        await workers.wait_ready(redis_client)
        steady = asyncio.create_task(_until_stopped(stream, start))
        reconnecting = asyncio.create_task(_reconnecting(redis_url, key_prefix, start))
        await app.bus.schedule_task(
            RecurrentTaskDescriptor(
                id="watched", name="RecordingJob", interval=0.2, data={"stop_after": RUNS}
            )
        )
        followed, resumed = await steady, await reconnecting
        assert workers.stop() == [0]

    events = [entry.event for entry in followed if entry.event.task_id == "watched"]
    assert events[0].kind is EventKind.SCHEDULED
    # An occurrence the worker found too late is "missed" (legitimately): leave those out.
    kinds = [event.kind.value for event in events[1:] if event.kind is not EventKind.MISSED]
    assert kinds == [*["started", "succeeded"] * (RUNS - 1), "started", "stopped"]
    ran = [event.occurrence_at for event in events if event.kind is EventKind.STARTED]
    assert ran == sorted(ran) and len(set(ran)) == RUNS
    assert all(e.duration is not None for e in events if e.kind is EventKind.SUCCEEDED)
    ids = [entry.id for entry in followed]
    assert [entry.id for entry in resumed] == ids  # none missed, none repeated
    assert len(resumed) == len(followed) >= 2 * RUNS + 1


class _StuckRedis:
    """A Redis whose XADD never returns: a stalled or unreachable server."""

    async def xadd(self, *args: object, **kwargs: object) -> None:
        await asyncio.Event().wait()  # Redis never answers


def _event(n: int) -> TaskEvent:
    return TaskEvent(EventKind.SUCCEEDED, f"t{n}", "Job", T0, T0, attempt=1)


@pytest.mark.parametrize("count", [50_000])
async def test_publishing_never_waits_for_redis(count: int) -> None:
    """With Redis stalled, publish returns at once; past the buffer the oldest are dropped."""
    publisher = EventPublisher(_StuckRedis(), buffer=1000)  # type: ignore[arg-type]
    publisher.start()
    started = time.perf_counter()
    for n in range(count):
        publisher.publish(_event(n))
    elapsed = time.perf_counter() - started
    await publisher.stop(timedelta(seconds=0.1))
    assert elapsed < 5
    assert publisher.dropped >= count - 1000 - 500  # one batch may be in flight


async def test_the_stream_is_bounded_and_keeps_the_publishing_order(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    """XADD MAXLEN ~ keeps the stream near its bound; entries keep the order of publish."""
    publisher = EventPublisher(redis_client, prefix=key_prefix, maxlen=100, linger=timedelta(0))
    publisher.start()
    for n in range(1000):
        publisher.publish(_event(n))
        await asyncio.sleep(0.001)  # events published apart land in entries of their own
    await publisher.stop()
    length = await redis_client.xlen(stream_key(key_prefix))
    assert 100 <= length < 1000
    entries = await EventStream(redis_client, prefix=key_prefix, batch=1000).read()
    numbers = [int(entry.event.task_id[1:]) for entry in entries]
    assert numbers == list(range(1000 - len(numbers), 1000))


async def test_events_published_within_the_linger_share_one_stream_entry(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    """A busy worker writes one entry for the events of a linger, not one per event."""
    publisher = EventPublisher(redis_client, prefix=key_prefix, linger=timedelta(seconds=0.5))
    publisher.start()
    for n in range(20):
        publisher.publish(_event(n))
        await asyncio.sleep(0.001)
    await publisher.stop()
    assert await redis_client.xlen(stream_key(key_prefix)) == 1
    entries = await EventStream(redis_client, prefix=key_prefix).read()
    assert [entry.event.task_id for entry in entries] == [f"t{n}" for n in range(20)]


async def test_an_event_survives_the_trip_through_json() -> None:
    """Every field of an event comes back as it went in."""
    event = TaskEvent(
        EventKind.FAILED,
        "t",
        "Job",
        T0,
        T0 - timedelta(seconds=5),
        attempt=2,
        duration=timedelta(milliseconds=1500),
        error="RuntimeError: boom",
        count=1,
        data={"account": "a1", "token": "[redacted]"},
    )
    assert TaskEvent.from_json(event.to_json()) == event
