"""The PostgreSQL store's side of ``OperationsStore`` (run history, the worker registry,
extra runs, operators' edits), and what ``finish`` and ``reclaim_expired`` do for it in
their own transactions: history rows written with the run's outcome (``keep_history``),
and extra runs handed out in their turn (``reclaim``). Tables in ``_pg_schema``.

Nothing here reads the clock: what has expired is forgotten when history is written
(ended tasks and the histories of tasks that are gone, by the rows' end times) and when
workers are listed (by the ``now`` given).
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from cml_jobs.stores._ops import RunRecord, WorkerInfo
from cml_jobs.stores._pg_rows import (
    Changes,
    NewRun,
    later,
    ms,
    next_attempt,
    schedule_times,
    storable,
)
from cml_jobs.stores._pg_schema import Conn
from cml_jobs.stores._pg_sql import Statements
from cml_jobs.stores._pg_write import write_changes
from cml_jobs.stores._records import ClaimedRun, Run

__all__ = ["PostgresOperations", "keep_history", "reclaim"]

T = TypeVar("T")

# An extra run that is not its turn yet looks again this much later.
_WAIT = timedelta(seconds=1)


class PostgresOperations:
    """``OperationsStore`` on PostgreSQL (mixed into ``PostgresScheduleStore``)."""

    _sql: Statements
    _history_size: int
    _retention: timedelta

    if TYPE_CHECKING:  # the store's

        async def _run(
            self, work: Callable[[Conn], Awaitable[T]], *, single: bool = False
        ) -> T: ...

        async def _one(self, statement: Callable[[Conn], Awaitable[T]]) -> T: ...

    async def history(self, task_id: str, limit: int) -> builtins.list[RunRecord]:
        n = min(max(limit, 0), self._history_size)
        rows = await self._one(lambda conn: conn.fetch(self._sql.history, task_id, n))
        return list(_readable(RunRecord.from_json, (row["body"] for row in rows)))

    async def record(self, rows: Sequence[RunRecord]) -> None:
        if not rows:
            return
        ids = sorted({row.task_id for row in rows})

        async def work(conn: Conn) -> None:
            # Held until commit: a task cannot go (and leave rows without an expiry) meanwhile.
            there = {found["id"] for found in await conn.fetch(self._sql.share_tasks, ids)}
            kept = [(row, row.task_id in there) for row in rows]
            await keep_history(conn, self._sql, kept, self._history_size, self._retention)

        await self._run(work)

    async def add_runs(
        self, task_id: str, occurrences: Sequence[datetime], *, max_instances: int, now: datetime
    ) -> bool:
        times, sql = [ms(at) for at in occurrences], self._sql
        args = (task_id, times, ms(now), max_instances, sql.channel)
        return await self._one(lambda conn: conn.fetchrow(sql.add_runs, *args)) is not None

    async def unpark(
        self, task_id: str, *, due_at: datetime | None, ready_at: datetime | None
    ) -> bool:
        args = (task_id, *schedule_times(due_at, ready_at), self._sql.channel)
        return await self._one(lambda conn: conn.fetchrow(self._sql.unpark, *args)) is not None

    async def update(
        self, task_id: str, descriptor_json: str, *, due_at: datetime, ready_at: datetime
    ) -> bool:
        args = (task_id, descriptor_json, *schedule_times(due_at, ready_at), self._sql.channel)
        return await self._one(lambda conn: conn.fetchrow(self._sql.update, *args)) is not None

    async def set_note(self, task_id: str, note: str | None) -> bool:
        args = (task_id, storable(note))
        found = await self._one(lambda conn: conn.fetchrow(self._sql.set_note, *args))
        return found is not None

    async def beat(self, worker: WorkerInfo) -> None:
        args = (worker.id, worker.to_json(), worker.expires_at)
        await self._one(lambda conn: conn.execute(self._sql.beat, *args))

    async def leave(self, worker_id: str) -> None:
        await self._one(lambda conn: conn.execute(self._sql.leave, worker_id))

    async def workers(self, now: datetime) -> builtins.list[WorkerInfo]:
        rows = await self._one(lambda conn: conn.fetch(self._sql.workers, now))
        return list(_readable(WorkerInfo.from_json, (row["body"] for row in rows)))


async def keep_history(
    conn: Conn,
    sql: Statements,
    rows: Sequence[tuple[RunRecord, bool]],
    size: int,
    retention: timedelta,
) -> None:
    """Add history rows, each with whether its task is still there (if not, the task's
    history is kept for ``retention`` after the row ended); trim each task's history to
    ``size`` rows; and forget what expired by the latest row's end."""
    if not rows:
        return
    ids = [row.task_id for row, _ in rows]
    bodies = [row.to_json() for row, _ in rows]
    expiry = [None if there else later(ms(row.ended_at), retention) for row, there in rows]
    await conn.execute(sql.keep, ids, bodies, expiry)
    now = max(ms(row.ended_at) for row, _ in rows)
    await conn.execute(sql.tidy, sorted(set(ids)), size, now)


async def reclaim(
    conn: Conn, sql: Statements, now: datetime, lease_until: datetime, limit: int
) -> builtins.list[ClaimedRun]:
    """Re-issue up to ``limit`` runs whose lease expired at ``now`` (see
    ``reclaim_expired``). An extra run waiting (``add_runs``, attempt 0) is handed out
    once fewer than its ``max_instances`` of its task's handed-out runs are going; until
    then it looks again a second later."""
    expired = await conn.fetch(sql.expired, now, limit)
    going = await _going(conn, sql, expired)
    changes, postponed, handed = Changes(), [], builtins.list[asyncpg.Record]()
    for found in expired:
        if found["waiting"] is not None and not _its_turn(going, found):
            postponed.append(found["fence"])
            continue
        changes.released.add(found["fence"])
        if found["parked"] is None:
            attempt, extra = next_attempt(found["attempt"]), found["extra"]
            occurrence = found["occurrence_at"]
            changes.new_runs.append(
                NewRun(found["task_id"], occurrence, len(handed), attempt, extra)
            )
            handed.append(found)
    if postponed:
        await conn.execute(sql.postpone, postponed, now + _WAIT)
    fences = await write_changes(conn, sql, changes, lease_until)
    return [
        ClaimedRun(
            Run(new.task_id, fences[new.index], new.occurrence_at, new.attempt, new.extra),
            found["descriptor"],
            found["trace"],
        )
        for new, found in zip(changes.new_runs, handed, strict=True)
    ]


async def _going(
    conn: Conn, sql: Statements, expired: Iterable[asyncpg.Record]
) -> dict[str, list[int]]:
    """Per task with an extra run waiting among ``expired``: its runs under way, and how
    many of them wait (read once its row is locked)."""
    ids = sorted({found["task_id"] for found in expired if found["waiting"] is not None})
    if not ids:
        return {}
    return {r["task_id"]: [r["running"], r["waiting"]] for r in await conn.fetch(sql.going, ids)}


def _its_turn(going: dict[str, list[int]], found: asyncpg.Record) -> bool:
    counts = going[found["task_id"]]  # [runs under way, runs waiting]
    if counts[0] - counts[1] >= found["waiting"]:
        return False
    counts[1] -= 1  # handed out: it waits no longer
    return True


def _readable(parse: Callable[[str], Any], raw: Iterable[str]) -> Iterable[Any]:
    """What ``parse`` reads from each value; a value that cannot be read (tampered with)
    is left out rather than breaking the read."""
    for value in raw:
        with contextlib.suppress(ValueError):
            yield parse(value)
