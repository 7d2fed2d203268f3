"""Where the dispatcher's runs go when this process executes them itself."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cml_jobs._descriptors import TaskDescriptor
from cml_jobs._dispatch import RunSink
from cml_jobs._execution import Executor
from cml_jobs.stores._base import Run

__all__ = ["LocalSink"]


class LocalSink:
    """Runs each claimed occurrence in this worker, at once, up to its free slots.

    Each worker claims only what it can start now, so workers share the load by pulling,
    and a run starts without waiting for a queue poll. A run for a job this worker does
    not have goes to ``overflow`` (the arq queue), where a worker that has it takes it.

    Args:
        executor: this process's executor.
        overflow: where runs this worker cannot execute go; without one the executor
            hands them on itself (and parks them after ``unknown_job_grace``).
    """

    def __init__(self, executor: Executor, overflow: RunSink | None = None) -> None:
        self.executor = executor
        self.overflow = overflow

    def room(self) -> int:
        """The executor's free slots."""
        return self.executor.free_slots

    async def submit(self, runs: Sequence[Run], descriptors: Mapping[str, TaskDescriptor]) -> None:
        """Start each run in this process, or pass it to ``overflow``."""
        elsewhere = []
        for run in runs:
            descriptor = descriptors.get(run.task_id)
            known = descriptor is None or descriptor.name in self.executor.registry
            if known or self.overflow is None:
                self.executor.spawn(run, descriptor)
            else:
                elsewhere.append(run)
        if elsewhere and self.overflow is not None:
            await self.overflow.submit(elsewhere, descriptors)
