"""Jobs that fail, hang, block the event loop, or are unknown to some workers (scenarios 9
and 11), under real ``arq`` worker processes. Figures come from the recorded runs and the
task counts ``list_tasks`` shows; waits are for the task's own state, with a deadline.
"""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from cml_jobs import (
    BackgroundTaskScheduler,
    Outcome,
    RecurrentTaskDescriptor,
    ScheduledTaskDescriptor,
    TaskInfo,
)
from cml_jobs._timing import to_ms
from tests.reliability.conftest import app_for, stay_alive
from tests.workers import WorkerFleet

pytestmark = [pytest.mark.reliability, pytest.mark.redis]


async def _run_ended(app: BackgroundTaskScheduler, workers: WorkerFleet, task_id: str) -> TaskInfo:
    """The task once its only run has ended and its outcome is recorded."""

    async def ended() -> TaskInfo | None:
        state = await app.bus.get_task(task_id)
        return state if state.running == 0 and state.last_outcome is not None else None

    return await workers.until(ended, f"the run of {task_id!r} ended with an outcome")


async def test_a_failing_job_is_retried_to_3_attempts_then_failed_and_recurs(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str, workers_factory: Any
) -> None:
    """A job whose first occurrence raises, with max_retries=2 (3 attempts) and a 0.2 s
    backoff: 3 attempts, recorded as failed; the next occurrences still run and succeed."""
    workers: WorkerFleet = workers_factory(redis_url, key_prefix)
    workers.start(2)
    await workers.wait_ready(redis_client)
    async with app_for(redis_url, key_prefix) as app:
        await app.bus.schedule_task(
            RecurrentTaskDescriptor(
                id="flaky",
                name="RecordingJob",
                interval=2,
                max_retries=2,
                retry_backoff=0.2,
                data={"fail_first": 1},
            )
        )

        async def failed_then_succeeded_twice() -> TaskInfo | None:
            state = await app.bus.get_task("flaky")
            counts = state.counts
            done = counts.get(Outcome.FAILED.value) and counts.get(Outcome.SUCCEEDED.value, 0) >= 2
            return state if done else None

        state = await workers.until(failed_then_succeeded_twice, "a failure, then 2 successes")
        await app.bus.cancel_task("flaky")
    assert workers.stop() == [0, 0]

    records = await workers.records(redis_client)
    first = min(r["occurrence"] for r in records)
    attempts = [r["attempt"] for r in records if r["occurrence"] == first]
    later = Counter(r["occurrence"] for r in records if r["occurrence"] != first)
    tried = [r for r in records if r["occurrence"] == first]
    gaps = [(b["start"] - a["end"]) / 1000 for a, b in itertools.pairwise(tried)]
    print(
        f"attempts {attempts}, retry gaps {gaps} s; later occurrences {dict(later)}; {state.counts}"
    )
    assert attempts == [1, 2, 3]
    assert all(r.get("failed") for r in records if r["occurrence"] == first)
    assert state.counts.get(Outcome.FAILED.value) == 1, state.counts
    assert len(later) >= 2 and set(later.values()) == {1}, "the next occurrences did not run"
    assert state.counts.get(Outcome.SUCCEEDED.value, 0) >= 2, state.counts


async def test_a_job_hanging_past_its_timeout_is_cancelled_and_recorded_timed_out(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str, workers_factory: Any
) -> None:
    """A job that sleeps 30 s with a 1 s timeout: the run is
    cancelled (never finishes) and recorded as timed out, with no re-run."""
    workers: WorkerFleet = workers_factory(redis_url, key_prefix)
    workers.start(1)
    await workers.wait_ready(redis_client)
    async with app_for(redis_url, key_prefix) as app:
        await app.bus.schedule_task(
            RecurrentTaskDescriptor(
                id="hangs",
                name="RecordingJob",
                interval=60,
                timeout=1,
                start_at=app.clock.now() + timedelta(seconds=0.5),
                data={"sleep": 30},
            )
        )
        # Once the run has ended, its lease is released: no re-run of it can start later.
        state = await _run_ended(app, workers, "hangs")
        starts = await workers.starts(redis_client)
        await app.bus.cancel_task("hangs")
    assert workers.stop() == [0]

    print(f"{len(starts)} start(s); outcome {state.last_outcome}; {state.counts}")
    assert len(starts) == 1
    assert await workers.records(redis_client) == [], "the hanging run finished"
    assert state.counts == {Outcome.TIMED_OUT.value: 1}
    assert state.running == 0


