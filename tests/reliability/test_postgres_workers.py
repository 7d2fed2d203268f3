"""Worker processes on the PostgreSQL store: ``arq cml_jobs.WorkerSettings`` with
``CML_JOBS_STORE_URL`` set (arq and the recording jobs still use the test Redis; with the
default ``dispatch=local`` no run goes through arq's queue).

Three workers share 1 s tasks for 20 s; a worker is killed mid-run; a PostgreSQL cluster
of the test's own is stopped for 5 s under load and started again, or comes up only after
the workers started. Workers run with a
3 s lease and a 0.5 s poll (``tests.workers``); every wait is a condition with a deadline.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from cml_jobs import Outcome, RecurrentTaskDescriptor, TaskInfo
from cml_jobs._timing import to_ms
from tests.reliability.conftest import (
    INTERVAL_MS,
    alive,
    app_for,
    per_occurrence,
    stay_alive,
    wait_for_occurrences,
)
from tests.reliability.postgres_server import PostgresServer
from tests.workers import WorkerFleet

pytestmark = [pytest.mark.reliability, pytest.mark.redis, pytest.mark.postgres]

#: Lease, then a reclaim look (once a second) and a poll, then a busy machine's second.
RERUN_WITHIN_S = 3.0 + 1.0 + 0.5 + 1.0


@pytest.fixture
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    yield server
    server.close()


def _on_grid(runs: dict[int, int], first: int) -> bool:
    return sorted(runs) == list(range(first, max(runs) + 1, INTERVAL_MS))


async def test_three_workers_run_every_occurrence_of_1s_tasks_once_for_20s(
    redis_client: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
    postgres_url: str,
    workers_factory: Any,
) -> None:
    """Three worker processes on one PostgreSQL store, three 1 s tasks, 20 s: every
    occurrence runs exactly once, none is missing, and every outcome is recorded."""
    workers: WorkerFleet = workers_factory(
        redis_url, key_prefix, settings={"CML_JOBS_STORE_URL": postgres_url}
    )
    workers.start(3)
    await workers.wait_ready(redis_client)
    ids = ["a", "b", "c"]
    async with app_for(redis_url, key_prefix, store_url=postgres_url) as app:
        firsts = {}
        for task_id in ids:
            info = await app.bus.schedule_task(
                RecurrentTaskDescriptor(id=task_id, name="RecordingJob", interval=1)
            )
            firsts[task_id] = to_ms(info.next_run_time)  # type: ignore[arg-type]
        for task_id in ids:
            await wait_for_occurrences(workers, client=redis_client, task=task_id, count=20)
        states = {task_id: await app.bus.get_task(task_id) for task_id in ids}
        for task_id in ids:
            await app.bus.cancel_task(task_id)
    assert alive(workers) == [None, None, None]
    assert workers.stop() == [0, 0, 0]

    records = await workers.records(redis_client)
    print(f"{len(records)} runs by {len({r['pid'] for r in records})} worker(s)")
    for task_id in ids:
        runs = per_occurrence(records, task_id)
        assert set(runs.values()) == {1}, f"{task_id}: duplicates {runs.most_common(3)}"
        assert _on_grid(runs, firsts[task_id]), f"{task_id}: an occurrence is missing"
        assert len(runs) >= 20
        counts = states[task_id].counts
        assert Outcome.FAILED.value not in counts, counts
        assert counts.get(Outcome.SUCCEEDED.value, 0) >= 19, counts


async def test_a_run_killed_mid_way_is_rerun_on_the_postgres_store(
    redis_client: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
    postgres_url: str,
    workers_factory: Any,
) -> None:
    """kill -9 the worker running a 2 s job: the other worker re-runs the occurrence once,
    as attempt 2, once the lease has expired."""
    workers: WorkerFleet = workers_factory(
        redis_url, key_prefix, settings={"CML_JOBS_STORE_URL": postgres_url}
    )
    workers.start(2)
    await workers.wait_ready(redis_client)
    async with app_for(redis_url, key_prefix, store_url=postgres_url) as app:
        start_at = app.clock.now() + timedelta(seconds=0.5)
        await app.bus.schedule_task(
            RecurrentTaskDescriptor(
                id="slow", name="RecordingJob", interval=30, start_at=start_at, data={"sleep": 2}
            )
        )
        first = await workers.until(lambda: workers.starts(redis_client), "the run started")
        victim = first[0]["pid"]
        os.kill(victim, signal.SIGKILL)
        killed_at = int(time.time() * 1000)
        workers.forget(next(p for p in workers.processes if p.pid == victim))

        async def recorded() -> TaskInfo | None:
            state = await app.bus.get_task("slow")
            return state if state.counts.get(Outcome.SUCCEEDED.value) else None

        state = await workers.until(recorded, "the re-run's outcome was recorded")
        await app.bus.cancel_task("slow")
    records = await workers.records(redis_client)
    [rerun] = records
    rerun_after = (rerun["start"] - killed_at) / 1000
    print(f"re-run {rerun_after:.2f} s after the kill")
    assert (rerun["attempt"], rerun["occurrence"]) == (2, first[0]["occurrence"])
    assert rerun["pid"] != victim
    assert rerun_after <= RERUN_WITHIN_S, f"re-run only after {rerun_after:.2f} s"
    assert state.counts == {Outcome.SUCCEEDED.value: 1}
    assert alive(workers) == [None]


async def test_a_postgres_outage_under_load_loses_no_task_and_no_worker(
    redis_client: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
    pg_server: PostgresServer,
    workers_factory: Any,
) -> None:
    """The cluster crashes (pg_ctl stop -m immediate) for 5 s while three workers run ten
    1 s tasks: no worker exits, every task is still there afterwards and runs on its grid
    again, and no occurrence runs twice unless its run was going when the cluster went
    away and was re-run."""
    await pg_server.start()
    store_url = f"{pg_server.url}?schema=outage"
    workers: WorkerFleet = workers_factory(
        redis_url, key_prefix, settings={"CML_JOBS_STORE_URL": store_url}
    )
    workers.start(3)
    await workers.wait_ready(redis_client)
    ids = [f"t{i}" for i in range(10)]
    async with app_for(redis_url, key_prefix, store_url=store_url) as app:
        for task_id in ids:
            await app.bus.schedule_task(
                RecurrentTaskDescriptor(id=task_id, name="RecordingJob", interval=1)
            )
    await wait_for_occurrences(workers, redis_client, "t9", 3)

    pg_server.stop("immediate")
    down_at = int(time.time() * 1000)
    await stay_alive(workers, 5.0)
    await pg_server.start()
    up_at = int(time.time() * 1000)

    async def all_resumed() -> bool:
        records = await workers.records(redis_client)
        return all(len([o for o in per_occurrence(records, t) if o > up_at]) >= 3 for t in ids)

    await workers.until(all_resumed, "every task ran 3 occurrences after the restart")
    async with app_for(redis_url, key_prefix, store_url=store_url) as app:
        tasks = {info.id: info for info in await app.list_tasks()}
    assert alive(workers) == [None, None, None]
    assert workers.stop() == [0, 0, 0]

    records = await workers.records(redis_client)
    # Runs going when the cluster went away: their outcome may not have been recorded
    # before their lease expired, so they may have been re-run.
    cut_off = {
        (r["task"], r["occurrence"])
        for r in records
        if r["end"] >= down_at - INTERVAL_MS and r["start"] <= up_at
    }
    rerun = {(r["task"], r["occurrence"]) for r in records if r["attempt"] > 1}
    print(f"outage {(up_at - down_at) / 1000:.1f} s; {len(records)} runs")
    assert sorted(tasks) == ids, "a task was lost"
    for task_id in ids:
        runs = per_occurrence(records, task_id)
        twice = {(task_id, o) for o, n in runs.items() if n > 1}
        assert twice <= cut_off & rerun, f"{task_id}: duplicates {sorted(twice)}"
        tail = sorted(o for o in runs if o > up_at)
        assert tail == list(range(tail[0], tail[-1] + 1, INTERVAL_MS)), f"{task_id}: gaps"
        assert tasks[task_id].next_run_time is not None
        assert Outcome.FAILED.value not in tasks[task_id].counts, tasks[task_id].counts


async def test_workers_started_before_postgres_wait_for_it(
    redis_client: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
    pg_server: PostgresServer,
    workers_factory: Any,
) -> None:
    """PostgreSQL is down when two workers start and comes up 4 s later: no worker exits,
    both finish starting, and a 1 s task scheduled then runs once per occurrence."""
    store_url = f"{pg_server.url}?schema=late"
    workers: WorkerFleet = workers_factory(
        redis_url, key_prefix, settings={"CML_JOBS_STORE_URL": store_url}
    )
    workers.start(2)
    await stay_alive(workers, 4.0)  # the database is not there yet
    await pg_server.start()
    await workers.wait_ready(redis_client)
    async with app_for(redis_url, key_prefix, store_url=store_url) as app:
        info = await app.bus.schedule_task(
            RecurrentTaskDescriptor(id="late", name="RecordingJob", interval=1)
        )
        first = to_ms(info.next_run_time)  # type: ignore[arg-type]
        runs = await wait_for_occurrences(workers, redis_client, "late", 5)
        await app.bus.cancel_task("late")
    assert alive(workers) == [None, None]
    assert workers.stop() == [0, 0]
    runs = per_occurrence(await workers.records(redis_client), "late")
    assert set(runs.values()) == {1}, f"duplicates: {runs.most_common(3)}"
    assert _on_grid(runs, first), "an occurrence is missing"
