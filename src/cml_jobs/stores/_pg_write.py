"""Reading locked tasks into ``TaskRow``s and writing a batch's ``Changes`` back, in a
handful of statements whatever the batch's size; and a task's row as a ``TaskState``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import asyncpg

from cml_jobs.stores._pg_rows import Changes, TaskRow
from cml_jobs.stores._pg_schema import Conn
from cml_jobs.stores._pg_sql import Statements
from cml_jobs.stores._records import Outcome, TaskState

__all__ = ["lock_rows", "task_state", "write_changes"]


async def lock_rows(conn: Conn, sql: Statements, task_ids: Iterable[str]) -> dict[str, TaskRow]:
    """Lock the tasks (in id order, so batches never deadlock on each other) and read
    them with their runs under way."""
    ids = sorted(set(task_ids))
    rows = {
        r["id"]: TaskRow(
            task_id=r["id"],
            due_at=r["due_at"],
            ready_at=r["ready_at"],
            paused=r["paused"],
            parked=r["parked"],
            last_run_at=r["last_run_at"],
            last_outcome=r["last_outcome"],
            last_error=r["last_error"],
            counts=_counts(r["counts"]),
        )
        for r in await conn.fetch(sql.lock_tasks, ids)
    }
    if rows:  # read after the locks are held: every run committed before is seen
        for run in await conn.fetch(sql.runs_of, list(rows)):
            rows[run["task_id"]].runs.add(run["fence"])
    return rows


async def write_changes(
    conn: Conn, sql: Statements, changes: Changes, lease_until: datetime | None
) -> dict[int, int]:
    """Write what a batch did; returns the fence of each new run, by its ``index``."""
    fences: dict[int, int] = {}
    if changes.new_runs:
        assert lease_until is not None
        drawn = sorted(await conn.fetchval(sql.fences, len(changes.new_runs)))
        new = changes.new_runs
        await conn.execute(
            sql.insert_runs,
            drawn,
            [run.task_id for run in new],
            [run.occurrence_at for run in new],
            [run.attempt for run in new],
            [lease_until] * len(new),
        )
        fences = {run.index: fence for run, fence in zip(new, drawn, strict=True)}
    if changes.released or changes.cleared:
        await conn.execute(sql.delete_runs, list(changes.released), list(changes.cleared))
    deleted = [row.task_id for row in changes.touched.values() if row.deleted]
    if deleted:
        await conn.execute(sql.delete_tasks, deleted)
    kept = [row for row in changes.touched.values() if not row.deleted]
    if kept:
        await conn.execute(sql.update_tasks, *_columns(kept))
    return fences


def _columns(rows: list[TaskRow]) -> list[list[Any]]:
    return [
        [row.task_id for row in rows],
        [row.due_at for row in rows],
        [row.ready_at for row in rows],
        [row.parked for row in rows],
        [row.last_run_at for row in rows],
        [row.last_outcome for row in rows],
        [row.last_error for row in rows],
        [json.dumps(row.counts) for row in rows],
    ]


def _counts(text: str | None) -> dict[str, int]:
    found = json.loads(text or "{}")
    return {str(k): int(v) for k, v in found.items()} if isinstance(found, dict) else {}


def _outcome(value: str | None) -> Outcome | None:
    try:
        return None if value is None else Outcome(value)
    except ValueError:  # written by a newer cml-jobs: shown as unknown
        return None


def task_state(row: asyncpg.Record | Mapping[str, Any]) -> TaskState:
    """A task's row (with its ``running`` count) as the store reports it."""
    return TaskState(
        task_id=row["id"],
        descriptor_json=row["descriptor"],
        due_at=row["due_at"],
        paused=row["paused"],
        parked_reason=row["parked"],
        running=int(row["running"]),
        last_run_at=row["last_run_at"],
        last_outcome=_outcome(row["last_outcome"]),
        last_error=row["last_error"],
        counts={k: v for k, v in _counts(row["counts"]).items() if v},
        trace_context=row["trace"],
    )
