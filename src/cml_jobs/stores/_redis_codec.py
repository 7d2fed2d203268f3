"""How the Redis store's values are written and read: epoch milliseconds, the scripts'
flat argument and reply lists, and task hashes (see the key layout in ``redis.py``).

Pure functions, no I/O. Anything read back may have been tampered with: a value that
cannot be read is shown as unknown rather than breaking a read of every task.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from cml_jobs.stores._bulk import AddResult
from cml_jobs.stores._records import (
    ClaimedRun,
    ClaimResult,
    ClaimStatus,
    Decision,
    DueTask,
    Finish,
    NewTask,
    Outcome,
    Run,
    TaskState,
)

__all__ = [
    "add_args",
    "add_result",
    "claim_result",
    "decision_args",
    "due_tasks",
    "fence_pairs",
    "finish_args",
    "from_ms",
    "glob_escape",
    "ms",
    "opt_ms",
    "pairs",
    "reissued",
    "removed",
    "task_state",
    "text",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)
_MIN_MS = (datetime(1, 1, 2, tzinfo=timezone.utc) - _EPOCH) // _ONE_MS
_MAX_MS = (datetime(9999, 12, 30, tzinfo=timezone.utc) - _EPOCH) // _ONE_MS


def ms(at: datetime) -> str:
    """Epoch milliseconds, truncated, as the decimal text Redis and the scripts compare."""
    if at.utcoffset() is None:
        raise ValueError(f"{at!r} is naive; cml-jobs stores only timezone-aware datetimes")
    return str((at - _EPOCH) // _ONE_MS)


def opt_ms(at: datetime | None) -> str:
    return "" if at is None else ms(at)


def from_ms(stored: object) -> datetime:
    # A time beyond what datetime holds (a tampered score, even inf or nan) reads as its
    # bound; text that is no number at all raises ValueError.
    number = float(text(stored))
    value = _MIN_MS if number == -math.inf else _MAX_MS if not math.isfinite(number) else number
    return _EPOCH + timedelta(milliseconds=min(max(int(value), _MIN_MS), _MAX_MS))


def text(value: object) -> str:
    # The client may or may not decode responses (ArqRedis does not); accept both. Bytes
    # that are not UTF-8 (a tampered descriptor) must not break due() or list() for every
    # task: they decode with U+FFFD, so the descriptor fails validation and is parked.
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def pairs(flat: Sequence[Any]) -> dict[str, str]:
    return {text(flat[i]): text(flat[i + 1]) for i in range(0, len(flat), 2)}


def _outcome(value: str | None) -> Outcome | None:
    # A tampered value reads as unknown rather than breaking list() for every task.
    try:
        return None if value is None else Outcome(value)
    except ValueError:
        return None


def glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _count(value: str | None) -> int:
    # A counter that is not a number (tampered with) reads as 0 rather than breaking list().
    try:
        return int(value or 0)
    except ValueError:
        return 0


def task_state(task_id: str, fields: Mapping[str, str]) -> TaskState:
    def at(name: str) -> datetime | None:
        try:
            return from_ms(fields[name]) if name in fields else None
        except ValueError:  # not a number (tampered with): shown as unknown
            return None

    return TaskState(
        task_id=task_id,
        descriptor_json=fields.get("descriptor", ""),
        due_at=at("due_at"),
        paused=fields.get("paused") == "1",
        parked_reason=fields.get("parked"),
        running=_count(fields.get("running")),
        last_run_at=at("last_run_at"),
        last_outcome=_outcome(fields.get("last_outcome")),
        last_error=fields.get("last_error") or None,
        counts={k[2:]: _count(v) for k, v in fields.items() if k.startswith("n:") and _count(v)},
        trace_context=fields.get("trace"),
        note=fields.get("note"),
        ended_at=at("ended_at"),
        expires_at=at("expires"),
    )


def add_args(task: NewTask, replace: bool, history_prefix: str) -> list[str]:
    """The ADD script's arguments for one task: id, descriptor, due, ready, replace, trace,
    history key."""
    if "|" in task.task_id:
        raise ValueError(f"task id {task.task_id!r} contains '|', which the store reserves")
    flag, trace = "1" if replace else "0", task.trace_context or ""
    times = [ms(task.due_at), ms(task.ready_at)]
    history = history_prefix + task.task_id
    return [task.task_id, task.descriptor_json, *times, flag, trace, history]


_ADDED = {1: AddResult.WRITTEN, 0: AddResult.UNCHANGED, -1: AddResult.CONFLICT}


def add_result(code: object) -> AddResult:
    """What the ADD script's answer (1, 0 or -1) says; anything else is the store's error."""
    if isinstance(code, Exception):
        raise code
    return _ADDED[int(text(code))]


def removed(count: object) -> int | None:
    """What the REMOVE script's answer says: runs under way, or None for no task."""
    if isinstance(count, Exception):
        raise count
    n = int(text(count))
    return None if n < 0 else n


def fence_pairs(runs: Sequence[Run]) -> list[str]:
    """The script arguments naming runs: task id, fence, task id, fence..."""
    return [arg for run in runs for arg in (run.task_id, str(run.fence))]


def decision_args(d: Decision) -> list[str]:
    return [
        d.task_id,
        ms(d.expected_due_at),
        opt_ms(d.run_at),
        opt_ms(d.next_due_at),
        opt_ms(d.next_ready_at),
        str(d.max_instances),
        str(d.missed),
        "" if d.park_reason is None else "!" + d.park_reason,
    ]


def finish_args(finish: Finish) -> list[str]:
    error_args = ["", "0"] if finish.error is None else [finish.error, "1"]
    row = finish.history
    history = ["", ""] if row is None else [row.to_json(), ms(row.ended_at)]
    return [
        finish.run.task_id,
        str(finish.run.fence),
        Outcome(finish.outcome).value,
        *error_args,
        "1" if finish.end_task else "0",
        opt_ms(finish.started_at),
        *history,
    ]


def reissued(flat: Sequence[Any]) -> list[ClaimedRun]:
    return [
        ClaimedRun(
            Run(
                text(flat[i]),
                int(flat[i + 1]),
                from_ms(flat[i + 2]),
                int(flat[i + 3]),
                text(flat[i + 6]) == "1",
            ),
            text(flat[i + 4]),
            text(flat[i + 5]) or None,
        )
        for i in range(0, len(flat), 7)
    ]


def due_tasks(flat: Sequence[Any]) -> list[DueTask]:
    return [
        DueTask(text(flat[i]), from_ms(flat[i + 1]), text(flat[i + 2]), text(flat[i + 3]) or None)
        for i in range(0, len(flat), 4)
    ]


def claim_result(d: Decision, status: object, fence: object) -> ClaimResult:
    claim_status = ClaimStatus(text(status))
    if claim_status is ClaimStatus.PARKED:  # the fence's place holds the reason
        return ClaimResult(d.task_id, claim_status, reason=text(fence))
    if claim_status is not ClaimStatus.CLAIMED or d.run_at is None:
        return ClaimResult(d.task_id, claim_status)
    return ClaimResult(
        d.task_id, claim_status, Run(d.task_id, int(text(fence)), from_ms(ms(d.run_at)))
    )
