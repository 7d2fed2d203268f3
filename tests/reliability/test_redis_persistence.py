"""Redis killed with kill -9 under 200 tasks, with and without persistence (scenario 8).

Each test runs its own ``redis-server`` on a free port (``conftest.RedisServer``); two
worker processes run 200 recurrent tasks; Redis is killed, left down for 3 s and started
again on the same port.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from typing import Any

import pytest

from cml_jobs import RecurrentTaskDescriptor
from tests.reliability.conftest import RedisServer, alive, app_for, needs_redis_server, stay_alive
from tests.workers import WorkerFleet

pytestmark = [pytest.mark.reliability, pytest.mark.redis, needs_redis_server]

TASKS = 200
INTERVAL_S = 2


def _descriptors() -> list[RecurrentTaskDescriptor]:
    return [
        RecurrentTaskDescriptor(id=f"t{i:03d}", name="RecordingJob", interval=INTERVAL_S)
        for i in range(TASKS)
    ]


async def _schedule_all(url: str) -> None:
    async with app_for(url) as app:
        for descriptor in _descriptors():
            await app.bus.schedule_task(descriptor)


async def _task_ids(url: str) -> set[str]:
    async with app_for(url) as app:
        return {t.id for t in await app.list_tasks()}


async def _crash_redis(server: RedisServer, workers: WorkerFleet) -> int:
    """kill -9 Redis, keep it down 3 s, start it again; returns when it was back (ms)."""
    server.stop(signal.SIGKILL)
    await stay_alive(workers, 3)
    await server.start()
    return int(time.time() * 1000)


async def test_redis_killed_with_aof_always_loses_no_task_and_runs_nothing_twice(
    server_factory: Any, client_factory: Any, workers_factory: Any
) -> None:
    """AOF with appendfsync always: after kill -9 and a restart all 200 tasks are there,
    every one runs again, and no occurrence ran twice across the gap."""
    server: RedisServer = server_factory(persist=True)
    await server.start()
    client = client_factory(server.url)
    workers: WorkerFleet = workers_factory(server.url)
    workers.start(2)
    await workers.wait_ready(client)
    await _schedule_all(server.url)
    await stay_alive(workers, 5)
    up_at = await _crash_redis(server, workers)
    kept = await _task_ids(server.url)
    await stay_alive(workers, 6)
    assert alive(workers) == [None, None]
    assert workers.stop() == [0, 0]

    records = await workers.records(client)
    runs = Counter((r["task"], r["occurrence"]) for r in records)
    resumed = {r["task"] for r in records if r["start"] > up_at}
    print(
        f"AOF always: {len(kept)}/{TASKS} tasks after the restart; {len(records)} runs, "
        f"max per occurrence {max(runs.values())}; {len(resumed)} tasks ran after it"
    )
    assert len(kept) == TASKS, f"lost {TASKS - len(kept)} tasks"
    assert max(runs.values()) == 1, [k for k, n in runs.items() if n > 1][:5]
    assert len(resumed) == TASKS, f"{TASKS - len(resumed)} tasks did not run after the restart"


async def test_redis_killed_without_persistence_loses_tasks_and_redeclared_ones_run_at_once(
    server_factory: Any, client_factory: Any, workers_factory: Any
) -> None:
    """No persistence: kill -9 loses every task, and each worker says so in its log; no
    worker exits; the 200 tasks, declared again, run within one interval plus one poll."""
    server: RedisServer = server_factory(persist=False)
    await server.start()
    client = client_factory(server.url)
    workers: WorkerFleet = workers_factory(server.url)
    workers.start(2)
    await workers.wait_ready(client)
    await _schedule_all(server.url)
    await stay_alive(workers, 3)
    await _crash_redis(server, workers)
    kept = await _task_ids(server.url)
    redeclared_at = int(time.time() * 1000)
    await _schedule_all(server.url)
    await stay_alive(workers, INTERVAL_S + 2)
    logs = "\n".join(workers.stderr(p) for p in workers.processes)
    assert workers.stop() == [0, 0]

    records = await workers.records(client)  # the old records died with Redis
    first = {}
    for record in records:
        first.setdefault(record["task"], record["start"])
    delays = sorted((start - redeclared_at) / 1000 for start in first.values())
    mentions = [line for line in logs.splitlines() if "lost" in line.lower()]
    print(
        f"no persistence: {len(kept)}/{TASKS} tasks after the restart; re-declared: "
        f"{len(first)} ran, first runs {delays[0]:.2f}-{delays[-1]:.2f} s after; "
        f"worker log lines about the loss: {len(mentions)}"
    )
    assert kept == set(), "tasks survived a restart without persistence"
    assert len(first) == TASKS
    assert delays[-1] <= INTERVAL_S + 1.5
    assert max(Counter((r["task"], r["occurrence"]) for r in records).values()) == 1
    assert len([m for m in mentions if "lost its data" in m]) >= 2, "a worker did not report it"
