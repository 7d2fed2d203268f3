"""Batched outcome records: the runs that end in one turn of the event loop share one call."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

from cml_jobs.stores._base import Finish, ScheduleStore

__all__ = ["FinishBatcher"]


class FinishBatcher:
    """Records finishes through ``ScheduleStore.finish_many``.

    The first finish starts a flush after ``window`` (at least one turn of the event
    loop), and every finish submitted meanwhile rides along: under load, one store call
    records many runs.

    Args:
        store: the store.
        window: how long a flush waits for company; seconds of it delay only the record,
            never the next run.
    """

    def __init__(self, store: ScheduleStore, window: timedelta = timedelta(0)) -> None:
        self.store = store
        self.window = window.total_seconds()
        self._pending: list[tuple[Finish, asyncio.Future[bool]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def finish(self, finish: Finish) -> bool:
        """Record ``finish``; True if the store accepted it (its fence was still valid)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((finish, future))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        # The shield keeps a cancelled run from cancelling the flush that serves others.
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        while self._pending:
            await asyncio.sleep(self.window)  # let the runs ending meanwhile join the batch
            batch, self._pending = self._pending, []
            try:
                results = await self.store.finish_many([finish for finish, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    with contextlib.suppress(asyncio.InvalidStateError):
                        future.set_exception(exc)
                continue
            for (_, future), recorded in zip(batch, results, strict=True):
                with contextlib.suppress(asyncio.InvalidStateError):
                    future.set_result(recorded)
