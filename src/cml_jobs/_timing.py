"""The clock: the only place in cml-jobs that reads the time."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock", "from_ms", "to_ms"]


@runtime_checkable
class Clock(Protocol):
    """Tells the time. Inject one to control time in tests (``cml_jobs.testing.ManualClock``)."""

    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait until ``seconds`` have passed on this clock (at once for 0 or less)."""
        ...


class SystemClock:
    """The real time."""

    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        return datetime.now(timezone.utc)

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of real time."""
        await asyncio.sleep(max(seconds, 0))

    def __repr__(self) -> str:
        return "SystemClock()"


def to_ms(at: datetime) -> int:
    """Epoch milliseconds, the form in which times cross Redis and arq."""
    return int(at.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    """An aware UTC datetime from epoch milliseconds."""
    return datetime.fromtimestamp(ms / 1000, timezone.utc)
