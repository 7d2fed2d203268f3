"""The persistence layer: the ``ScheduleStore`` Protocol and its implementations.

``InMemoryScheduleStore`` keeps everything in the process (the embedded default and
tests); ``RedisScheduleStore`` and ``PostgresScheduleStore`` share tasks between
processes and hosts. A new store (MongoDB, say) implements the Protocol and passes
``tests/stores/test_contract.py``. Capabilities beyond the contract are Protocols of their
own: ``OperationsStore`` (run history, the worker registry, extra runs; every store here),
``WakeupSource`` and ``TransactionalStore`` (PostgreSQL).
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
    TransactionalStore,
    WakeupSource,
)
from cml_jobs.stores._bulk import AddResult, BulkScheduleStore
from cml_jobs.stores._ops import OperationsStore, RunRecord, WorkerInfo
from cml_jobs.stores.memory import InMemoryScheduleStore

if TYPE_CHECKING:
    from cml_jobs.stores.postgres import PostgresScheduleStore
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
    "OperationsStore",
    "Outcome",
    "PostgresScheduleStore",
    "RedisScheduleStore",
    "Run",
    "RunRecord",
    "ScheduleStore",
    "TaskState",
    "TransactionalStore",
    "WakeupSource",
    "WorkerInfo",
]


def __getattr__(name: str) -> object:
    # The Redis and PostgreSQL stores import their drivers; keep those imports out of the
    # memory-only path.
    if name == "RedisScheduleStore":
        from cml_jobs.stores.redis import RedisScheduleStore

        return RedisScheduleStore
    if name == "PostgresScheduleStore":
        from cml_jobs.stores.postgres import PostgresScheduleStore

        return PostgresScheduleStore
    raise AttributeError(f"module 'cml_jobs.stores' has no attribute {name!r}")
