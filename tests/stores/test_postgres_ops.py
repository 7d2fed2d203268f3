"""What the PostgreSQL store does for operations beyond the ``OperationsStore`` contract:
the migration that brought its tables, rows it deletes once they expired (it never reads
the clock), extra runs shared by concurrent dispatchers, and the settings that reach it.

Each test has a schema of its own (``postgres_url``), dropped afterwards.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import asyncpg
import pytest

from cml_jobs import BackgroundTaskScheduler, RecurrentTaskDescriptor
from cml_jobs.stores import Decision, Finish, NewTask, Outcome, RunRecord
from cml_jobs.stores._pg_schema import _MIGRATIONS
from cml_jobs.stores.postgres import SCHEMA_VERSION, PostgresScheduleStore, open_postgres_store
from cml_jobs.testing import ManualClock, run_due

pytestmark = pytest.mark.postgres

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
SEC = timedelta(seconds=1)
DAY = timedelta(days=1)


def row(task_id: str, at: datetime) -> RunRecord:
    return RunRecord(task_id, at, Outcome.SUCCEEDED, ended_at=at, started_at=at)


async def _version_1(url: str) -> None:
    """The schema as cml-jobs wrote it before run history: a task with a run under way."""
    schema = url.rsplit("schema=", 1)[1]
    s = f'"{schema}"'
    conn = await asyncpg.connect(url.split("?")[0])
    try:
        await conn.execute(f"CREATE SCHEMA {s}")
        await conn.execute(f"CREATE TABLE {s}.meta (name text PRIMARY KEY, value text NOT NULL)")
        await conn.execute(_MIGRATIONS[0].format(s=s))
        await conn.execute(
            f"INSERT INTO {s}.meta VALUES ('schema_version', '1'), ('generation', 'g1')"
        )
        await conn.execute(
            f"INSERT INTO {s}.tasks (id, descriptor, due_at, ready_at) "
            "VALUES ('t1', '{}', $1, $1)",
            T0,
        )
        await conn.execute(
            f"INSERT INTO {s}.runs VALUES (nextval('{s}.fences'), 't1', $1, 1, $1)", T0
        )
    finally:
        await conn.close()


async def test_a_version_1_database_is_migrated_keeping_its_tasks_and_runs(
    postgres_url: str,
) -> None:
    """A database written before run history is upgraded when a newer process opens it:
    its task, its run under way and its generation stay, and history works at once."""
    await _version_1(postgres_url)
    async with open_postgres_store(postgres_url) as store:
        [state] = await store.list()
        assert (state.task_id, state.running, state.ended_at, state.note) == ("t1", 1, None, None)
        assert (await store.poll(T0, 10)).generation == "g1"
        [again] = await store.reclaim_expired(now=T0, lease_until=T0 + DAY, limit=5)
        assert (again.run.attempt, again.run.extra) == (2, False)
        history = row("t1", T0 + SEC)
        assert await store.finish([Finish(again.run, Outcome.SUCCEEDED, history=history)])
        assert await store.history("t1", 5) == [history]
        meta = f"SELECT value FROM \"{store.schema}\".meta WHERE name = 'schema_version'"
        assert await store._pool.fetchval(meta) == str(SCHEMA_VERSION)


async def _count(store: PostgresScheduleStore, table: str) -> int:
    return int(await store._pool.fetchval(f'SELECT count(*) FROM "{store.schema}".{table}'))


async def _finish_once(store: PostgresScheduleStore, task_id: str, *, end_task: bool) -> None:
    """Run a task's occurrence at T0 and finish it at T0 with a history row."""
    due_next = None if not end_task else T0 + DAY
    [result] = await store.claim([Decision(task_id, T0, T0, due_next)], lease_until=T0 + DAY)
    assert result.run is not None
    done = Finish(result.run, Outcome.SUCCEEDED, end_task=end_task, history=row(task_id, T0))
    assert await store.finish([done])


