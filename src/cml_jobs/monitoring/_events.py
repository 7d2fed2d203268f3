"""What the monitoring job tells the app when a worker's record changes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from cml_jobs.monitoring._models import CMLWorker

__all__ = ["WorkerChange", "WorkerEvents"]

logger = logging.getLogger("cml_jobs.monitoring")


@dataclass(frozen=True)
class WorkerChange:
    """One update of a worker's record.

    Attributes:
        previous: the record before the update.
        current: the record after it.
        changed: the names of the fields whose value changed (``updated_at`` excluded).
    """

    previous: CMLWorker
    current: CMLWorker
    changed: tuple[str, ...]

    @classmethod
    def between(cls, previous: CMLWorker, current: CMLWorker) -> WorkerChange:
        """The change from ``previous`` to ``current``."""
        before, after = previous.model_dump(), current.model_dump()
        changed = tuple(
            name for name in after if name != "updated_at" and before[name] != after[name]
        )
        return cls(previous, current, changed)


WorkerChangeCallback = Callable[[WorkerChange], object]


class WorkerEvents:
    """Hands each ``WorkerChange`` to the callbacks subscribed in this process."""

    def __init__(self) -> None:
        self._callbacks: list[WorkerChangeCallback] = []

    def subscribe(self, callback: WorkerChangeCallback) -> Callable[[], None]:
        """Call ``callback`` with every change from now on.

        Returns:
            A function that unsubscribes it.
        """
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback)

    def emit(self, change: WorkerChange) -> None:
        """Log ``change`` and hand it to every subscriber."""
        logger.info("worker %s: %s", change.current.id, ", ".join(change.changed) or "no change")
        for callback in list(self._callbacks):
            try:
                callback(change)
            except Exception:  # one broken observer must not fail the monitoring run
                logger.exception("worker change callback %r failed", callback)
