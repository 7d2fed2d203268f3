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
            ended_at=r["ended_at"],
            expires_at=r["expires_at"],
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
    """Write what a batch did, in one statement; returns the fence of each new run, by
    its ``index``."""
    new = changes.new_runs
    cleared = list(changes.cleared)
    # A task parked after a run of it was claimed in the same batch loses that run too:
    # its runs are deleted after the insert, by a statement of its own (rare).
    late = bool(changes.cleared & {run.task_id for run in new})
    deleted = [row.task_id for row in changes.touched.values() if row.deleted]
    kept = [row for row in changes.touched.values() if not row.deleted]
    added = await conn.fetch(
        sql.write,
        list(changes.released),
        [] if late else cleared,
        deleted,
        *_columns(kept),
        [run.task_id for run in new],
        [run.occurrence_at for run in new],
        [run.attempt for run in new],
        [run.extra for run in new],
        lease_until,
    )
    if late:
        await conn.execute(sql.delete_runs, [], cleared)
    drawn: dict[tuple[str, datetime], list[int]] = {}
    for row in added:  # fences ascending: each goes to the earliest run not yet served
        drawn.setdefault((row["task_id"], row["occurrence_at"]), []).append(row["fence"])
    return {run.index: drawn[(run.task_id, run.occurrence_at)].pop(0) for run in new}


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
        [row.ended_at for row in rows],
        [row.expires_at for row in rows],
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
        note=row["note"],
        ended_at=row["ended_at"],
        expires_at=row["expires_at"],
    )
