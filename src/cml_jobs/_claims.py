"""What one dispatcher tick tells about the due tasks it decided on: logs, metrics and
events for parked, missed and skipped occurrences, their history rows, and the tick's
report."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from cml_jobs import _telemetry
from cml_jobs._decide import Choice
from cml_jobs._descriptors import TaskDescriptor
from cml_jobs._events import EventHub, EventKind, TaskEvent
from cml_jobs._timing import Clock
from cml_jobs.stores._base import ClaimResult, ClaimStatus, Decision, Finish, Outcome, Run
from cml_jobs.stores._ops import RunRecord

__all__ = ["ClaimReporter", "TickReport"]

logger = logging.getLogger("cml_jobs.dispatch")
#: Claims that changed nothing, or parked the task: nothing to count beside the park.
_UNCOUNTED = (ClaimStatus.RACED, ClaimStatus.GONE, ClaimStatus.PARKED)


@dataclass(frozen=True)
class TickReport:
    """What one dispatcher tick did."""

    claimed: int = 0
    reissued: int = 0
    missed: int = 0
    skipped: int = 0
    parked: int = 0
    full: bool = False  # the batch limit was reached: more may be due right now


class ClaimReporter:
    """Logs, counts and announces what a claim did besides handing out runs, and writes
    its history rows.

    Args:
        clock: the time events and rows are stamped with.
        hub: where lifecycle events go.
        worker: this worker's id, for history rows.
    """

    def __init__(self, *, clock: Clock, hub: EventHub, worker: str = "") -> None:
        self.clock, self.hub, self.worker = clock, hub, worker

    def report(
        self, choices: Sequence[Choice], results: Sequence[ClaimResult]
    ) -> tuple[TickReport, list[RunRecord]]:
        """The tick's report, and the history rows of the occurrences that did not run."""
        claimed = missed = skipped = parked = 0
        rows: list[RunRecord] = []
        for choice, result in zip(choices, results, strict=True):
            decision, descriptor = choice.decision, choice.descriptor
            if result.status is ClaimStatus.PARKED:
                parked += 1
                self._parked(decision, choice.job_name, result.reason)
            if descriptor is None or result.status in _UNCOUNTED:
                continue
            claimed += result.status is ClaimStatus.CLAIMED
            if decision.missed:
                missed += decision.missed
                rows.append(self._missed(decision, descriptor, result))
            if result.status is ClaimStatus.SKIPPED and decision.run_at is not None:
                skipped += 1
                self._count(EventKind.SKIPPED, Outcome.SKIPPED, decision, descriptor, 1)
                rows.append(self._row(decision.task_id, decision.run_at, Outcome.SKIPPED, None))
        return TickReport(claimed=claimed, missed=missed, skipped=skipped, parked=parked), rows

    def _missed(
        self, decision: Decision, descriptor: TaskDescriptor, result: ClaimResult
    ) -> RunRecord:
        logger.warning(
            "task %r: %d occurrence(s) missed (later than misfire_grace_time), the first due at %s",
            decision.task_id,
            decision.missed,
            decision.expected_due_at.isoformat(),
        )
        self._count(EventKind.MISSED, Outcome.MISSED, decision, descriptor, decision.missed)
        first, n = decision.expected_due_at, decision.missed
        if decision.run_at is not None and result.status is ClaimStatus.CLAIMED:
            note = f"{n} occurrence(s) from this one coalesced into the run of "
            return self._row(
                decision.task_id, first, Outcome.COALESCED, note + decision.run_at.isoformat()
            )
        note = f"{n} occurrence(s) from this one later than misfire_grace_time; not run"
        return self._row(decision.task_id, first, Outcome.MISSED, note)

    def lost(self, run: Run, times: int) -> Finish:
        """How a run given up after its worker was lost ``times`` times is finished:
        failed, with its history row."""
        error = f"worker lost during {times} attempts; not re-run"
        row = self._row(run.task_id, run.occurrence_at, Outcome.FAILED, error)
        row = replace(row, lateness=None, attempt=run.attempt - 1, error_type="WorkerLost")
        return Finish(run, Outcome.FAILED, error, history=row)

    def ended(self, finish: Finish, job_name: str) -> None:
        """Log, count and announce a re-issued run that was ended instead of re-run (given
        up after lost workers, or parked), once the store recorded it."""
        run, outcome, row = finish.run, finish.outcome, finish.history
        parked = " parked" if outcome is Outcome.PARKED else ""
        logger.error("task %r%s: %s", run.task_id, parked, finish.error)
        error_type = row.error_type if row is not None else None
        _telemetry.record_outcome(job_name or "unknown", outcome, error_type=error_type)
        kind = EventKind.PARKED if outcome is Outcome.PARKED else EventKind.FAILED
        at, due, error = self.clock.now(), run.occurrence_at, finish.error
        attempt = row.attempt if row is not None else run.attempt
        self.hub.emit(TaskEvent(kind, run.task_id, job_name, at, due, attempt, error=error))

    def _row(
        self, task_id: str, occurrence: datetime, outcome: Outcome, note: str | None
    ) -> RunRecord:
        now = self.clock.now()
        return RunRecord(
            task_id=task_id,
            occurrence_at=occurrence,
            outcome=outcome,
            ended_at=now,
            worker=self.worker,
            lateness=now - occurrence,
            error_message=note,
        )

    def _parked(self, decision: Decision, job_name: str, reason: str | None) -> None:
        reason = reason or decision.park_reason  # the store's, when it found the task damaged
        logger.error("task %r parked: %s", decision.task_id, reason)
        _telemetry.record_outcome(job_name or "unknown", Outcome.PARKED)
        at, due = self.clock.now(), decision.expected_due_at
        event = TaskEvent(EventKind.PARKED, decision.task_id, job_name, at, due, error=reason)
        self.hub.emit(event)

    def _count(
        self,
        kind: EventKind,
        outcome: Outcome,
        decision: Decision,
        descriptor: TaskDescriptor,
        count: int,
    ) -> None:
        _telemetry.record_outcome(descriptor.name, outcome, count=count)
        at, due = self.clock.now(), decision.expected_due_at
        self.hub.emit(TaskEvent(kind, decision.task_id, descriptor.name, at, due, count=count))
