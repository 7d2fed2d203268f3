"""What a health check finds wrong in the Redis store's data (``damaged_keys``).

The scripts park a task whose fields cannot be used; what they cannot park (a task key
that holds no hash, a shared key of the wrong type) is only reported, once, by the worker
that meets it. This looks for all of it at once, for ``cml-jobs check``.
"""

from __future__ import annotations

import redis.asyncio

from cml_jobs.stores._redis_codec import glob_escape, text

__all__ = ["damaged_keys"]

#: The store's shared keys and the type each must have (see the layout in ``redis.py``).
_SHARED = {
    "due": "zset",
    "runs": "zset",
    "fence": "string",
    "generation": "string",
    "workers": "hash",
}


async def damaged_keys(client: redis.asyncio.Redis, prefix: str) -> list[str]:
    """One line per key under ``prefix`` that the store cannot read: a shared key of the
    wrong type (or a fence that is not a number), a task key that holds no hash, a task
    hash without a descriptor. Empty when all is readable."""
    task_prefix = f"{prefix}task:"
    tasks = [text(k) async for k in client.scan_iter(glob_escape(task_prefix) + "*", count=1000)]
    shared = [f"{prefix}{name}" for name in _SHARED]
    async with client.pipeline(transaction=False) as pipe:
        for key in [*shared, *tasks]:
            pipe.type(key)
        for key in tasks:
            pipe.hexists(key, "descriptor")
        pipe.get(f"{prefix}fence")
        found = await pipe.execute(raise_on_error=False)
    kinds = [text(kind) for kind in found[: len(shared) + len(tasks)]]
    has_descriptor = found[len(shared) + len(tasks) : -1]
    lines = [
        f"{key}: holds a {kind} where cml-jobs keeps a {wanted}; restore it from a backup"
        for key, kind, wanted in zip(shared, kinds[: len(shared)], _SHARED.values(), strict=True)
        if kind not in ("none", wanted)
    ]
    fence = found[-1]
    if isinstance(fence, bytes | str) and not text(fence).lstrip("-").isdigit():
        lines.append(f"{prefix}fence: holds {text(fence)[:40]!r}, not a whole number")
    for key, kind, described in zip(tasks, kinds[len(shared) :], has_descriptor, strict=True):
        task_id = key[len(task_prefix) :]
        if kind != "hash":
            lines.append(
                f"task {task_id!r}: its key holds a {kind}, not a task, so it cannot even be "
                "parked; delete the key, then reschedule the task from the app"
            )
        elif not described:
            lines.append(f"task {task_id!r}: has no descriptor; reschedule it from the app")
    return lines
