"""The PostgreSQL store: tasks and runs in tables of one schema, shared by every process
that uses the same database and schema.

Every method is one statement, or one transaction; claims lock the tasks they change
(``FOR UPDATE``, a compare-and-set on the due time decides who won) and expired runs are
taken with ``SKIP LOCKED``. Scheduling or resuming a task notifies the schema's channel,
which wakes every dispatcher listening (``wakeups``) as soon as the transaction commits.
``within`` gives the store on an app's own connection, so a task is scheduled in the
app's transaction: committed with it, or never. A finish writes its run's history row
in its own transaction (``_pg_ops``). The library creates and migrates its
tables itself (``_pg_schema``). asyncpg is imported here and in the ``_pg_*`` helpers
only.
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import Any, TypeVar

import asyncpg

from cml_jobs.exceptions import ConfigurationError, TaskExistsError
from cml_jobs.stores._base import (
    ClaimedRun,
    ClaimResult,
    Decision,
    DueBatch,
    DueTask,
    Finish,
    NewTask,
    Run,
    TaskState,
)
from cml_jobs.stores._ops import DEFAULT_HISTORY_RETENTION, DEFAULT_HISTORY_SIZE
from cml_jobs.stores._pg_connect import (
    UNAVAILABLE,
    listening,
    open_pool,
    parse_url,
    transact,
    unavailable,
)
from cml_jobs.stores._pg_ops import PostgresOperations, keep_history, reclaim
from cml_jobs.stores._pg_rows import Changes, apply_decision, apply_finish, ms, schedule_times
from cml_jobs.stores._pg_schema import SCHEMA_VERSION, Conn, migrate
from cml_jobs.stores._pg_sql import Statements
from cml_jobs.stores._pg_write import lock_rows, task_state, write_changes

__all__ = ["SCHEMA_VERSION", "PostgresScheduleStore", "open_postgres_store"]

T = TypeVar("T")


class PostgresScheduleStore(PostgresOperations):
    """A ``ScheduleStore`` and ``OperationsStore`` on PostgreSQL. Open one with
    ``open_postgres_store``.

    Args:
        pool: an asyncpg pool, or a single connection (then every call runs in a
            transaction of its own on it, nested in any transaction open on it).
        dsn: the URL the pool connects with (the ``wakeups`` connection uses it too).
        schema: the schema the tables live in (created by ``open_postgres_store``).
        patient: retry a server that is away for as long as it takes (a worker).
        history_size: runs kept per task in its history.
        history_retention: how long a task that ended stays, with its history.
    """

    def __init__(
        self,
        pool: asyncpg.Pool | asyncpg.Connection | Any,
        *,
        dsn: str = "",
        schema: str = "cml_jobs",
        patient: bool = False,
        history_size: int = DEFAULT_HISTORY_SIZE,
        history_retention: timedelta = DEFAULT_HISTORY_RETENTION,
    ) -> None:
        self._pool = pool
        self._dsn = dsn
        self._schema = schema
        self._patient = patient
        self._sql = Statements(schema)
        self._history_size = max(history_size, 1)
        self._retention = max(history_retention, timedelta(milliseconds=1))

    @property
    def schema(self) -> str:
        """The PostgreSQL schema the store's tables live in."""
        return self._schema

    def within(self, connection: Any) -> PostgresScheduleStore:
        """This store on ``connection``, an app's asyncpg connection: what it writes
        commits or rolls back with the transaction open on it.

        Raises:
            ConfigurationError: ``connection`` is not an asyncpg connection.
        """
        if not isinstance(connection, (asyncpg.Connection, asyncpg.pool.PoolConnectionProxy)):
            raise ConfigurationError(
                f"connection={type(connection).__name__!r} is not an asyncpg connection; pass "
                "the asyncpg connection your transaction is open on (with SQLAlchemy: "
                "(await conn.get_raw_connection()).driver_connection)"
            )
        return PostgresScheduleStore(
            connection,
            dsn=self._dsn,
            schema=self._schema,
            history_size=self._history_size,
            history_retention=self._retention,
        )

    def wakeups(self, callback: Callable[[], None]) -> AbstractAsyncContextManager[None]:
        """Call ``callback`` whenever any process schedules or resumes a task, until exit."""
        if not self._dsn:
            raise ConfigurationError("wakeups() needs a store opened by open_postgres_store")
        return listening(self._dsn, self._sql.channel, callback)

    # -- tasks -------------------------------------------------------------------------

    async def add(self, task: NewTask, *, replace: bool) -> bool:
        due, ready = ms(task.due_at), ms(task.ready_at)
        row = (task.task_id, task.descriptor_json, due, ready, task.trace_context)

        async def work(conn: Conn) -> bool:
            while True:
                if await conn.fetchrow(self._sql.insert_task, *row, self._sql.channel):
                    return True
                found = await conn.fetchrow(self._sql.descriptor_for_update, task.task_id)
                # (an ended task is only kept to be seen: a new one replaces it)
                if found is not None and found["ended_at"] is None:
                    if found["descriptor"] == task.descriptor_json:
                        return False
                    if not replace:
                        raise TaskExistsError(
                            f"a different task with id {task.task_id!r} is already "
                            "scheduled; pass replace=True to replace it, or cancel it first"
                        )
                await conn.execute(self._sql.delete_task, task.task_id)  # its runs go too

        return await self._run(work)

    async def remove(self, task_id: str) -> int | None:
        async def work(conn: Conn) -> int | None:
            if await conn.fetchval(self._sql.lock_task, task_id) is None:
                return None
            return int(await conn.fetchval(self._sql.remove_task, task_id))

        return await self._run(work)

    async def get(self, task_id: str) -> TaskState | None:
        found = await self._one(lambda conn: conn.fetchrow(self._sql.get, task_id))
        return None if found is None else task_state(found)

    async def list(self) -> builtins.list[TaskState]:
        return [task_state(found) for found in await self._one(self._fetch_all)]

    async def _fetch_all(self, conn: Conn) -> builtins.list[asyncpg.Record]:
        return await conn.fetch(self._sql.list)

    async def set_paused(
        self, task_id: str, *, paused: bool, due_at: datetime | None, ready_at: datetime | None
    ) -> bool:
        if paused:
            args: tuple[Any, ...] = (self._sql.pause, task_id)
        else:
            args = (self._sql.resume, task_id, *schedule_times(due_at, ready_at), self._sql.channel)
        return await self._one(lambda conn: conn.fetchrow(*args)) is not None

    # -- dispatch ----------------------------------------------------------------------

    async def poll(self, now: datetime, limit: int) -> DueBatch:
        rows = await self._one(lambda conn: conn.fetch(self._sql.poll, ms(now), max(limit, 0)))
        due = sorted((r for r in rows if r["kind"] == 0), key=lambda r: (r["ready_at"], r["id"]))
        following = next((r["ready_at"] for r in rows if r["kind"] == 1), None)
        generation = next((r["id"] for r in rows if r["kind"] == 2), "")
        tasks = [DueTask(r["id"], r["due_at"], r["descriptor"], r["trace"]) for r in due]
        return DueBatch(tasks, following, generation)

    async def claim(
        self, decisions: Sequence[Decision], *, lease_until: datetime
    ) -> builtins.list[ClaimResult]:
        if not decisions:
            return []

        async def work(conn: Conn) -> builtins.list[ClaimResult]:
            rows = await lock_rows(conn, self._sql, [d.task_id for d in decisions])
            changes = Changes()
            results = [
                apply_decision(d, rows.get(d.task_id), changes, i) for i, d in enumerate(decisions)
            ]
            fences = await write_changes(conn, self._sql, changes, ms(lease_until))
            return [_with_fence(result, fences.get(i)) for i, result in enumerate(results)]

        return await self._run(work)

    async def reclaim_expired(
        self, *, now: datetime, lease_until: datetime, limit: int
    ) -> builtins.list[ClaimedRun]:
        if limit <= 0:
            return []

        async def work(conn: Conn) -> builtins.list[ClaimedRun]:
            return await reclaim(conn, self._sql, ms(now), ms(lease_until), limit)

        return await self._run(work)

    # -- runs --------------------------------------------------------------------------

    async def extend(
        self, runs: Sequence[Run], *, lease_until: datetime, release: bool = False
    ) -> builtins.list[bool]:
        if not runs:
            return []
        args = (ms(lease_until), [run.fence for run in runs], [run.task_id for run in runs])
        sql = self._sql.extend
        valid = await self._one(lambda conn: conn.fetch(sql, *args, release))
        kept = {(row["fence"], row["task_id"]) for row in valid}
        return [(run.fence, run.task_id) in kept for run in runs]

    async def finish(self, finishes: Sequence[Finish]) -> builtins.list[bool]:
        if not finishes:
            return []

        async def work(conn: Conn) -> builtins.list[bool]:
            rows = await lock_rows(conn, self._sql, [f.run.task_id for f in finishes])
            changes, retention = Changes(), self._retention
            done = [apply_finish(f, rows.get(f.run.task_id), changes, retention) for f in finishes]
            await write_changes(conn, self._sql, changes, None)
            kept = [(row, not changes.touched[row.task_id].deleted) for row in changes.history]
            await keep_history(conn, self._sql, kept, self._history_size, retention)
            return done

        return await self._run(work)

    async def _one(self, statement: Callable[[Conn], Awaitable[T]]) -> T:
        return await self._run(statement, single=True)

    async def _run(self, work: Callable[[Conn], Awaitable[T]], *, single: bool = False) -> T:
        pool, patient, dsn = self._pool, self._patient, self._dsn
        try:
            return await transact(pool, work, single=single, patient=patient, dsn=dsn)
        except asyncpg.UndefinedTableError as exc:
            if not isinstance(self._pool, asyncpg.Pool):
                raise ConfigurationError(
                    f"the connection given to schedule_task has no cml-jobs tables in schema "
                    f"{self._schema!r} ({exc}); pass a connection to the database that "
                    "store_url names, once the scheduler has started"
                ) from exc
        # The store's tables are gone (the schema was dropped, the database restored from
        # before it): make them again. Their new generation tells every dispatcher that
        # the tasks stored before were lost, as a Redis that lost its data does.
        await transact(pool, self._migrate, patient=patient, dsn=dsn)
        return await transact(pool, work, single=single, patient=patient, dsn=dsn)

    async def _migrate(self, conn: Conn) -> int:
        return await migrate(conn, self._schema)


