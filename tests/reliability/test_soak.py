"""Soak (scenario 17, not in CI): ``make soak``.

100 recurrent tasks (every 2 s, runs of 0.5 s, so that a kill catches some mid-way), 3
worker processes, one worker killed with kill -9 at a random moment every 20 s and
replaced; about 10 minutes (``CML_JOBS_SOAK_SECONDS``). Figures: lost occurrences (tasks
that never ran included), duplicates, re-runs, the largest number of keys in Redis.
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

from cml_jobs import Outcome, RecurrentTaskDescriptor, TaskInfo
from cml_jobs._timing import to_ms
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
    """100 tasks every 2 s (0.5 s runs) on 3 workers; a random worker is killed with
    kill -9 every 20 s and replaced: every occurrence that fell due since a task's first
    has exactly one outcome recorded (run, skipped behind a lost run, missed) or a run
    going on, tasks that never ran included; a job body finishes twice only where a kill
    came between its end and its outcome; the key count stays bounded."""
    rng = random.Random(17)
    workers: WorkerFleet = workers_factory(redis_url, key_prefix)
    workers.start(WORKERS)
    await workers.wait_ready(redis_client)
    killed: set[int] = set()
    key_counts: list[int] = []
    async with app_for(redis_url, key_prefix) as app:
        firsts: dict[str, int] = {}  # task id -> its first occurrence (ms)
        for i in range(TASKS):
            info = await app.bus.schedule_task(
                RecurrentTaskDescriptor(
                    id=f"soak-{i:03d}",
                    name="RecordingJob",
                    interval=INTERVAL_S,
                    data={"sleep": RUN_S},
                )
            )
            firsts[info.id] = to_ms(info.next_run_time)  # type: ignore[arg-type]
        started = time.monotonic()
        while time.monotonic() - started < SECONDS:
            await stay_alive(workers, rng.uniform(0.5, 1.5) * KILL_EVERY_S)
            victim = rng.choice(workers.processes)
            victim.send_signal(signal.SIGKILL)
            workers.forget(victim)
            killed.add(victim.pid)
            workers.start(1)
            await workers.wait_ready()  # a worker signalled mid-start would not exit 0
            key_counts.append(
                len([k async for k in redis_client.scan_iter(match=f"{key_prefix}*")])
            )

        async def victims_runs_rerun() -> bool:
            # The runs the last victim had going are re-run (after their lease) and finish.
            starts = await workers.starts(redis_client)
            records = await workers.records(redis_client)
            done = {(r["task"], r["occurrence"]) for r in records}
            cut = {(s["task"], s["occurrence"]) for s in starts if s["pid"] == victim.pid}
            return cut <= done

        await workers.until(victims_runs_rerun, "the last victim's runs were re-run")
        tasks = await app.list_tasks()
        for task in tasks:
            await app.bus.cancel_task(task.id)
    assert workers.stop() == [0] * WORKERS

    records = await workers.records(redis_client)
    runs = Counter((r["task"], r["occurrence"]) for r in records)
    twice = {k for k, n in runs.items() if n > 1}
    # A job body may finish twice in one case only: its worker was killed after the body
    # ended and before the outcome reached the store, so the occurrence was re-run. The
    # store's record of outcomes stays once per occurrence (checked below, exactly).
    by_killed = {(r["task"], r["occurrence"]) for r in records if r["pid"] in killed}
    duplicates = sorted(twice - by_killed)
    balance = {task.id: _balance(task, firsts[task.id]) for task in tasks}
    never_ran = sorted(set(firsts) - {task for task, _ in runs})
    print(
        f"soak {SECONDS:.0f} s: {len(killed)} kills, {len(records)} runs, {len(runs)} "
        f"occurrences, bodies finished twice after a kill {len(twice & by_killed)}, "
        f"other duplicates {len(duplicates)}, lost {-sum(n for n in balance.values() if n < 0)}, "
        f"never ran {len(never_ran)}, tasks {len(tasks)}/{TASKS}, "
        f"keys max {max(key_counts, default=0)} (min {min(key_counts, default=0)}); "
        f"re-runs {sum(1 for r in records if r['attempt'] > 1)}"
    )
    assert len(tasks) == TASKS
    assert duplicates == []
    assert {task: n for task, n in balance.items() if n} == {}, "lost (< 0) or counted twice"
    assert never_ran == []
    assert max(key_counts, default=0) <= 3 * TASKS


def _balance(task: TaskInfo, first_ms: int) -> int:
    """Outcomes recorded (plus runs going on) minus occurrences that fell due, from the
    task's first up to its next run time: 0 when each has exactly one; negative when some
    were lost (a task that never ran too), positive when one was counted twice."""
    assert task.next_run_time is not None, f"{task.id} has no next run time: {task}"
    due = (to_ms(task.next_run_time) - first_ms) // (INTERVAL_S * 1000)
    outcomes = (Outcome.SUCCEEDED, Outcome.SKIPPED, Outcome.MISSED, Outcome.FAILED)
    return sum(task.counts.get(o.value, 0) for o in outcomes) + task.running - due
