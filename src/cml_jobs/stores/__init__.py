"""The persistence layer: the ``ScheduleStore`` Protocol and its implementations.

``InMemoryScheduleStore`` keeps everything in the process (the embedded default and
tests); ``RedisScheduleStore`` shares tasks between processes and hosts. A new store
(MongoDB, say) implements the Protocol and passes ``tests/stores/test_contract.py``.
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
from cml_jobs.stores._bulk import AddResult, BulkScheduleStore
from cml_jobs.stores.memory import InMemoryScheduleStore

if TYPE_CHECKING:
    from cml_jobs.stores.redis import RedisScheduleStore

__all__ = [
    "AddResult",
    "BulkScheduleStore",
    "ClaimResult",
    "ClaimStatus",
    "ClaimedRun",
    "Decision",
    "DueBatch",
    "DueTask",
    "Finish",
    "InMemoryScheduleStore",
    "NewTask",
    "Outcome",
    "RedisScheduleStore",
    "Run",
    "ScheduleStore",
    "TaskState",
]


def __getattr__(name: str) -> object:
    # The Redis store imports redis; keep that import out of the memory-only path.
    if name == "RedisScheduleStore":
        from cml_jobs.stores.redis import RedisScheduleStore

        return RedisScheduleStore
    raise AttributeError(f"module 'cml_jobs.stores' has no attribute {name!r}")
