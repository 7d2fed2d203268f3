"""Signed descriptors: with ``signing_key`` only what the app signed is ever run.

Signing lives in the descriptor codec, not in the store: the store keeps opaque text. The
scenarios go through the front door (``BackgroundTaskScheduler.configure(signing_key=...)``,
``cml_jobs.testing.run_due`` and a ``ManualClock``) on every store; what an attacker
writes goes straight into the store, as someone with access to Redis but not the key would.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import redis.asyncio

from cml_jobs import (
    BackgroundTaskScheduler,
    EventKind,
    InvalidDescriptorError,
    RecurrentTaskDescriptor,
    Settings,
    TaskEvent,
)
from cml_jobs._codec import DescriptorCodec
from cml_jobs.stores import NewTask, ScheduleStore
from cml_jobs.testing import ManualClock, run_due

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
INTERVAL = timedelta(seconds=60)
KEY = "k3y-that-never-goes-to-the-store"
MISMATCH = "signature does not match"


def job(task_id: str, interval: float = 60) -> RecurrentTaskDescriptor:
    return RecurrentTaskDescriptor(id=task_id, name="ScriptedJob", interval=interval)


def scheduler(
    clock: ManualClock, signing_key: str | None, store: ScheduleStore | None = None
) -> BackgroundTaskScheduler:
    """An app that runs nothing by itself: ``run_due`` runs what is due."""
    return BackgroundTaskScheduler.configure(
        modules=["tests.fixtures.behaviour_jobs"],
        store=store,
        clock=clock,
        run_worker=False,
        signing_key=signing_key,
    )


def kinds(events: list[TaskEvent], task_id: str) -> list[EventKind]:
    return [e.kind for e in events if e.task_id == task_id]


def parked_reason(events: list[TaskEvent], task_id: str) -> str:
    [parked] = [e for e in events if e.task_id == task_id and e.kind is EventKind.PARKED]
    return parked.error or ""


# -- through the scheduler -------------------------------------------------------------


async def test_a_task_scheduled_with_a_signing_key_is_stored_signed_and_runs(
    store: ScheduleStore,
) -> None:
    """With signing_key, the store holds the descriptor and its MAC (never the key), and
    the task runs and reads back like any other."""
    clock = ManualClock(T0)
    async with scheduler(clock, KEY, store) as app:
        await app.bus.schedule_task(job("good"))
        state = await store.get("good")
        clock.advance(INTERVAL)
        events = await run_due(app)
        info = await app.bus.get_task("good")
    assert state is not None and state.descriptor_json.startswith("hmac-sha256:")
    assert KEY not in state.descriptor_json
    assert kinds(events, "good") == [EventKind.STARTED, EventKind.SUCCEEDED]
    assert (info.descriptor, info.parked_reason) == (job("good"), None)


@pytest.mark.parametrize("writer_key", [None, "another key"], ids=["no key", "another key"])
async def test_a_descriptor_written_without_the_key_is_parked_and_never_run(
    store: ScheduleStore, writer_key: str | None
) -> None:
    """A descriptor put straight into the store as plain JSON, or signed with another key,
    is parked with the signature reason and never run, while a signed task beside it runs."""
    clock = ManualClock(T0)
    forged = DescriptorCodec(writer_key).encode(job("forged"))
    async with scheduler(clock, KEY, store) as app:
        await app.bus.schedule_task(job("good"))
        due = T0 + INTERVAL
        await store.add(NewTask("forged", forged, due, due), replace=False)
        clock.advance(INTERVAL)
        events = await run_due(app)
        clock.advance(INTERVAL)
        later = await run_due(app)
        info = await app.bus.get_task("forged")
    assert kinds(events, "good") == [EventKind.STARTED, EventKind.SUCCEEDED]
    assert (kinds(events, "forged"), kinds(later, "forged")) == ([EventKind.PARKED], [])
    assert MISMATCH in parked_reason(events, "forged")
    assert MISMATCH in (info.parked_reason or "")
    assert info.descriptor is None  # shown as unreadable, not trusted


async def test_a_signed_descriptor_edited_in_the_store_is_parked_and_never_run(
    store: ScheduleStore,
) -> None:
    """Changing the JSON of a signed descriptor while keeping its MAC (every second
    instead of every minute) breaks the signature: the task is parked, not run."""
    clock = ManualClock(T0)
    async with scheduler(clock, KEY, store) as app:
        await app.bus.schedule_task(job("good"))
        state = await store.get("good")
        assert state is not None
        edited = state.descriptor_json.replace('"interval":60.0', '"interval":1.0')
        assert edited != state.descriptor_json
        due = T0 + INTERVAL
        await store.add(NewTask("good", edited, due, due), replace=True)
        clock.advance(INTERVAL)
        events = await run_due(app)
    assert kinds(events, "good") == [EventKind.PARKED]
    assert MISMATCH in parked_reason(events, "good")


async def test_a_signed_task_read_by_a_process_without_the_key_is_refused(
    store: ScheduleStore,
) -> None:
    """A process without the key does not run a signed task: it parks it with a reason
    that says to set CML_JOBS_SIGNING_KEY."""
    clock = ManualClock(T0)
    async with scheduler(clock, KEY, store) as app, scheduler(clock, None, store) as keyless:
        await app.bus.schedule_task(job("good"))
        clock.advance(INTERVAL)
        events = await run_due(keyless)
    assert kinds(events, "good") == [EventKind.PARKED]
    assert "CML_JOBS_SIGNING_KEY" in parked_reason(events, "good")


async def test_a_plain_task_read_by_a_process_with_the_key_is_refused(
    store: ScheduleStore,
) -> None:
    """A task scheduled by an app without the key is not run by a process that has one:
    it is parked with the signature reason."""
    clock = ManualClock(T0)
    async with scheduler(clock, None, store) as plain, scheduler(clock, KEY, store) as signed:
        await plain.bus.schedule_task(job("plain"))
        clock.advance(INTERVAL)
        events = await run_due(signed)
    assert kinds(events, "plain") == [EventKind.PARKED]
    assert MISMATCH in parked_reason(events, "plain")


@pytest.mark.redis
async def test_the_key_never_reaches_redis(
    redis_client: redis.asyncio.Redis, redis_url: str, key_prefix: str
) -> None:
    """Through a Redis URL, Redis holds the descriptor's JSON and its MAC, not the key."""
    app = BackgroundTaskScheduler.configure(
        redis_url=redis_url,
        key_prefix=key_prefix,
        modules=["tests.fixtures.behaviour_jobs"],
        clock=ManualClock(T0),
        signing_key=KEY,
    )
    async with app:
        await app.bus.schedule_task(job("t1"))
    stored = await redis_client.hgetall(f"{key_prefix}task:t1")
    descriptor = stored[b"descriptor"].decode()
    assert descriptor.startswith("hmac-sha256:")
    assert descriptor.endswith(DescriptorCodec().encode(job("t1")))
    assert not any(KEY.encode() in value for value in stored.values())


