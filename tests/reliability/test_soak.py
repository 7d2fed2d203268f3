"""Soak (scenario 17, not in CI): ``make soak``.

100 recurrent tasks (every 2 s, 0.5 s runs), 3 worker processes, one worker killed with
kill -9 at a random moment every 20 s and replaced; about 10 minutes
(``CML_JOBS_SOAK_SECONDS``). Figures: lost occurrences, duplicates, the largest number of
keys in Redis.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis

from cml_jobs import Outcome, RecurrentTaskDescriptor
from tests.reliability.conftest import app_for, stay_alive
from tests.workers import WorkerFleet

pytestmark = [pytest.mark.soak, pytest.mark.reliability, pytest.mark.redis]

TASKS = 100
INTERVAL_S = 2
WORKERS = 3
KILL_EVERY_S = 20.0
RUN_S = 0.5  # each run takes this long, so that a kill catches runs mid-way
SECONDS = float(os.environ.get("CML_JOBS_SOAK_SECONDS", "600"))


async def test_soak_random_kill_9_every_20s_loses_and_duplicates_nothing(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str, workers_factory: Any
) -> None:
    """100 tasks every 2 s on 3 workers; a random worker is killed with kill -9 every 20 s
    and replaced: no occurrence runs twice, every occurrence that fell due is accounted for
    (run, skipped behind a lost run, or missed), the key count stays bounded."""
    rng = random.Random(17)
    workers: WorkerFleet = workers_factory(redis_url, key_prefix)
    workers.start(WORKERS)
    await workers.wait_ready(redis_client)
    kills = 0
    key_counts: list[int] = []
    async with app_for(redis_url, key_prefix) as app:
        for i in range(TASKS):
            await app.bus.schedule_task(
                RecurrentTaskDescriptor(
                    id=f"soak-{i:03d}", name="RecordingJob", interval=INTERVAL_S
                )
            )
        started = time.monotonic()
        while time.monotonic() - started < SECONDS:
            await stay_alive(workers, rng.uniform(0.5, 1.5) * KILL_EVERY_S)
            victim = rng.choice(workers.processes)
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            workers.processes.remove(victim)
            workers.logs.pop(victim.pid).close()
            workers.start(1)
            kills += 1
            key_counts.append(
                len([k async for k in redis_client.scan_iter(match=f"{key_prefix}*")])
            )
        await stay_alive(workers, 5)  # the last victim's runs are re-run
        tasks = await app.list_tasks()
        for task in tasks:
            await app.bus.cancel_task(task.id)
    assert workers.stop() == [0] * WORKERS

    records = await workers.records(redis_client)
    runs = Counter((r["task"], r["occurrence"]) for r in records)
    duplicates = [k for k, n in runs.items() if n > 1]
    accounted = {
        t.id: sum(
            t.counts.get(o.value, 0)
            for o in (Outcome.SUCCEEDED, Outcome.SKIPPED, Outcome.MISSED, Outcome.FAILED)
        )
        + t.running
        for t in tasks
    }
    lost = 0
    for task in tasks:
        ran = [o for (tid, o) in runs if tid == task.id]
        if ran and task.next_run_time is not None:
            due = (int(task.next_run_time.timestamp() * 1000) - min(ran)) // (INTERVAL_S * 1000)
            lost += max(due - accounted[task.id], 0)
    print(
        f"soak {SECONDS:.0f} s: {kills} kills, {len(records)} runs, {len(runs)} occurrences, "
        f"duplicates {len(duplicates)}, lost {lost}, tasks {len(tasks)}/{TASKS}, "
        f"keys max {max(key_counts, default=0)} (min {min(key_counts, default=0)}); "
        f"re-runs {sum(1 for r in records if r['attempt'] > 1)}"
    )
    assert len(tasks) == TASKS
    assert duplicates == []
    assert lost == 0
    assert max(key_counts, default=0) <= 3 * TASKS
