"""The optional ``BulkScheduleStore`` capability, on every store that has it (memory and
Redis; PostgreSQL has not, and the bus falls back to one call per task: see
tests/test_bulk_scheduling.py): many tasks added or removed per call, each task treated
as ``add`` and ``remove`` treat one, run history included."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import redis.asyncio

from cml_jobs import RecurrentTaskDescriptor
from cml_jobs._codec import DescriptorCodec
from cml_jobs.stores import (
    AddResult,
    BulkScheduleStore,
    ClaimStatus,
    Decision,
    Finish,
    InMemoryScheduleStore,
    NewTask,
    OperationsStore,
    Outcome,
    RunRecord,
    ScheduleStore,
)
from cml_jobs.stores.postgres import PostgresScheduleStore
from cml_jobs.stores.redis import RedisScheduleStore

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
SEC = timedelta(seconds=1)
CODEC = DescriptorCodec()


def new(task_id: str, due_at: datetime = T0, version: int = 1) -> NewTask:
    descriptor = RecurrentTaskDescriptor(id=task_id, name="Job", interval=60, data={"v": version})
    return NewTask(task_id, CODEC.encode(descriptor), due_at, due_at)


def bulk(store: ScheduleStore) -> BulkScheduleStore:
    assert isinstance(store, BulkScheduleStore)
    return store


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest) -> ScheduleStore:
    """Each store that offers the capability, empty."""
    if request.param == "memory":
        return InMemoryScheduleStore()
    client: redis.asyncio.Redis = request.getfixturevalue("redis_client")
    return RedisScheduleStore(client, prefix=request.getfixturevalue("key_prefix"))


async def test_memory_and_redis_offer_bulk_add_and_remove(store: ScheduleStore) -> None:
    """Memory and Redis both implement the capability the bus looks for."""
    assert isinstance(store, BulkScheduleStore)


def test_postgres_does_not_claim_the_capability() -> None:
    """The bus writes to PostgreSQL one task per call, rather than calling methods that
    are not there."""
    assert not issubclass(PostgresScheduleStore, BulkScheduleStore)


async def test_add_many_writes_every_task_due_at_its_time(store: ScheduleStore) -> None:
    """Each task of a batch is stored with its descriptor and due time, as ``add`` would."""
    tasks = [new(f"t{i}", T0 + i * SEC) for i in range(5)]
    assert await bulk(store).add_many(tasks, replace=False) == [AddResult.WRITTEN] * 5
    due = (await store.poll(T0 + 10 * SEC, 10)).tasks
    assert [(d.task_id, d.due_at, d.descriptor_json) for d in due] == [
        (t.task_id, t.due_at, t.descriptor_json) for t in tasks
    ]


async def test_add_many_reports_unchanged_and_conflicting_tasks_and_writes_the_rest(
    store: ScheduleStore,
) -> None:
    """The same descriptor again is left alone; a different one under a taken id is not
    written (no exception: the rest of the batch is)."""
    await store.add(new("same"), replace=False)
    await store.add(new("taken"), replace=False)
    batch = [new("same"), new("taken", version=2), new("fresh")]
    answers = await bulk(store).add_many(batch, replace=False)
    assert answers == [AddResult.UNCHANGED, AddResult.CONFLICT, AddResult.WRITTEN]
    kept = await store.get("taken")
    assert kept is not None and kept.descriptor_json == new("taken").descriptor_json
    assert await store.get("fresh") is not None


async def test_add_many_with_replace_replaces_and_invalidates_old_runs(
    store: ScheduleStore,
) -> None:
    """With replace=True a different task under the id is dropped with its runs."""
    await store.add(new("t1"), replace=False)
    decision = Decision("t1", T0, T0, T0 + 60 * SEC)
    [claimed] = await store.claim([decision], lease_until=T0 + 30 * SEC)
    assert claimed.status is ClaimStatus.CLAIMED and claimed.run is not None
    answers = await bulk(store).add_many([new("t1", version=2)], replace=True)
    assert answers == [AddResult.WRITTEN]
    assert await store.extend([claimed.run], lease_until=T0 + 60 * SEC) == [False]
    state = await store.get("t1")
    assert state is not None and state.descriptor_json == new("t1", version=2).descriptor_json


async def test_remove_many_removes_each_task_and_counts_its_runs(store: ScheduleStore) -> None:
    """Per id: the runs that were under way, or None when there was no task; afterwards
    none of the tasks is due or claimable."""
    await bulk(store).add_many([new("a"), new("b")], replace=False)
    decision = Decision("a", T0, T0, T0 + 60 * SEC)
    [claimed] = await store.claim([decision], lease_until=T0 + 30 * SEC)
    assert claimed.run is not None
    assert await bulk(store).remove_many(["a", "b", "ghost"]) == [1, 0, None]
    assert await store.get("a") is None and await store.get("b") is None
    assert (await store.poll(T0 + 3600 * SEC, 10)).tasks == []
    assert await store.extend([claimed.run], lease_until=T0 + 60 * SEC) == [False]


async def test_empty_batches_write_nothing(store: ScheduleStore) -> None:
    """An empty batch is a no-op, not an error."""
    assert await bulk(store).add_many([], replace=False) == []
    assert await bulk(store).remove_many([]) == []
    assert await store.list() == []


async def test_remove_many_forgets_each_task_history(store: ScheduleStore) -> None:
    """As ``remove`` does, removing a batch deletes the history of each of its tasks."""
    await bulk(store).add_many([new("a"), new("b")], replace=False)
    assert isinstance(store, OperationsStore)
    await store.record([RunRecord(i, T0, Outcome.SUCCEEDED, ended_at=T0) for i in ("a", "b")])
    assert await bulk(store).remove_many(["a"]) == [0]
    assert await store.history("a", 10) == []
    assert len(await store.history("b", 10)) == 1


async def test_add_many_takes_the_id_of_a_task_that_ended(store: ScheduleStore) -> None:
    """A one-time task that ended is kept only to be seen: a batch schedules a new task
    under its id (even with another descriptor, without replace), keeping its history."""
    await store.add(new("once"), replace=False)
    [claimed] = await store.claim([Decision("once", T0, T0, None)], lease_until=T0 + 30 * SEC)
    assert claimed.run is not None
    row = RunRecord("once", T0, Outcome.SUCCEEDED, ended_at=T0 + SEC, started_at=T0)
    finish = Finish(claimed.run, Outcome.SUCCEEDED, None, False, T0, row)
    assert await store.finish([finish]) == [True]
    ended = await store.get("once")
    assert ended is not None and ended.ended_at is not None
    answers = await bulk(store).add_many([new("once", T0 + 60 * SEC, version=2)], replace=False)
    assert answers == [AddResult.WRITTEN]
    state = await store.get("once")
    assert state is not None and (state.ended_at, state.due_at) == (None, T0 + 60 * SEC)
    assert isinstance(store, OperationsStore)
    assert len(await store.history("once", 10)) == 1
