"""What run history costs in Redis: commands per run and bytes per task.

``python -m benchmarks.ops_cost`` starts a throwaway ``redis-server`` on a free port (so
that no other client's commands are counted), runs one task's occurrences through the
engine (an app with a manual clock and ``run_due``, the same claim and finish scripts a
worker uses), and prints:

- Redis commands per run, counted by ``INFO commandstats`` (commands inside scripts
  included), with the round trips (EVALSHA calls) apart;
- the history key's size (``MEMORY USAGE``) after ``--runs`` runs, for successes and for
  failures with a 200-character error message, and the task hash's own size.

A small, quick measurement (seconds), not a benchmark: the lead runs those.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from cml_jobs import (
    BackgroundTaskScheduler,
    RecurrentBackgroundJob,
    RecurrentTaskDescriptor,
    backgroundjob,
)
from cml_jobs.testing import ManualClock, run_due


@backgroundjob(task_type="recurrent")
class CostJob(RecurrentBackgroundJob):
    """Succeeds, or fails with a 200-character message."""

    message: ClassVar[str] = "x" * 200

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    async def run_every(self, *args: object, **kwargs: object) -> None:
        if self.fail:
            raise RuntimeError(CostJob.message)


@asynccontextmanager
async def private_redis() -> AsyncIterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = await asyncio.create_subprocess_exec(
        *("redis-server", "--port", str(port), "--save", "", "--appendonly", "no"),
        stdout=subprocess.DEVNULL,
    )
    try:
        client = aioredis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                await client.ping()
                break
            except (OSError, RedisConnectionError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        await client.aclose()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        await server.wait()


async def commandstats(client: aioredis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def measure(url: str, runs: int, fail: bool) -> dict[str, float]:
    client = aioredis.Redis.from_url(url)
    clock = ManualClock()
    prefix = f"cost{int(fail)}:"
    app = BackgroundTaskScheduler.configure(
        redis_url=url, modules=[__name__], key_prefix=prefix, clock=clock
    )
    async with app:
        await app.bus.schedule_task(
            RecurrentTaskDescriptor(id="t", name="CostJob", data={"fail": fail}, interval=60)
        )
        clock.advance(seconds=60)
        await run_due(app)  # scripts loaded, warm
        before = await commandstats(client)
        for _ in range(runs):
            clock.advance(seconds=60)
            await run_due(app)
        after = await commandstats(client)
        history = await client.memory_usage(f"{prefix}history:t") or 0
        task = await client.memory_usage(f"{prefix}task:t") or 0
    await client.aclose()
    delta = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    delta.pop("info", None)
    total = sum(delta.values())
    return {
        "commands_per_run": total / runs,
        "round_trips_per_run": (delta.get("evalsha", 0) + delta.get("eval", 0)) / runs,
        "lpush_ltrim_per_run": (delta.get("lpush", 0) + delta.get("ltrim", 0)) / runs,
        "history_bytes": history,
        "task_bytes": task,
    }


async def main(runs: int) -> None:
    logging.getLogger("cml_jobs").addHandler(logging.NullHandler())  # the failures' lines
    logging.getLogger("cml_jobs").propagate = False
    async with private_redis() as url:
        for fail in (False, True):
            figures = await measure(url, runs, fail)
            kind = "failures (200-char message)" if fail else "successes"
            print(f"{runs} runs, {kind}:")
            for name, value in figures.items():
                print(f"  {name:<22} {value:,.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=150)
    asyncio.run(main(parser.parse_args().runs))
