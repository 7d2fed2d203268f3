"""The persistence layer: the ``ScheduleStore`` Protocol and its implementations.

``InMemoryScheduleStore`` keeps everything in the process (the embedded default and
tests); ``RedisScheduleStore`` shares tasks between processes and hosts. A new store
(MongoDB, say) implements the Protocol and passes ``tests/stores/test_contract.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cml_jobs.stores._base import (
    ClaimResult,
    ClaimStatus,
    Decision,
    DueTask,
    Finish,
    NewTask,
    Outcome,
    Run,
    ScheduleStore,
    StartedRun,
    TaskState,
)
from cml_jobs.stores.memory import InMemoryScheduleStore

if TYPE_CHECKING:
    from cml_jobs.stores.redis import RedisScheduleStore

__all__ = [
    "ClaimResult",
    "ClaimStatus",
    "Decision",
    "DueTask",
    "Finish",
    "InMemoryScheduleStore",
    "NewTask",
    "Outcome",
    "RedisScheduleStore",
    "Run",
    "ScheduleStore",
    "StartedRun",
    "TaskState",
]


def __getattr__(name: str) -> object:
    # The Redis store imports redis; keep that import out of the memory-only path.
    if name == "RedisScheduleStore":
        from cml_jobs.stores.redis import RedisScheduleStore

        return RedisScheduleStore
    raise AttributeError(f"module 'cml_jobs.stores' has no attribute {name!r}")
