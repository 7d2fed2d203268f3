"""The persistence layer: the ``ScheduleStore`` Protocol and its implementations.

``InMemoryScheduleStore`` keeps everything in the process (the embedded default and
tests); ``RedisScheduleStore`` shares tasks between processes and hosts. A new store
(MongoDB, say) implements the Protocol and passes ``tests/stores/test_contract.py``; it
may also implement ``OperationsStore`` (run history, the worker registry, extra runs), as
both built-in stores do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
    ScheduleStore,
    TaskState,
)
from cml_jobs.stores._ops import OperationsStore, RunRecord, WorkerInfo
from cml_jobs.stores.memory import InMemoryScheduleStore

if TYPE_CHECKING:
    from cml_jobs.stores.redis import RedisScheduleStore

__all__ = [
    "ClaimResult",
    "ClaimStatus",
    "ClaimedRun",
    "Decision",
    "DueBatch",
    "DueTask",
    "Finish",
    "InMemoryScheduleStore",
    "NewTask",
    "OperationsStore",
    "Outcome",
    "RedisScheduleStore",
    "Run",
    "RunRecord",
    "ScheduleStore",
    "TaskState",
    "WorkerInfo",
]


def __getattr__(name: str) -> object:
    # The Redis store imports redis; keep that import out of the memory-only path.
    if name == "RedisScheduleStore":
        from cml_jobs.stores.redis import RedisScheduleStore

        return RedisScheduleStore
    raise AttributeError(f"module 'cml_jobs.stores' has no attribute {name!r}")
