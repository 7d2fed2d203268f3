"""``TaskInfo``: a scheduled task as the bus shows it, and the counts of tasks per state."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from cml_jobs import _telemetry
from cml_jobs._codec import DescriptorCodec
from cml_jobs._descriptors import TaskDescriptor
from cml_jobs.exceptions import InvalidDescriptorError
from cml_jobs.stores._base import Outcome, TaskState

__all__ = ["PLAIN", "TaskInfo", "count_by_state"]

#: Descriptors as plain JSON, without a signing key.
PLAIN = DescriptorCodec()


@dataclass(frozen=True)
class TaskInfo:
    """A scheduled task as ``list_tasks`` and ``get_task`` show it.

    Attributes:
        id: the task id.
        name: the job name ("" if the stored descriptor is unreadable).
        descriptor: the task's descriptor, or None if the stored one is invalid.
        next_run_time: the next occurrence, or None (paused, parked, or running its last).
        last_run_time: when the latest run started.
        last_outcome: how the latest occurrence ended.
        last_error: a summary of the latest failure.
        paused: paused with ``pause_task``.
        parked_reason: why the task was parked, or None.
        running: runs going on now, extra runs waiting for their turn included.
        counts: occurrences per outcome.
        note: the operator's note given to ``pause_task``, or None.
        ended_at: when a one-time task ended (its run finished); it stays listed, with
            its last outcome and its history, for ``history_retention`` (7 days by
            default). None while it lives.
    """

    id: str
    name: str
    descriptor: TaskDescriptor | None
    next_run_time: datetime | None
    last_run_time: datetime | None = None
    last_outcome: Outcome | None = None
    last_error: str | None = None
    paused: bool = False
    parked_reason: str | None = None
    running: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    note: str | None = None
    ended_at: datetime | None = None

    @classmethod
    def from_state(cls, state: TaskState, codec: DescriptorCodec | None = None) -> TaskInfo:
        """Build from the store's record, read with ``codec`` (plain JSON by default)."""
        try:
            descriptor: TaskDescriptor | None = (codec or PLAIN).decode(state.descriptor_json)
        except InvalidDescriptorError:
            descriptor = None
        live = not state.paused and state.parked_reason is None and state.ended_at is None
        return cls(
            id=state.task_id,
            name=descriptor.name if descriptor else "",
            descriptor=descriptor,
            next_run_time=state.due_at if live else None,
            last_run_time=state.last_run_at,
            last_outcome=state.last_outcome,
            last_error=state.last_error,
            paused=state.paused,
            parked_reason=state.parked_reason,
            running=state.running,
            counts=state.counts,
            note=state.note,
            ended_at=state.ended_at,
        )


def count_by_state(tasks: list[TaskInfo]) -> dict[str, int]:
    """Tasks per state, for the ``cml_jobs.tasks`` gauge: parked, else paused, else
    running, else scheduled (if it has a next occurrence)."""
    counts = dict.fromkeys(_telemetry.TASK_STATES, 0)
    for task in tasks:
        if task.parked_reason is not None:
            counts["parked"] += 1
        elif task.paused:
            counts["paused"] += 1
        elif task.running:
            counts["running"] += 1
        elif task.next_run_time is not None:
            counts["scheduled"] += 1
    return counts
