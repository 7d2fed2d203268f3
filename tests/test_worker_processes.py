"""Real ``arq cml_jobs.WorkerSettings`` processes against the real Redis.

These tests run on the wall clock by necessity (separate processes); every wait is
bounded, and assertions are figures computed from the runs the jobs recorded.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import redis.asyncio as aioredis

from cml_jobs import (
    BackgroundTaskScheduler,
    Outcome,
    RecurrentTaskDescriptor,
    ScheduledTaskDescriptor,
)
from cml_jobs._timing import to_ms
from tests.workers import fleet

pytestmark = pytest.mark.redis

INTERVAL_MS = 1000


@pytest.fixture
async def app(redis_url: str, key_prefix: str) -> AsyncIterator[BackgroundTaskScheduler]:
    """The app side: schedules into Redis; the worker processes run the tasks."""
    scheduler = BackgroundTaskScheduler.configure(
        redis_url=redis_url,
        modules=["tests.fixtures.recording"],
        key_prefix=key_prefix,
        queue_name=f"{key_prefix}queue",
    )
    async with scheduler:
        yield scheduler


def _per_occurrence(records: list[dict[str, int]], task: str) -> Counter[int]:
    return Counter(r["occurrence"] for r in records if r["task"] == task)


async def test_one_worker_runs_each_occurrence_once_on_the_grid(
    app: BackgroundTaskScheduler, redis_client: aioredis.Redis, redis_url: str, key_prefix: str
) -> None:
    """One worker runs a 1 s task once per occurrence for 20 s, on start + k x interval;
    list_tasks shows the next run time; cancel stops it within one interval. (Runs travel
    through the arq queue here; the other tests run them where they are claimed.)"""
    with fleet(redis_url, key_prefix, CML_JOBS_DISPATCH="queue") as workers:
        workers.start(1)
        await workers.wait_ready(redis_client)
        info = await app.bus.schedule_task(
            RecurrentTaskDescriptor(id="grid", name="RecordingJob", interval=1)
        )
        assert info.descriptor is not None
        first = to_ms(info.next_run_time)  # type: ignore[arg-type]
        await asyncio.sleep(20.5)
        listed = {t.id: t for t in await app.list_tasks()}
        next_run = to_ms(listed["grid"].next_run_time)  # type: ignore[arg-type]
        # Ahead of the first occurrence, on the grid, and no more than one interval from
        # now (the occurrence after the last one claimed).
        assert first < next_run <= to_ms(app.clock.now()) + INTERVAL_MS
        assert (next_run - first) % INTERVAL_MS == 0
        await app.bus.cancel_task("grid")
        cancelled_at = to_ms(app.clock.now())
        await asyncio.sleep(2.5)
        assert workers.stop() == [0]

    runs = _per_occurrence(await workers.records(redis_client), "grid")
    assert set(runs.values()) == {1}, "an occurrence ran more than once"
    assert len(runs) >= 19, f"only {len(runs)} occurrences ran in 20 s"
    assert all((o - first) % INTERVAL_MS == 0 for o in runs), "an occurrence is off the grid"
    assert sorted(runs) == list(range(first, max(runs) + 1, INTERVAL_MS)), (
        "an occurrence is missing"
    )
    assert max(runs) <= cancelled_at + INTERVAL_MS, "ran more than one interval after cancel"


async def test_three_workers_run_every_occurrence_exactly_once(
    app: BackgroundTaskScheduler, redis_client: aioredis.Redis, redis_url: str, key_prefix: str
) -> None:
    """Three worker processes sharing one Redis run each occurrence of a 1 s task once."""
    with fleet(redis_url, key_prefix) as workers:
        workers.start(3)
        await workers.wait_ready(redis_client)
        info = await app.bus.schedule_task(
            RecurrentTaskDescriptor(id="shared", name="RecordingJob", interval=1)
        )
        first = to_ms(info.next_run_time)  # type: ignore[arg-type]
        await asyncio.sleep(20.5)
        await app.bus.cancel_task("shared")
        assert workers.stop() == [0, 0, 0]

    records = await workers.records(redis_client)
    runs = _per_occurrence(records, "shared")
    assert runs and set(runs.values()) == {1}, (
        f"duplicates: {[o for o, n in runs.items() if n > 1]}"
    )
    assert sorted(runs) == list(range(first, max(runs) + 1, INTERVAL_MS)), (
        "an occurrence is missing"
    )
    assert len(runs) >= 19
    assert len({r["pid"] for r in records}) >= 2, "the work was not shared between workers"


async def test_tasks_survive_a_full_restart_following_grace_and_coalesce(
    app: BackgroundTaskScheduler, redis_client: aioredis.Redis, redis_url: str, key_prefix: str
) -> None:
    """Stopping every worker for over 3 intervals loses no task: the missed occurrences
    coalesce into one catch-up run, and a one-time task that fell due meanwhile runs once."""
    with fleet(redis_url, key_prefix) as workers:
        workers.start(2)
        await workers.wait_ready(redis_client)
        await app.bus.schedule_task(
            RecurrentTaskDescriptor(id="steady", name="RecordingJob", interval=1)
        )
        await asyncio.sleep(3.2)
        assert workers.stop() == [0, 0]
        stopped_at = to_ms(app.clock.now())
        once = await app.bus.schedule_task(
            ScheduledTaskDescriptor(
                id="once",
                name="RecordingOnceJob",
                scheduled_at=app.clock.now() + timedelta(seconds=1),
                misfire_grace_time=30,
            )
        )
        await asyncio.sleep(4.0)  # down for 4 intervals; "once" fell due meanwhile
        restarted_at = to_ms(app.clock.now())
        workers.start(2)
        await workers.wait_ready(redis_client)
        await asyncio.sleep(3.0)
        steady = await app.bus.get_task("steady")
        await app.bus.cancel_task("steady")
        assert workers.stop() == [0, 0]

    records = await workers.records(redis_client)
    runs = sorted(_per_occurrence(records, "steady"))
    before = [o for o in runs if o <= stopped_at]
    after = [o for o in runs if o > stopped_at]
    assert before and after, "the task did not run both before the stop and after the restart"
    assert max(after) > restarted_at
    gap = (min(after) - max(before)) // INTERVAL_MS - 1
    assert gap >= 3, f"only {gap} occurrences fell in a 4 s outage"
    assert steady.counts.get(Outcome.MISSED.value) == gap, "missed occurrences not all recorded"
    assert after == list(range(min(after), max(after) + 1, INTERVAL_MS)), "not resumed on the grid"
    assert set(_per_occurrence(records, "steady").values()) == {1}
    assert _per_occurrence(records, "once") == Counter({to_ms(once.next_run_time): 1})  # type: ignore[arg-type]
