"""The ``OperationsStore`` contract: run history, ended tasks, extra runs, operators' edits
and the worker registry, on every store that keeps them (memory, Redis, PostgreSQL).

As in the ``ScheduleStore`` suite, time never moves by itself: every ``now`` is derived
from ``T0``. Each store keeps 3 history rows per task and ended tasks for one day.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

import pytest
import redis.asyncio

from cml_jobs.stores import (
    Decision,
    Finish,
    InMemoryScheduleStore,
    NewTask,
    OperationsStore,
    Outcome,
    Run,
    RunRecord,
    ScheduleStore,
    WorkerInfo,
)
from cml_jobs.stores.postgres import open_postgres_store
from cml_jobs.stores.redis import RedisScheduleStore

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
SEC = timedelta(seconds=1)
DAY = timedelta(days=1)
SIZE = 3


class Store(ScheduleStore, OperationsStore, Protocol):
    """What every store under test is."""


OPTIONS: dict[str, Any] = {"history_size": SIZE, "history_retention": DAY}


@pytest.fixture
async def postgres_ops_store(postgres_url: str) -> AsyncIterator[Store]:
    """A PostgreSQL store in a schema of the test's own, with the suite's options."""
    async with open_postgres_store(postgres_url, **OPTIONS) as found:
        yield found


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def store(request: pytest.FixtureRequest) -> Store:
    """Each store, empty, keeping ``SIZE`` rows per task and ended tasks for a day."""
    if request.param == "memory":
        return InMemoryScheduleStore(**OPTIONS)
    if request.param == "postgres":
        found: Store = request.getfixturevalue("postgres_ops_store")
        return found
    client: redis.asyncio.Redis = request.getfixturevalue("redis_client")
    prefix: str = request.getfixturevalue("key_prefix")
    return RedisScheduleStore(client, prefix=prefix, **OPTIONS)


def new(task_id: str = "t1", version: int = 1) -> NewTask:
    return NewTask(task_id, f'{{"v": {version}}}', T0, T0)


def row(at: datetime, task_id: str = "t1", outcome: Outcome = Outcome.SUCCEEDED) -> RunRecord:
    return RunRecord(task_id, at, outcome, ended_at=at, started_at=at, worker="host:1")


async def claim(store: Store, due: datetime, following: datetime | None) -> Run:
    decision = Decision("t1", due, due, following, max_instances=5)
    [result] = await store.claim([decision], lease_until=due + 30 * SEC)
    assert result.run is not None
    return result.run


async def finish(store: Store, run: Run, *, at: datetime, end_task: bool = False) -> None:
    history = row(at, run.task_id)
    assert await store.finish([Finish(run, Outcome.SUCCEEDED, None, end_task, at, history)])


async def test_history_keeps_the_latest_rows_newest_first(store: Store) -> None:
    """Five recorded rows: the latest three are kept, newest first, within ``limit``."""
    await store.add(new(), replace=False)
    await store.record([row(T0 + k * SEC) for k in range(5)])
    kept = [r.occurrence_at for r in await store.history("t1", 10)]
    assert kept == [T0 + 4 * SEC, T0 + 3 * SEC, T0 + 2 * SEC]
    assert [r.occurrence_at for r in await store.history("t1", 1)] == [T0 + 4 * SEC]
    assert await store.history("nope", 10) == []


async def test_a_finish_writes_its_history_row_with_the_outcome(store: Store) -> None:
    """The row a finish carries is in the history as soon as the finish returns."""
    await store.add(new(), replace=False)
    run = await claim(store, T0, T0 + 60 * SEC)
    await finish(store, run, at=T0 + SEC)
    [kept] = await store.history("t1", 10)
    assert kept == row(T0 + SEC)
    state = await store.get("t1")
    assert state is not None and state.last_outcome is Outcome.SUCCEEDED


async def test_a_stale_finish_writes_no_history(store: Store) -> None:
    """A finish whose fence is no longer valid adds no row."""
    await store.add(new(), replace=False)
    run = await claim(store, T0, T0 + 60 * SEC)
    await finish(store, run, at=T0 + SEC)
    history = row(T0 + 2 * SEC)
    assert await store.finish([Finish(run, Outcome.FAILED, "late", history=history)]) == [False]
    assert len(await store.history("t1", 10)) == 1


async def test_a_one_time_task_ends_with_its_run_and_stays_for_the_retention(
    store: Store,
) -> None:
    """Its state shows when it ended and when it will be forgotten; it can no longer be
    paused, updated or given extra runs, but takes a note; a new task may take its id."""
    await store.add(new(), replace=False)
    await store.set_note("t1", "the last one")
    await finish(store, await claim(store, T0, None), at=T0 + SEC)
    state = await store.get("t1")
    assert state is not None
    assert (state.ended_at, state.expires_at) == (T0 + SEC, T0 + SEC + DAY)
    assert (state.due_at, state.running, state.note) == (None, 0, "the last one")
    assert [s.task_id for s in await store.list()] == ["t1"]
    assert not await store.set_paused("t1", paused=True, due_at=None, ready_at=None)
    assert not await store.update("t1", '{"v": 2}', due_at=T0, ready_at=T0)
    assert not await store.add_runs("t1", [T0], max_instances=1, now=T0)
    assert await store.set_note("t1", None)
    assert await store.add(new(), replace=False)  # the same descriptor: a new task
    again = await store.get("t1")
    assert again is not None and (again.ended_at, again.due_at) == (None, T0)
    assert len(await store.history("t1", 10)) == 1  # the history stays with the id


async def test_a_task_that_ends_its_recurrence_is_deleted_and_its_history_kept(
    store: Store,
) -> None:
    """``end_task`` deletes the task; its history is still readable for the retention."""
    await store.add(new(), replace=False)
    await finish(store, await claim(store, T0, T0 + 60 * SEC), at=T0 + SEC, end_task=True)
    assert await store.get("t1") is None
    assert [r.ended_at for r in await store.history("t1", 10)] == [T0 + SEC]


async def test_rows_of_a_task_that_is_gone_are_kept_and_remove_forgets_them(
    store: Store,
) -> None:
    """A row recorded after its task went (a missed one-time task) is kept; removing a
    task removes its history."""
    await store.record([row(T0, "gone", Outcome.MISSED)])
    assert [r.outcome for r in await store.history("gone", 10)] == [Outcome.MISSED]
    await store.add(new(), replace=False)
    await store.record([row(T0)])
    assert await store.remove("t1") == 0
    assert await store.history("t1", 10) == []


async def test_extra_runs_are_handed_out_in_turn_under_max_instances(store: Store) -> None:
    """Two extra runs with max_instances=1 count as running at once, and are handed out
    one after the other by reclaim, as attempt 1 of an extra run."""
    await store.add(new(), replace=False)
    first, second = T0 - 60 * SEC, T0 - 30 * SEC
    assert await store.add_runs("t1", [first, second], max_instances=1, now=T0)
    state = await store.get("t1")
    assert state is not None and state.running == 2
    [handed] = await store.reclaim_expired(now=T0, lease_until=T0 + DAY, limit=10)
    assert (handed.run.occurrence_at, handed.run.attempt, handed.run.extra) == (first, 1, True)
    assert await store.reclaim_expired(now=T0 + 2 * SEC, lease_until=T0 + DAY, limit=10) == []
    await finish(store, handed.run, at=T0 + 2 * SEC)
    [later] = await store.reclaim_expired(now=T0 + 3 * SEC, lease_until=T0 + DAY, limit=10)
    assert (later.run.occurrence_at, later.run.attempt, later.run.extra) == (second, 1, True)
    lost = await store.reclaim_expired(now=T0 + 2 * DAY, lease_until=T0 + 3 * DAY, limit=10)
    assert [(r.run.attempt, r.run.extra) for r in lost] == [(2, True)]  # still an extra run


async def test_extra_runs_are_refused_for_an_unknown_or_parked_task(store: Store) -> None:
    """add_runs queues nothing and returns False."""
    assert not await store.add_runs("nope", [T0], max_instances=1, now=T0)
    await store.add(new(), replace=False)
    await store.claim([Decision("t1", T0, None, None, park_reason="broken")], lease_until=T0)
    assert not await store.add_runs("t1", [T0], max_instances=1, now=T0)
    state = await store.get("t1")
    assert state is not None and state.running == 0


async def test_unpark_takes_a_parked_task_back_into_the_schedule(store: Store) -> None:
    """The reason is cleared and the task is due again; counts stay. Unparking a task
    that is not parked changes nothing."""
    await store.add(new(), replace=False)
    assert not await store.unpark("t1", due_at=T0, ready_at=None)
    await store.claim([Decision("t1", T0, None, None, park_reason="broken")], lease_until=T0)
    assert await store.unpark("t1", due_at=T0 + DAY, ready_at=None)
    state = await store.get("t1")
    assert state is not None and (state.parked_reason, state.due_at) == (None, T0 + DAY)
    assert state.counts == {"parked": 1}
    assert [t.task_id for t in (await store.poll(T0 + DAY, 10)).tasks] == ["t1"]
    assert not await store.unpark("nope", due_at=T0, ready_at=None)


async def test_update_replaces_the_descriptor_and_keeps_the_rest(store: Store) -> None:
    """Counts, note, runs under way and pause survive; the next occurrence is the new one."""
    await store.add(new(), replace=False)
    await claim(store, T0, T0 + 60 * SEC)
    await store.set_note("t1", "watch it")
    await store.set_paused("t1", paused=True, due_at=None, ready_at=None)
    assert await store.update("t1", '{"v": 2}', due_at=T0 + DAY, ready_at=T0 + DAY)
    state = await store.get("t1")
    assert state is not None
    assert (state.descriptor_json, state.due_at, state.running) == ('{"v": 2}', T0 + DAY, 1)
    assert (state.paused, state.note) == (True, "watch it")
    assert (await store.poll(T0 + DAY, 10)).tasks == []  # still paused
    assert not await store.update("nope", "{}", due_at=T0, ready_at=T0)
    assert not await store.set_note("nope", "x")


def worker(worker_id: str, expires_at: datetime) -> WorkerInfo:
    return WorkerInfo(worker_id, "host", 1, "1.0", T0, T0, expires_at, running=2, max_jobs=8)


async def test_workers_are_listed_until_they_expire_or_leave(store: Store) -> None:
    """Ordered by id; a beat refreshes a worker; an expired one is forgotten."""
    await store.beat(worker("b:2", T0 + 10 * SEC))
    await store.beat(worker("a:1", T0 + 10 * SEC))
    assert await store.workers(T0) == [worker("a:1", T0 + 10 * SEC), worker("b:2", T0 + 10 * SEC)]
    await store.beat(worker("a:1", T0 + 30 * SEC))
    assert await store.workers(T0 + 20 * SEC) == [worker("a:1", T0 + 30 * SEC)]
    assert await store.workers(T0) == [worker("a:1", T0 + 30 * SEC)]  # b:2 was forgotten
    await store.leave("a:1")
    assert await store.workers(T0) == []
