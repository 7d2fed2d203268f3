"""The Redis store's side of ``BulkScheduleStore``: many tasks added or removed in one
script call (see the key layout at the top of ``redis.py``).

The scripts are the single-task ``ADD`` and ``REMOVE`` run once per task of the batch, so
a batch treats each task exactly as ``add`` and ``remove`` treat one, in one atomic step;
``CHECKS`` runs once, before the first task.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis.asyncio
from redis.commands.core import AsyncScript

from cml_jobs.stores._bulk import AddResult
from cml_jobs.stores._records import NewTask
from cml_jobs.stores._redis_codec import add_args, add_result, removed
from cml_jobs.stores._redis_scripts import ADD, REMOVE

__all__ = ["RedisBulk", "each"]


def each(body: str, stride: int) -> str:
    """A script running a one-task script's ``body`` (ARGV: prefix, then the task's
    ``stride`` arguments) per task of ARGV[2], the batch as JSON (one argument: redis-py
    packs each in Python)."""
    task = ", ".join(f"t[{k}]" for k in range(1, stride + 1))
    return (
        f"local function one(ARGV)\n{body}\nend\nlocal out = {{}}\n"
        "for _, t in ipairs(cjson.decode(ARGV[2])) do\n"
        f"  out[#out + 1] = one({{ARGV[1], {task}}})\nend\nreturn out\n"
    )


class RedisBulk:
    """``add_many`` and ``remove_many`` for ``RedisScheduleStore``."""

    _redis: redis.asyncio.Redis
    _history_prefix: str

    if TYPE_CHECKING:  # the store's

        async def _call(self, script: AsyncScript, *args: str) -> Any: ...

    def _register_bulk(self, lib: str) -> None:
        """Register the batch scripts; ``lib`` holds ``LIB`` and ``CHECKS``."""
        script = self._redis.register_script
        self._add_many = script(lib + each(ADD, 7))  # id ... history key
        self._remove_many = script(lib + each(REMOVE, 2))  # id, history key

    async def add_many(
        self, tasks: Sequence[NewTask], *, replace: bool
    ) -> builtins.list[AddResult]:
        if not tasks:
            return []
        args = [add_args(task, replace, self._history_prefix) for task in tasks]
        return [add_result(code) for code in await self._call(self._add_many, json.dumps(args))]

    async def remove_many(self, task_ids: Sequence[str]) -> builtins.list[int | None]:
        if not task_ids:
            return []
        args = [[task_id, self._history_prefix + task_id] for task_id in task_ids]
        return [removed(n) for n in await self._call(self._remove_many, json.dumps(args))]
