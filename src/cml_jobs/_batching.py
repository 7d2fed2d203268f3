"""Batched store calls: the runs that start, or end, close together share one call."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Generic, TypeVar

__all__ = ["Batcher"]

T = TypeVar("T")


class Batcher(Generic[T]):
    """Gathers items and hands them to one call that answers True or False for each.

    The first item starts a flush after ``window`` (at least one turn of the event loop),
    and every item submitted meanwhile rides along: under load, one store call serves
    many runs; alone, an item waits one loop turn (plus the window).

    Args:
        call: answers one bool per item, in order (``finish_many``, ``extend``...).
        window: how long a flush waits for company.
    """

    def __init__(
        self, call: Callable[[Sequence[T]], Awaitable[list[bool]]], window: timedelta
    ) -> None:
        self.call = call
        self.window = window.total_seconds()
        self._pending: list[tuple[T, asyncio.Future[bool]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> bool:
        """Hand ``item`` to the next call; its answer."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        # A cancelled run cancels only its own future: the flush serves the others, and
        # still records this item.
        return await future

    async def _flush(self) -> None:
        while self._pending:
            await asyncio.sleep(self.window)  # let the items arriving meanwhile join
            batch, self._pending = self._pending, []
            try:
                answers = await self.call([item for item, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    with contextlib.suppress(asyncio.InvalidStateError):
                        future.set_exception(exc)
                continue
            for (_, future), answer in zip(batch, answers, strict=True):
                with contextlib.suppress(asyncio.InvalidStateError):
                    future.set_result(answer)