def _with_fence(result: ClaimResult, fence: int | None) -> ClaimResult:
    if result.run is None or fence is None:
        return result
    run = result.run
    return ClaimResult(result.task_id, result.status, Run(run.task_id, fence, run.occurrence_at))


@contextlib.asynccontextmanager
async def open_postgres_store(
    url: str, *, patient: bool = False, **history: Any
) -> AsyncIterator[PostgresScheduleStore]:
    """A ``PostgresScheduleStore`` on a pool of its own for ``url``, closed at exit; its
    schema is created, or migrated to ``SCHEMA_VERSION``, first.

    Args:
        url: ``postgresql://user:password@host:5432/database``, with ``?schema=name`` for
            a schema other than ``cml_jobs``.
        patient: wait for PostgreSQL for as long as it takes (a worker); otherwise calls
            fail with ``StoreUnavailableError`` after a few retries (an app).
        **history: ``history_size`` and ``history_retention``, as the store takes them.

    Raises:
        StoreUnavailableError: PostgreSQL cannot be reached (not patient).
        ConfigurationError: the URL is not a PostgreSQL one, or the database holds a
            newer schema than this cml-jobs knows.
    """
    dsn, schema = parse_url(url)
    try:
        pool = await open_pool(dsn, patient=patient)
    except UNAVAILABLE as exc:
        raise unavailable(dsn, exc) from exc
    try:
        store = PostgresScheduleStore(pool, dsn=dsn, schema=schema, patient=patient, **history)
        await transact(pool, store._migrate, patient=patient, dsn=dsn)
        yield store
    finally:
        await pool.close()
