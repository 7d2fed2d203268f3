"""The in-memory store: the reference semantics of ``ScheduleStore``, for one process.

It backs the embedded ``memory://`` mode and users' tests. Nothing survives the process.
"""

from __future__ import annotations

import builtins
import uuid
from collections import deque
from collections.abc import Sequence
from datetime import datetime, timedelta

from cml_jobs.stores._base import (
    ClaimedRun,
    ClaimResult,
    ClaimStatus,
    Decision,
    DueBatch,
    DueTask,
    Finish,
    NewTask,
    Outcome,
    Run,
    TaskState,
)
from cml_jobs.stores._bulk import AddResult, task_exists
from cml_jobs.stores._memory_ops import MemoryOperations, Task, ms
from cml_jobs.stores._memory_ops import _schedule as schedule
from cml_jobs.stores._ops import (
    DEFAULT_HISTORY_RETENTION,
    DEFAULT_HISTORY_SIZE,
    RunRecord,
    WorkerInfo,
)

__all__ = ["InMemoryScheduleStore"]


class InMemoryScheduleStore(MemoryOperations):
    """A ``ScheduleStore``, ``OperationsStore`` and ``BulkScheduleStore`` in plain dicts.

    Args:
        history_size: runs kept per task in its history.
        history_retention: how long a task that ended stays, with its history.
    """

    def __init__(
        self,
        *,
        history_size: int = DEFAULT_HISTORY_SIZE,
        history_retention: timedelta = DEFAULT_HISTORY_RETENTION,
    ) -> None:
        self.history_size = history_size
        self.history_retention = history_retention
        self._tasks: dict[str, Task] = {}
        self._leases: dict[int, tuple[str, datetime]] = {}  # fence -> (task id, lease end)
        self._history: dict[str, deque[RunRecord]] = {}
        self._workers: dict[str, WorkerInfo] = {}
        self._fence = 0
        self._given_back: set[int] = set()  # fences released by a worker that stopped
        self._generation = uuid.uuid4().hex

    # -- tasks -------------------------------------------------------------------------

    async def add(self, task: NewTask, *, replace: bool) -> bool:
        result = self._add(task, replace)
        if result is AddResult.CONFLICT:
            raise task_exists(task.task_id)
        return result is AddResult.WRITTEN

    async def add_many(
        self, tasks: Sequence[NewTask], *, replace: bool
    ) -> builtins.list[AddResult]:
        return [self._add(task, replace) for task in tasks]

    def _add(self, task: NewTask, replace: bool) -> AddResult:
        existing = self._tasks.get(task.task_id)
        if existing is not None and existing.ended_at is not None:
            existing = None  # an ended task is only kept to be seen: a new one replaces it
        if existing is not None and existing.descriptor_json == task.descriptor_json:
            return AddResult.UNCHANGED
        if existing is not None and not replace:
            return AddResult.CONFLICT
        self._drop(task.task_id)
        self._tasks[task.task_id] = Task(
            descriptor_json=task.descriptor_json,
            due_at=ms(task.due_at),
            ready_at=ms(task.ready_at),
            trace_context=task.trace_context,
        )
        return AddResult.WRITTEN

    async def remove(self, task_id: str) -> int | None:
        task = self._tasks.get(task_id)
        if task is None:
            return None
        under_way = len(task.runs)
        self._drop(task_id)
        self._history.pop(task_id, None)
        return under_way

    async def remove_many(self, task_ids: Sequence[str]) -> builtins.list[int | None]:
        return [await self.remove(task_id) for task_id in task_ids]

    async def get(self, task_id: str) -> TaskState | None:
        task = self._tasks.get(task_id)
        return None if task is None else self._state(task_id, task)

    async def list(self) -> builtins.list[TaskState]:
        return [self._state(task_id, self._tasks[task_id]) for task_id in sorted(self._tasks)]

    async def set_paused(
        self, task_id: str, *, paused: bool, due_at: datetime | None, ready_at: datetime | None
    ) -> bool:
        task = self._tasks.get(task_id)
        if task is None or task.ended_at is not None:
            return False
        task.paused = paused
        if not paused:
            schedule(task, due_at, ready_at)
        return True

    # -- dispatch ----------------------------------------------------------------------

    async def poll(self, now: datetime, limit: int) -> DueBatch:
        found: builtins.list[DueTask] = []
        following = None
        for ready_at, task_id in self._live_due():
            if ready_at > now or len(found) >= limit:
                following = ready_at
                break
            task = self._tasks[task_id]
            assert task.due_at is not None
            found.append(DueTask(task_id, task.due_at, task.descriptor_json, task.trace_context))
        return DueBatch(found, following, self._generation)

    async def claim(
        self, decisions: Sequence[Decision], *, lease_until: datetime
    ) -> builtins.list[ClaimResult]:
        return [self._claim_one(d, ms(lease_until)) for d in decisions]

    def _claim_one(self, decision: Decision, lease_until: datetime) -> ClaimResult:
        task = self._tasks.get(decision.task_id)
        if task is None or task.paused or task.parked_reason is not None:
            return ClaimResult(decision.task_id, ClaimStatus.GONE)
        if task.due_at != ms(decision.expected_due_at):
            return ClaimResult(decision.task_id, ClaimStatus.RACED)
        if decision.park_reason is not None:
            self._park(decision.task_id, task, decision.park_reason)
            return ClaimResult(decision.task_id, ClaimStatus.PARKED, reason=decision.park_reason)
        run: Run | None = None
        status = ClaimStatus.ADVANCED
        if decision.run_at is not None and len(task.runs) >= decision.max_instances:
            status = ClaimStatus.SKIPPED
            task.last_outcome = Outcome.SKIPPED
            task.count(Outcome.SKIPPED)
        elif decision.run_at is not None:
            status = ClaimStatus.CLAIMED
            run = self._new_run(decision.task_id, ms(decision.run_at), 1, lease_until, False)
        if decision.missed:
            task.count(Outcome.MISSED, decision.missed)
            if run is None and status is ClaimStatus.ADVANCED:
                task.last_outcome = Outcome.MISSED
        schedule(task, decision.next_due_at, decision.next_ready_at)
        if task.due_at is None and not task.runs:
            self._drop(decision.task_id)  # a one-time task whose occurrence was missed has ended
        return ClaimResult(decision.task_id, status, run)

    async def reclaim_expired(
        self, *, now: datetime, lease_until: datetime, limit: int
    ) -> builtins.list[ClaimedRun]:
        reissued: builtins.list[ClaimedRun] = []
        for fence, (task_id, until) in sorted(self._leases.items(), key=lambda kv: kv[1][1]):
            if until > now or len(reissued) >= limit:
                break
            task = self._tasks.get(task_id)
            if task is not None and not self._its_turn(task, fence, now):
                continue
            given_back = fence in self._given_back  # by a worker that stopped: no loss
            old = self._release(task_id, fence)
            if old is not None and task is not None:
                attempt, until = old.attempt + (not given_back), ms(lease_until)
                run = self._new_run(task_id, old.occurrence_at, attempt, until, old.extra)
                reissued.append(ClaimedRun(run, task.descriptor_json, task.trace_context))
        return reissued

    def _its_turn(self, task: Task, fence: int, now: datetime) -> bool:
        """An extra run waiting (see ``add_runs``) is handed out once fewer than its
        ``max_instances`` runs of the task are going; until then it waits another second."""
        if fence not in task.waiting:
            return True
        if len(task.runs) - len(task.waiting) < task.waiting[fence]:
            del task.waiting[fence]
            return True
        self._leases[fence] = (self._leases[fence][0], ms(now) + timedelta(seconds=1))
        return False

    # -- runs --------------------------------------------------------------------------

    async def extend(
        self, runs: Sequence[Run], *, lease_until: datetime, release: bool = False
    ) -> builtins.list[bool]:
        valid = []
        for run in runs:
            ok = run.fence in self._leases and self._leases[run.fence][0] == run.task_id
            if ok:
                self._leases[run.fence] = (run.task_id, ms(lease_until))
                if release:
                    self._given_back.add(run.fence)
            valid.append(ok)
        return valid

    async def finish(self, finishes: Sequence[Finish]) -> builtins.list[bool]:
        return [self._finish(finish) for finish in finishes]

    def _finish(self, finish: Finish) -> bool:
        run = finish.run
        task = self._tasks.get(run.task_id)
        if task is None or self._release(run.task_id, run.fence) is None:
            return False
        if finish.started_at is not None:
            task.last_run_at = ms(finish.started_at)
        if finish.history is not None:
            self._keep(finish.history)
        if finish.outcome is Outcome.PARKED:
            self._park(run.task_id, task, finish.error or "parked")
            return True
        task.last_outcome = finish.outcome
        task.last_error = finish.error
        task.count(finish.outcome)
        ended = task.due_at is None and not task.runs and task.parked_reason is None
        if ended and not finish.end_task and finish.history is not None:
            self._end(run.task_id, task, finish.history.ended_at)  # a one-time task's run
        elif finish.end_task or ended:
            self._drop(run.task_id)
        return True

    # -- internals ---------------------------------------------------------------------

    def _park(self, task_id: str, task: Task, reason: str) -> None:
        task.parked_reason = reason
        task.last_outcome = Outcome.PARKED
        task.count(Outcome.PARKED)
        for fence in list(task.runs):
            self._release(task_id, fence)

    def _new_run(
        self, task_id: str, occurrence_at: datetime, attempt: int, until: datetime, extra: bool
    ) -> Run:
        self._fence += 1
        run = Run(task_id, self._fence, occurrence_at, attempt, extra)
        self._tasks[task_id].runs[run.fence] = run
        self._leases[run.fence] = (task_id, until)
        return run

    def _release(self, task_id: str, fence: int) -> Run | None:
        self._leases.pop(fence, None)
        self._given_back.discard(fence)
        task = self._tasks.get(task_id)
        if task is not None:
            task.waiting.pop(fence, None)
        return None if task is None else task.runs.pop(fence, None)

    def _drop(self, task_id: str) -> bool:
        task = self._tasks.pop(task_id, None)
        if task is None:
            return False
        for fence in task.runs:
            self._leases.pop(fence, None)
            self._given_back.discard(fence)
        return True

    def _live_due(self) -> builtins.list[tuple[datetime, str]]:
        """Schedulable tasks by ready time, earliest first."""
        return sorted(
            (task.ready_at, task_id)
            for task_id, task in self._tasks.items()
            if task.schedulable and task.ready_at is not None
        )

    def _state(self, task_id: str, task: Task) -> TaskState:
        return TaskState(
            task_id=task_id,
            descriptor_json=task.descriptor_json,
            due_at=task.due_at,
            paused=task.paused,
            parked_reason=task.parked_reason,
            running=len(task.runs),
            last_run_at=task.last_run_at,
            last_outcome=task.last_outcome,
            last_error=task.last_error,
            counts=dict(task.counts),
            trace_context=task.trace_context,
            note=task.note,
            ended_at=task.ended_at,
            expires_at=task.expires_at,
        )
