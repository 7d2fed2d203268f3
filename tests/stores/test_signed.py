"""Signed descriptors: only what the app signed with its key is ever handed out to run."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import redis.asyncio

from cml_jobs import BackgroundTaskScheduler, EventKind, RecurrentTaskDescriptor
from cml_jobs.stores import NewTask, ScheduleStore
from cml_jobs.stores.signed import SignedScheduleStore
from cml_jobs.testing import ManualClock, run_due

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
KEY = "k3y-that-never-goes-to-redis"
DESCRIPTOR = '{"kind":"recurrent","id":"t1","name":"ScriptedJob","interval":60.0}'


async def test_a_signed_descriptor_is_handed_out_as_written(store: ScheduleStore) -> None:
    """What the signed store adds, it returns unchanged from poll, get and list."""
    signed = SignedScheduleStore(store, KEY)
    await signed.add(NewTask("t1", DESCRIPTOR, T0, T0), replace=False)
    [due] = (await signed.poll(T0, 10)).tasks
    assert due.descriptor_json == DESCRIPTOR
    state = await signed.get("t1")
    assert state is not None and state.descriptor_json == DESCRIPTOR
    assert [s.descriptor_json for s in await signed.list()] == [DESCRIPTOR]


async def test_a_descriptor_written_without_the_key_is_parked_not_handed_out(
    store: ScheduleStore,
) -> None:
    """An unsigned descriptor, or one signed with another key, is parked with the reason."""
    signed = SignedScheduleStore(store, KEY)
    await store.add(NewTask("forged", DESCRIPTOR, T0, T0), replace=False)
    await SignedScheduleStore(store, "another key").add(
        NewTask("other", DESCRIPTOR, T0, T0), replace=False
    )
    assert (await signed.poll(T0, 10)).tasks == []
    for task_id in ("forged", "other"):
        state = await store.get(task_id)
        assert state is not None and "signature does not match" in (state.parked_reason or "")


async def test_the_key_never_reaches_redis(
    redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    """Redis holds the descriptor and its MAC, not the key."""
    from cml_jobs.stores.redis import RedisScheduleStore

    signed = SignedScheduleStore(RedisScheduleStore(redis_client, prefix=key_prefix), KEY)
    await signed.add(NewTask("t1", DESCRIPTOR, T0, T0), replace=False)
    stored = (await redis_client.hget(f"{key_prefix}task:t1", "descriptor")).decode()
    assert stored.startswith("hmac-sha256:") and stored.endswith(DESCRIPTOR)
    assert KEY not in stored
    assert KEY not in repr(signed)


async def test_a_scheduler_with_a_signing_key_runs_its_tasks_and_parks_forged_ones() -> None:
    """With signing_key set, scheduled tasks run; a task put straight into the store
    without the key is parked and its job never runs."""
    clock = ManualClock(T0)
    app = BackgroundTaskScheduler.configure(
        modules=["tests.fixtures.behaviour_jobs"], clock=clock, run_worker=False, signing_key=KEY
    )
    async with app:
        await app.bus.schedule_task(
            RecurrentTaskDescriptor(id="good", name="ScriptedJob", interval=60)
        )
        inner = app.runtime.store.inner  # type: ignore[attr-defined]
        forged = DESCRIPTOR.replace('"t1"', '"forged"')
        await inner.add(NewTask("forged", forged, T0 + timedelta(seconds=60), T0), replace=False)
        clock.advance(seconds=60)
        events = await run_due(app)
        tasks = {t.id: t for t in await app.list_tasks()}
    assert [e.task_id for e in events if e.kind is EventKind.SUCCEEDED] == ["good"]
    assert "signature" in (tasks["forged"].parked_reason or "")
