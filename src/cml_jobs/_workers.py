"""The worker registry's client side: who this worker is, and its registration, made when
its engine starts, refreshed by every heartbeat and removed when it stops cleanly.

A worker that crashes stops refreshing, and drops out of ``list_workers`` once its
registration expires: one lease after its last heartbeat.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import logging
import os
import socket
from datetime import datetime

from cml_jobs._execution import Executor
from cml_jobs.exceptions import StoreAccessError, StoreError, StoreUnavailableError
from cml_jobs.stores._base import ScheduleStore
from cml_jobs.stores._ops import OperationsStore, WorkerInfo

__all__ = ["Presence", "worker_id"]

logger = logging.getLogger("cml_jobs.worker")

_ENGINES = itertools.count(1)  # engines started in this process


def worker_id() -> str:
    """A new id for a worker of this process: ``host:pid``, then ``host:pid/2``... for
    further engines in one process (tests run several)."""
    n = next(_ENGINES)
    base = f"{socket.gethostname()}:{os.getpid()}"
    return base if n == 1 else f"{base}/{n}"


def _version() -> str:
    try:
        return importlib.metadata.version("cml-jobs")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source checkout
        return "unknown"


class Presence:
    """This worker's registration in the store's worker registry.

    Args:
        executor: the worker's executor (its id, its runs, its capacity, its clock).
        started_at: when the worker started.
    """

    def __init__(self, executor: Executor, started_at: datetime) -> None:
        self.executor = executor
        self.started_at = started_at
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.version = _version()
        self._damaged = False  # the registry's damage was reported

    def info(self) -> WorkerInfo:
        """The worker as it stands now, registered for one lease."""
        executor = self.executor
        now = executor.clock.now()
        return WorkerInfo(
            id=executor.worker,
            host=self.host,
            pid=self.pid,
            version=self.version,
            started_at=self.started_at,
            heartbeat_at=now,
            expires_at=now + executor.lease,
            running=executor.max_concurrency - executor.room(),
            max_jobs=executor.max_concurrency,
        )

    async def beat(self, store: ScheduleStore | None) -> None:
        """Register or refresh the worker (a store without a registry is left alone).

        A registry whose data is damaged (written around cml-jobs) is reported once and
        never stops the worker: running tasks matters more than being listed.
        """
        if not isinstance(store, OperationsStore):
            return
        try:
            await store.beat(self.info())
        except (StoreAccessError, StoreUnavailableError):
            raise
        except StoreError as exc:
            if not self._damaged:
                logger.error("the worker registry cannot be written (%s); runs go on", exc)
            self._damaged = True

    async def leave(self, store: ScheduleStore) -> None:
        """Remove the worker; a store that cannot be reached lets it expire instead."""
        if not isinstance(store, OperationsStore):
            return
        try:
            await store.leave(self.executor.worker)
        except Exception as exc:  # stopping must go on; the registration expires anyway
            logger.warning("could not remove worker %r from the registry (%s)", store, exc)
