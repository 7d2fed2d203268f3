"""Deciding, in Python, what one due task does this tick: run (``plan``: misfire grace,
coalescing), park a task that cannot run, or leave a task whose job this worker lacks to
one that has it. Pure: the decider is given ``now`` and reads nothing but the task.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cml_jobs._codec import DescriptorCodec
from cml_jobs._descriptors import TaskDescriptor
from cml_jobs._registry import JobRegistry, check_data
from cml_jobs._triggers import plan, ready_at
from cml_jobs.exceptions import InvalidDescriptorError, InvalidTaskDataError
from cml_jobs.stores._base import Decision, DueTask

__all__ = ["HANDOFF_DELAY", "Choice", "Decider"]

logger = logging.getLogger("cml_jobs.dispatch")

#: A task whose job this worker lacks (a rolling deploy) is left this long for a worker
#: that has it, without counting as a failure.
HANDOFF_DELAY = timedelta(seconds=1)
#: How many tasks of unknown jobs are remembered as already logged (one line each).
_LOGGED = 1024


@dataclass(frozen=True)
class Choice:
    """A decision, with the descriptor it was made from (None when it parks or leaves the
    task) and the task's job name, when it could be read ("" otherwise)."""

    decision: Decision
    descriptor: TaskDescriptor | None
    job_name: str = ""


class Decider:
    """Decides what each due task does.

    Args:
        codec: how stored descriptors are read.
        registry: the jobs this worker has; tasks of other jobs are left to other workers.
        unknown_job_grace: how long a task whose job no worker has run waits before it is
            parked.
    """

    def __init__(
        self, *, codec: DescriptorCodec, registry: JobRegistry, unknown_job_grace: timedelta
    ) -> None:
        self.codec, self.registry = codec, registry
        self.unknown_job_grace = unknown_job_grace
        self._left: OrderedDict[str, None] = OrderedDict()  # tasks whose hand-on was logged

    def choose(self, task: DueTask, now: datetime) -> Choice:
        """What to do with one due task; never raises, whatever the store holds."""
        try:
            descriptor = self.codec.decode(task.descriptor_json)
        except InvalidDescriptorError as exc:
            return _park(task, f"stored descriptor is invalid: {exc}")
        if descriptor.id != task.task_id:
            return _park(
                task,
                f"stored descriptor has id {descriptor.id!r} under task {task.task_id!r}: it "
                "was written around cml-jobs; reschedule the task from the app",
            )
        if descriptor.name not in self.registry:
            return self._unknown_job(task, descriptor.name, now)
        try:
            check_data(self.registry.get(descriptor.name), descriptor.data)
        except InvalidTaskDataError as exc:
            return _park(task, f"data no longer fits the job: {exc}", descriptor.name)
        try:
            return Choice(_decision(descriptor, task, now), descriptor, descriptor.name)
        except (ArithmeticError, ValueError) as exc:  # e.g. a next occurrence past year 9999
            reason = f"its next occurrence cannot be planned ({type(exc).__name__}: {exc})"
            return _park(task, f"{reason}; reschedule the task from the app", descriptor.name)

    def _unknown_job(self, task: DueTask, job_name: str, now: datetime) -> Choice:
        waited = now - task.due_at
        if waited > self.unknown_job_grace:
            return _park(
                task,
                f"no worker has run job {job_name!r} for {waited.total_seconds():.0f} s; "
                "deploy a worker whose modules include it, then reschedule the task",
                job_name,
            )
        # Leave the occurrence as it is, ready a little later: a worker that has the job
        # claims it meanwhile (its lateness still counts from the occurrence). One line per
        # task, not one per look: a rolling deploy may take minutes.
        if task.task_id not in self._left:
            self._left[task.task_id] = None
            if len(self._left) > _LOGGED:
                self._left.popitem(last=False)
            logger.info(
                "job %r of task %r is not registered in this worker; leaving it to another "
                "worker for up to %.0f s",
                job_name,
                task.task_id,
                self.unknown_job_grace.total_seconds(),
            )
        later = Decision(task.task_id, task.due_at, None, task.due_at, now + HANDOFF_DELAY)
        return Choice(later, None, job_name)

    def unreadable(self, task_ids: Sequence[str]) -> None:
        """Report due ids the store could not read, nor park (their key holds no task);
        the store dropped them from its due index, so each is reported once."""
        for task_id in task_ids:
            logger.error(
                "task %r cannot be read or parked: its key holds no task (written around "
                "cml-jobs), so it is no longer scheduled; delete the key and reschedule it",
                task_id,
            )


def _park(task: DueTask, reason: str, job_name: str = "") -> Choice:
    decision = Decision(task.task_id, task.due_at, None, None, park_reason=reason)
    return Choice(decision, None, job_name)


def _decision(descriptor: TaskDescriptor, task: DueTask, now: datetime) -> Decision:
    decided = plan(descriptor, task.due_at, now)
    following = decided.next_due_at
    return Decision(
        task_id=task.task_id,
        expected_due_at=task.due_at,
        run_at=decided.run_at,
        next_due_at=following,
        next_ready_at=None if following is None else ready_at(descriptor, following),
        max_instances=descriptor.max_instances,
        missed=decided.missed,
    )