async def test_a_loop_blocking_job_runs_once_and_is_recorded_timed_out(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str, workers_factory: Any
) -> None:
    """A CPU-bound job that ignores cancellation (5 s of time.sleep, lease 3 s, timeout
    1 s) on one of two workers starts once: the lease is renewed from a thread of its own,
    so the other worker never starts it too. The run is recorded as timed out, and both
    workers exit cleanly."""
    workers: WorkerFleet = workers_factory(redis_url, key_prefix)
    workers.start(2)
    await workers.wait_ready(redis_client)
    async with app_for(redis_url, key_prefix) as app:
        await app.bus.schedule_task(
            RecurrentTaskDescriptor(
                id="blocker",
                name="RecordingJob",
                interval=60,
                timeout=1,
                start_at=app.clock.now() + timedelta(seconds=0.5),
                data={"block": 5},
            )
        )
        # A second run could only come from a lease lost during the block: it would start
        # while the first blocks (after 3 s), and the first's outcome would be refused.
        state = await _run_ended(app, workers, "blocker")
        starts = await workers.starts(redis_client)
        await app.bus.cancel_task("blocker")
    codes = workers.stop()

    print(
        f"starts {[(s['pid'], s['attempt'], s['start'] - starts[0]['start']) for s in starts]}; "
        f"outcome {state.last_outcome}; {state.counts}; exit codes {codes}"
    )
    assert len(starts) == 1, f"started more than once: {starts}"
    assert starts[0]["attempt"] == 1
    assert state.last_outcome is Outcome.TIMED_OUT
    assert state.counts == {Outcome.TIMED_OUT.value: 1}
    assert codes == [0, 0]


async def test_a_rolling_deploy_runs_a_new_job_once_on_the_worker_that_knows_it(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str, workers_factory: Any
) -> None:
    """An old worker (without the job classes) is alone when a one-time and a 2 s recurrent
    task of a new job fall due; a new worker joins 3 s later: 0 permanent failures, 0
    parked, each occurrence runs once, all on the new worker."""
    old: WorkerFleet = workers_factory(
        redis_url, key_prefix, modules="tests.fixtures.recording_old"
    )
    old.start(1)
    await old.wait_ready(redis_client)
    async with app_for(redis_url, key_prefix) as app:
        once = await app.bus.schedule_task(
            ScheduledTaskDescriptor(
                id="new-once",
                name="RecordingOnceJob",
                scheduled_at=app.clock.now() + timedelta(seconds=0.5),
            )
        )
        await app.bus.schedule_task(
            RecurrentTaskDescriptor(id="new-every", name="RecordingJob", interval=2)
        )
        await stay_alive(old, 3)
        ran_before = await old.records(redis_client)
        new: WorkerFleet = workers_factory(redis_url, key_prefix)
        new.start(1)
        await new.wait_ready(redis_client)
        await stay_alive(new, 6)
        old.check_alive()
        tasks = {t.id: t for t in await app.list_tasks()}
        await app.bus.cancel_task("new-every")
    [old_pid], [new_pid] = [p.pid for p in old.processes], [p.pid for p in new.processes]
    old_log = old.stderr(old.processes[0])
    assert old.stop() + new.stop() == [0, 0]

    records = await new.records(redis_client)
    by_task = Counter((r["task"], r["occurrence"]) for r in records)
    pids = Counter(r["pid"] for r in records)
    every = tasks["new-every"]
    print(
        f"before the new worker: {len(ran_before)} runs; after: "
        f"{dict(Counter(r['task'] for r in records))}; "
        f"pids {dict(pids)} (old {old_pid}, new {new_pid}); new-every {every.counts}"
    )
    assert ran_before == []
    assert set(pids) == {new_pid}, "a run happened on the worker without the job"
    assert by_task[("new-once", to_ms(once.next_run_time))] == 1  # type: ignore[arg-type]
    assert set(by_task.values()) == {1}
    ended = tasks["new-once"]  # listed, ended, until its retention
    assert ended.ended_at is not None, "the one-time task did not end"
    assert ended.last_outcome is Outcome.SUCCEEDED
    assert every.parked_reason is None
    assert Outcome.FAILED.value not in every.counts and Outcome.PARKED.value not in every.counts
    assert every.counts.get(Outcome.SUCCEEDED.value, 0) >= 1, every.counts
    # The old worker says once per task that it leaves it to another, not once a second.
    about = Counter(
        t for line in old_log.splitlines() for t in ("new-once", "new-every") if t in line
    )
    print(f"old worker's lines about the tasks: {dict(about)}")
    assert set(about.values()) <= {1}, old_log[-3000:]
    assert "lost" not in old_log and "ERROR" not in old_log, old_log[-3000:]