# -- the codec -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("writer_key", "reader_key", "refusal"),
    [
        (KEY, KEY, None),
        (KEY, KEY.encode(), None),
        (None, None, None),
        (None, KEY, MISMATCH),
        ("another key", KEY, MISMATCH),
        (KEY, None, "set CML_JOBS_SIGNING_KEY"),
    ],
    ids=["same key", "same key as bytes", "no key", "plain", "another key", "reader keyless"],
)
def test_the_codec_reads_only_what_its_own_key_wrote(
    writer_key: str | None, reader_key: str | bytes | None, refusal: str | None
) -> None:
    """A codec decodes what a codec with the same key (or, without a key, plain JSON)
    encoded, and refuses the rest with a message that says what to do."""
    stored = DescriptorCodec(writer_key).encode(job("t1"))
    reader = DescriptorCodec(reader_key)
    if refusal is None:
        assert reader.decode(stored) == job("t1")
    else:
        with pytest.raises(InvalidDescriptorError, match=refusal):
            reader.decode(stored)


def test_the_signing_key_never_appears_in_a_repr() -> None:
    """Neither the codec nor the settings show the key, wherever it came from."""
    reprs = [
        repr(DescriptorCodec(KEY)),
        repr(DescriptorCodec(KEY.encode())),
        repr(Settings().with_changes(signing_key=KEY)),
        repr(Settings.from_env({"CML_JOBS_SIGNING_KEY": KEY})),
        repr(scheduler(ManualClock(T0), KEY).settings),
    ]
    assert all(KEY not in text for text in reprs), reprs
    assert reprs[0] == "DescriptorCodec(signed=True)"
