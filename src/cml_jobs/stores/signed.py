"""Signed descriptors: an HMAC-SHA256 over each stored descriptor, with a key kept out of Redis.

``SignedScheduleStore`` wraps any store. It signs every descriptor it adds and checks the
signature of every descriptor it hands out: whoever can write to Redis but lacks the key
cannot make a worker run anything. A descriptor whose signature does not match (tampered
with, or signed with another key) is parked with that reason, never run.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from cml_jobs.stores._base import (
    ClaimResult,
    Decision,
    DueBatch,
    DueTask,
    Finish,
    NewTask,
    Outcome,
    Run,
    ScheduleStore,
    StartedRun,
    TaskState,
)

__all__ = ["SignedScheduleStore"]

_PREFIX = "hmac-sha256:"


class SignedScheduleStore:
    """A ``ScheduleStore`` that signs descriptors on the way in and checks them on the way out.

    Args:
        inner: the store that keeps the data.
        key: the signing key (``CML_JOBS_SIGNING_KEY``); the app and every worker need
            the same one.
    """

    def __init__(self, inner: ScheduleStore, key: str | bytes) -> None:
        self.inner = inner
        self._key = key.encode() if isinstance(key, str) else key

    def __repr__(self) -> str:
        return f"SignedScheduleStore({self.inner!r})"  # never the key

    def _sign(self, text: str) -> str:
        mac = hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()
        return f"{_PREFIX}{mac}:{text}"

    def _open(self, stored: str) -> str | None:
        """The descriptor text, or None when the signature is missing or wrong."""
        if not stored.startswith(_PREFIX):
            return None
        mac, _, text = stored[len(_PREFIX) :].partition(":")
        expected = hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()
        return text if hmac.compare_digest(mac, expected) else None

    async def _reject(self, task_id: str) -> None:
        await self.inner.park(
            task_id,
            "the descriptor's signature does not match: it was written without the signing "
            "key (tampered with, or signed with another key); reschedule it from the app",
        )

    # -- reads that hand descriptors out: checked ----------------------------------

    async def poll(self, now: datetime, limit: int) -> DueBatch:
        batch = await self.inner.poll(now, limit)
        return DueBatch(await self._checked(batch.tasks), batch.next_ready_at)

    async def due(self, now: datetime, limit: int) -> builtins.list[DueTask]:
        return await self._checked(await self.inner.due(now, limit))

    async def _checked(self, tasks: Sequence[DueTask]) -> builtins.list[DueTask]:
        good = []
        for task in tasks:
            text = self._open(task.descriptor_json)
            if text is None:
                await self._reject(task.task_id)
            else:
                good.append(replace(task, descriptor_json=text))
        return good

    async def start(self, run: Run, *, now: datetime, lease_until: datetime) -> StartedRun | None:
        started = await self.inner.start(run, now=now, lease_until=lease_until)
        if started is None:
            return None
        text = self._open(started.descriptor_json)
        if text is None:
            await self._reject(run.task_id)
            return None
        return replace(started, descriptor_json=text)

    async def get(self, task_id: str) -> TaskState | None:
        state = await self.inner.get(task_id)
        return None if state is None else self._shown(state)

    async def list(self) -> builtins.list[TaskState]:
        return [self._shown(state) for state in await self.inner.list()]

    def _shown(self, state: TaskState) -> TaskState:
        # An unverified descriptor is shown as unreadable rather than trusted.
        return replace(state, descriptor_json=self._open(state.descriptor_json) or "")

    # -- writes: signed ----------------------------------------------------------------

    async def add(self, task: NewTask, *, replace: bool) -> bool:
        signed = NewTask(
            task.task_id,
            self._sign(task.descriptor_json),
            task.due_at,
            task.ready_at,
            task.trace_context,
        )
        return await self.inner.add(signed, replace=replace)

    # -- everything else passes through ------------------------------------------------

    async def remove(self, task_id: str) -> int | None:
        return await self.inner.remove(task_id)

    async def set_paused(
        self, task_id: str, *, paused: bool, due_at: datetime | None, ready_at: datetime | None
    ) -> bool:
        return await self.inner.set_paused(task_id, paused=paused, due_at=due_at, ready_at=ready_at)

    async def park(self, task_id: str, reason: str) -> bool:
        return await self.inner.park(task_id, reason)

    async def generation(self) -> str:
        return await self.inner.generation()

    async def next_ready_at(self) -> datetime | None:
        return await self.inner.next_ready_at()

    async def claim(
        self, decisions: Sequence[Decision], *, now: datetime, lease_until: datetime
    ) -> builtins.list[ClaimResult]:
        return await self.inner.claim(decisions, now=now, lease_until=lease_until)

    async def reclaim_expired(
        self, *, now: datetime, lease_until: datetime, limit: int
    ) -> builtins.list[Run]:
        return await self.inner.reclaim_expired(now=now, lease_until=lease_until, limit=limit)

    async def confirm(self, runs: Sequence[Run]) -> builtins.list[bool]:
        return await self.inner.confirm(runs)

    async def extend(self, runs: Sequence[Run], *, lease_until: datetime) -> builtins.list[bool]:
        return await self.inner.extend(runs, lease_until=lease_until)

    async def finish(
        self,
        run: Run,
        outcome: Outcome,
        *,
        now: datetime,
        error: str | None = None,
        end_task: bool = False,
        started_at: datetime | None = None,
    ) -> bool:
        return await self.inner.finish(
            run, outcome, now=now, error=error, end_task=end_task, started_at=started_at
        )

    async def finish_many(self, finishes: Sequence[Finish]) -> builtins.list[bool]:
        return await self.inner.finish_many(finishes)
