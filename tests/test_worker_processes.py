"""Real ``arq cml_jobs.WorkerSettings`` processes against the real Redis.

These tests run on the wall clock by necessity (separate processes); every wait is for
a condition, with a deadline, and assertions are figures computed from the runs the jobs
recorded. What must *not* happen (a run after a cancel) is watched for as long as a 1 s
control task takes to run twice: proof that the workers were dispatching meanwhile.
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
from tests.workers import WorkerFleet, fleet

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


async def _occurrences(
    workers: WorkerFleet, client: aioredis.Redis, task: str, count: int, after_ms: int = 0
) -> None:
    """Wait until ``count`` occurrences of ``task`` due after ``after_ms`` have run."""

    async def enough() -> bool:
        runs = _per_occurrence(await workers.records(client), task)
        return len([o for o in runs if o > after_ms]) >= count

    await workers.until(enough, f"{count} occurrences of {task!r} ran after {after_ms}")


async def test_one_worker_runs_each_occurrence_once_on_the_grid(
    app: BackgroundTaskScheduler, redis_client: aioredis.Redis, redis_url: str, key_prefix: str
) -> None:
    """One worker runs a 1 s task once per occurrence for 20 occurrences, on start + k x
    interval; list_tasks shows the next run time on that grid, after the last run; no run
    starts more than one interval after cancel_task returned. (Runs travel through the arq
    queue here; the other tests run them where they are claimed.)"""
    with fleet(redis_url, key_prefix, CML_JOBS_DISPATCH="queue") as workers:
        workers.start(1)
        await workers.wait_ready(redis_client)
        info = await app.bus.schedule_task(
            RecurrentTaskDescriptor(id="grid", name="RecordingJob", interval=1)
        )
        await app.bus.schedule_task(
            RecurrentTaskDescriptor(id="control", name="RecordingJob", interval=1)
        )
        assert info.descriptor is not None
        first = to_ms(info.next_run_time)  # type: ignore[arg-type]
        await _occurrences(workers, redis_client, "grid", 20)
        listed = {t.id: t for t in await app.list_tasks()}
        ran_by_then = _per_occurrence(await workers.records(redis_client), "grid")
        await app.bus.cancel_task("grid")
        cancelled_at = to_ms(app.clock.now())
        await _occurrences(workers, redis_client, "control", 2, after_ms=cancelled_at)
        await app.bus.cancel_task("control")
        assert workers.stop() == [0]

    runs = _per_occurrence(await workers.records(redis_client), "grid")
    next_run = listed["grid"].next_run_time
    assert next_run is not None
    assert (to_ms(next_run) - first) % INTERVAL_MS == 0, "the next run time is off the grid"
    assert to_ms(next_run) > max(ran_by_then), "the next run time is not after the last run"
    assert set(runs.values()) == {1}, "an occurrence ran more than once"
    assert len(runs) >= 20, f"only {len(runs)} occurrences ran"
    assert all((o - first) % INTERVAL_MS == 0 for o in runs), "an occurrence is off the grid"
    assert sorted(runs) == list(range(first, max(runs) + 1, INTERVAL_MS)), (
        "an occurrence is missing"
    )
    assert max(runs) <= cancelled_at + INTERVAL_MS, "ran more than one interval after cancel"


async def test_three_workers_run_every_occurrence_exactly_once(
    app: BackgroundTaskScheduler, redis_client: aioredis.Redis, redis_url: str, key_prefix: str
) -> None:
    """Three worker processes sharing one Redis run each occurrence of a 1 s task once,
    and share the work: more than one of them runs some."""
    with fleet(redis_url, key_prefix) as workers:
        workers.start(3)
        await workers.wait_ready(redis_client)
        info = await app.bus.schedule_task(
            RecurrentTaskDescriptor(id="shared", name="RecordingJob", interval=1)
        )
        first = to_ms(info.next_run_time)  # type: ignore[arg-type]

        async def twenty_on_two_workers() -> bool:
            records = await workers.records(redis_client)
            occurrences = _per_occurrence(records, "shared")
            return len(occurrences) >= 20 and len({r["pid"] for r in records}) >= 2

        await workers.until(twenty_on_two_workers, "20 occurrences ran, on 2 workers or more")
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
        await _occurrences(workers, redis_client, "steady", 3)
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
        await asyncio.sleep(4.0)  # the outage: 4 intervals; "once" falls due meanwhile
        restarted_at = to_ms(app.clock.now())
        workers.start(2)
        await workers.wait_ready(redis_client)
        await _occurrences(workers, redis_client, "steady", 2, after_ms=restarted_at)
        await _occurrences(workers, redis_client, "once", 1)
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