async def test_what_expired_is_deleted_by_the_next_history_write_after_it(
    postgres_url: str,
) -> None:
    """An ended task (with its history) and the history of a task that is gone stay until
    a history row is written at or after their retention; then they are deleted."""
    async with open_postgres_store(postgres_url, history_retention=DAY) as store:
        for task_id in ("ended", "gone", "live"):
            await store.add(NewTask(task_id, "{}", T0, T0), replace=False)
        await _finish_once(store, "ended", end_task=False)  # a one-time task: ended
        await _finish_once(store, "gone", end_task=True)  # it stopped its recurrence
        assert (await _count(store, "tasks"), await _count(store, "history")) == (2, 2)
        await store.record([row("live", T0 + DAY - SEC)])
        assert (await _count(store, "tasks"), await _count(store, "history")) == (2, 3)
        await store.record([row("live", T0 + DAY)])
        assert [s.task_id for s in await store.list()] == ["live"]
        assert await store.history("gone", 10) == await store.history("ended", 10) == []
        assert await _count(store, "history") == 2


async def test_a_new_task_keeps_the_history_of_its_id_past_the_retention(
    postgres_url: str,
) -> None:
    """The history of a task that is gone is the new task's once one takes its id: it is
    no longer deleted when the old task's retention ends."""
    async with open_postgres_store(postgres_url, history_retention=DAY) as store:
        await store.add(NewTask("t1", "{}", T0, T0), replace=False)
        await _finish_once(store, "t1", end_task=True)
        await store.add(NewTask("t1", "{}", T0, T0), replace=False)
        await store.record([row("other", T0 + 2 * DAY)])
        assert await store.history("t1", 10) == [row("t1", T0)]


async def test_dispatchers_reclaiming_at_once_hand_out_one_extra_run_at_a_time(
    postgres_url: str,
) -> None:
    """Three extra runs with max_instances=1, and five stores (five processes)
    reclaiming together: one run is handed out in all."""
    opened = [open_postgres_store(postgres_url) for _ in range(5)]
    stores = [await o.__aenter__() for o in opened]
    try:
        await stores[0].add(NewTask("t1", "{}", T0 + DAY, T0 + DAY), replace=False)
        assert await stores[0].add_runs("t1", [T0, T0 + SEC, T0 + 2 * SEC], max_instances=1, now=T0)
        handed = await asyncio.gather(
            *(s.reclaim_expired(now=T0, lease_until=T0 + DAY, limit=10) for s in stores)
        )
        assert [c.run.occurrence_at for batch in handed for c in batch] == [T0]
    finally:
        for o in opened:
            await o.__aexit__(None, None, None)


async def test_the_history_settings_reach_the_store(postgres_url: str) -> None:
    """An app configured with store_url and history_size keeps that many rows per task."""
    clock = ManualClock()
    app = BackgroundTaskScheduler.configure(
        modules=["tests.fixtures.ops_jobs"],
        store_url=postgres_url,
        clock=clock,
        run_worker=False,
        history_size=2,
    )
    descriptor = RecurrentTaskDescriptor(
        id="sync", name="AccountSyncJob", data={"email": "a@example.com"}, interval=60
    )
    async with app:
        await app.bus.schedule_task(descriptor)
        for _ in range(3):
            clock.advance(seconds=60)
            await run_due(app)
        assert len(await app.bus.get_history("sync", 10)) == 2


async def test_an_error_with_a_nul_character_is_recorded(postgres_url: str) -> None:
    """PostgreSQL text holds no NUL: a failure or park reason carrying one is recorded with
    U+FFFD in its place, instead of failing the whole finish batch."""
    async with open_postgres_store(postgres_url) as store:
        for task_id in ("failed", "parked"):
            await store.add(NewTask(task_id, "{}", T0, T0), replace=False)
        decisions = [Decision(i, T0, T0, T0 + DAY) for i in ("failed", "parked")]
        runs = [r.run for r in await store.claim(decisions, lease_until=T0 + DAY)]
        assert runs[0] is not None and runs[1] is not None
        failed = row("failed", T0)
        finishes = [
            Finish(runs[0], Outcome.FAILED, "bad\x00byte", history=failed),
            Finish(runs[1], Outcome.PARKED, "bad\x00data"),
        ]
        assert await store.finish(finishes) == [True, True]
        assert await store.set_note("parked", "see\x00ticket")
        states = {s.task_id: s for s in await store.list()}
        assert states["failed"].last_error == "bad\ufffdbyte"
        assert states["parked"].parked_reason == "bad\ufffddata"
        assert states["parked"].note == "see\ufffdticket"
