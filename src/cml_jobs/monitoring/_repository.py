"""Where workers are kept: a Protocol, an in-memory implementation and a Redis one."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, Protocol, cast, runtime_checkable

from cml_jobs.monitoring._models import CMLWorker

__all__ = ["InMemoryWorkerRepository", "RedisWorkerRepository", "WorkerRepository"]


@runtime_checkable
class WorkerRepository(Protocol):
    """Stores ``CMLWorker`` records by id.

    ``save_async`` inserts or replaces the whole record. ``list_active_async`` returns
    every worker whose status is not TERMINATED, in no particular order.
    ``get_by_id_async`` returns None for an unknown id.
    """

    async def get_by_id_async(self, worker_id: str) -> CMLWorker | None:
        """The worker with this id, or None."""
        ...

    async def list_active_async(self) -> list[CMLWorker]:
        """Every worker that is not terminated."""
        ...

    async def save_async(self, worker: CMLWorker) -> None:
        """Insert or replace ``worker``."""
        ...


class InMemoryWorkerRepository:
    """A ``WorkerRepository`` in a dict: for tests and single-process apps."""

    def __init__(self) -> None:
        self._workers: dict[str, CMLWorker] = {}

    async def get_by_id_async(self, worker_id: str) -> CMLWorker | None:
        """The worker with this id, or None."""
        return self._workers.get(worker_id)

    async def list_active_async(self) -> list[CMLWorker]:
        """Every worker that is not terminated."""
        return [worker for worker in self._workers.values() if worker.active]

    async def save_async(self, worker: CMLWorker) -> None:
        """Insert or replace ``worker``."""
        self._workers[worker.id] = worker


class RedisCommands(Protocol):
    """The redis-py asyncio commands the Redis repository uses.

    ``redis.asyncio.Redis`` (and fakeredis) satisfy it; typing the client structurally
    keeps the ``redis`` import inside ``cml_jobs.stores`` and ``cml_jobs.worker``.
    """

    def get(self, name: str) -> Awaitable[Any]: ...

    def set(self, name: str, value: str) -> Awaitable[Any]: ...

    def mget(self, keys: Sequence[str]) -> Awaitable[Any]: ...

    def smembers(self, name: str) -> Awaitable[Any] | Any: ...

    def sadd(self, name: str, *values: str) -> Awaitable[Any] | Any: ...


# Redis layout (prefix "cml:" by default):
#   {p}worker:{id}  STRING  the worker as a JSON document (pydantic; never pickle, so any
#                           reader can decode it and no stored bytes are ever executed)
#   {p}workers      SET     every worker id, so listing needs no SCAN
class RedisWorkerRepository:
    """A ``WorkerRepository`` in Redis, shared by the app and its workers.

    Args:
        redis: a ``redis.asyncio.Redis`` client (or anything with its ``RedisCommands``).
        prefix: the key prefix.
    """

    def __init__(self, redis: RedisCommands, *, prefix: str = "cml:") -> None:
        self._redis = redis
        self._prefix = prefix

    def _key(self, worker_id: str) -> str:
        return f"{self._prefix}worker:{worker_id}"

    async def get_by_id_async(self, worker_id: str) -> CMLWorker | None:
        """The worker with this id, or None."""
        raw = await self._redis.get(self._key(worker_id))
        return None if raw is None else CMLWorker.model_validate_json(raw)

    async def list_active_async(self) -> list[CMLWorker]:
        """Every worker that is not terminated."""
        index = self._redis.smembers(f"{self._prefix}workers")
        members: set[bytes | str] = await cast("Awaitable[set[bytes | str]]", index)
        ids = sorted(_text(i) for i in members)
        if not ids:
            return []
        documents = await self._redis.mget([self._key(i) for i in ids])
        workers = [CMLWorker.model_validate_json(doc) for doc in documents if doc is not None]
        return [worker for worker in workers if worker.active]

    async def save_async(self, worker: CMLWorker) -> None:
        """Insert or replace ``worker``."""
        # The document first, then the index: a reader never finds an id without its
        # document (list_active_async also skips one, should a save be cut in two).
        await self._redis.set(self._key(worker.id), worker.model_dump_json())
        await cast("Awaitable[int]", self._redis.sadd(f"{self._prefix}workers", worker.id))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
