"""Deciding, in Python, what one due task does this tick: run (``plan``: misfire grace,
coalescing), park a task that cannot run, or leave a task whose job this worker lacks to
one that has it. Pure: the decider is given ``now`` and reads nothing but the task.
"""

from __future__ import annotations

import logging
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
        return Choice(_decision(descriptor, task, now), descriptor, descriptor.name)

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
        # claims it meanwhile (its lateness still counts from the occurrence).
        logger.info(
            "job %r of task %r is not registered in this worker; leaving it to another",
            job_name,
            task.task_id,
        )
        later = Decision(task.task_id, task.due_at, None, task.due_at, now + HANDOFF_DELAY)
        return Choice(later, None, job_name)


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
