"""What ``cml-jobs check`` says about the worker registry and parked tasks.

Apart from the other findings (``_health``), so that each concern stays small: a fleet
with fewer live workers than ``--min-workers``, and any parked task (named, with its
reason), make the check fail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cml_jobs.stores import OperationsStore, TaskState, WorkerInfo

__all__ = ["FleetFindings", "fleet_findings", "parked_tasks"]


@dataclass(frozen=True)
class FleetFindings:
    """The registered workers and the parked tasks, as ``check`` judges them.

    Attributes:
        workers: the workers alive (their registration has not expired).
        min_workers: how many the check requires (0: any number).
        parked: ``(task id, reason)`` of each parked task.
    """

    workers: list[WorkerInfo] = field(default_factory=list)
    min_workers: int = 0
    parked: list[tuple[str, str]] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """Enough workers, and no parked task."""
        return len(self.workers) >= self.min_workers and not self.parked

    def lines(self) -> list[str]:
        """The findings, one per line."""
        count = len(self.workers)
        enough = (
            "" if count >= self.min_workers else f", FEWER than --min-workers {self.min_workers}"
        )
        lines = [f"registered workers: {count}{enough}"]
        lines += [
            f"  {w.id} (cml-jobs {w.version}, {w.running}/{w.max_jobs} running)"
            for w in self.workers
        ]
        lines.append(f"parked tasks: {len(self.parked)}")
        lines += [f"  {task_id}: {reason}" for task_id, reason in self.parked]
        return lines


def parked_tasks(states: Sequence[TaskState]) -> list[tuple[str, str]]:
    """``(task id, reason)`` of each parked task, ordered by id."""
    return sorted(
        (state.task_id, state.parked_reason) for state in states if state.parked_reason is not None
    )


async def fleet_findings(
    store: OperationsStore, states: Sequence[TaskState], now: datetime, min_workers: int
) -> FleetFindings:
    """The live workers from ``store``'s registry and the parked ones among ``states``."""
    return FleetFindings(await store.workers(now), min_workers, parked_tasks(states))
