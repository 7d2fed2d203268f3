"""Once per occurrence when workers are down, race, disagree on the time, or see it jump
(scenarios 2, 3, 4, 5 and 10).

Worker scenarios run real ``arq`` worker processes on the shared test Redis (a key prefix
of their own); the clock-jump scenario runs in-process on a ``ManualClock``. Figures come
from the runs the jobs recorded.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from cml_jobs import (
    BackgroundTaskScheduler,
    EventKind,
    Outcome,
    RecurrentTaskDescriptor,
    ScheduledTaskDescriptor,
)
from cml_jobs._timing import to_ms
from cml_jobs.stores import Decision, Finish, NewTask
from cml_jobs.stores.redis import RedisScheduleStore
from cml_jobs.testing import ManualClock, run_due
from tests.reliability.conftest import (
    INTERVAL_MS,
    app_for,
    per_occurrence,
    wait_for_occurrences,
)
from tests.workers import WorkerFleet

pytestmark = [pytest.mark.reliability, pytest.mark.redis]


def _on_grid(runs: Counter[int]) -> list[int]:
    """Grid points between the first and the last occurrence that did not run."""
    if not runs:
        return []
    return sorted(set(range(min(runs), max(runs) + 1, INTERVAL_MS)) - set(runs))


async def test_a_one_time_task_runs_once_inside_its_grace_and_is_missed_outside_it(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str, workers_factory: Any
) -> None:
    """No worker is up when two one-time tasks fall due; workers start 3 s after that: the
    one whose grace (60 s) covers the delay runs once, the other (grace 2 s) runs 0 times
    and ends. (The grace that covers it is wide, because the delay includes the workers'
    cold start, which a busy machine stretches; the test checks that the delay did exceed
    2 s.)"""
    async with app_for(redis_url, key_prefix) as app:
        due = app.clock.now() + timedelta(seconds=1)
        for task_id, grace in (("inside", 60), ("outside", 2)):
            await app.bus.schedule_task(
                ScheduledTaskDescriptor(
                    id=task_id, name="RecordingOnceJob", scheduled_at=due, misfire_grace_time=grace
                )
            )
        await asyncio.sleep(4)  # the outage: no worker up until 3 s past the due time
        workers: WorkerFleet = workers_factory(redis_url, key_prefix)
        workers.start(2)
        await workers.wait_ready(redis_client)

        async def both_ended() -> bool:
            live = [task for task in await app.list_tasks() if task.ended_at is None]
            return await workers.records(redis_client) != [] and live == []

        await workers.until(both_ended, "'inside' ran and both one-time tasks ended")
    assert workers.stop() == [0, 0]

    records = await workers.records(redis_client)
    runs = Counter(r["task"] for r in records)
    late = [(r["start"] - to_ms(due)) / 1000 for r in records if r["task"] == "inside"]
    print(f"runs {dict(runs)}; 'inside' ran {late} s late")
    assert runs == {"inside": 1}
    assert late[0] > 2, "the workers came within the 2 s grace: nothing was missed"


async def test_a_missed_one_time_task_leaves_a_record_of_the_miss(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str, workers_factory: Any
) -> None:
    """A one-time task that fell due while every worker was down, beyond its grace, is
    recorded as missed where an operator sees it (the worker's log)."""
    async with app_for(redis_url, key_prefix) as app:
        await app.bus.schedule_task(
            ScheduledTaskDescriptor(
                id="outside",
                name="RecordingOnceJob",
                scheduled_at=app.clock.now() + timedelta(seconds=0.5),
                misfire_grace_time=1,
            )
        )
        await asyncio.sleep(2)  # the outage: beyond the grace before any worker is up
        workers: WorkerFleet = workers_factory(redis_url, key_prefix)
        workers.start(1)
        await workers.wait_ready(redis_client)

        async def logged_and_ended() -> str | None:
            log = workers.stderr(workers.processes[0])
            said = any("outside" in line and "missed" in line for line in log.splitlines())
            return log if said and await app.list_tasks() == [] else None

        logs = await workers.until(logged_and_ended, "the worker logged the miss of 'outside'")
    assert workers.stop() == [0]
    assert await workers.records(redis_client) == []
    print([line for line in logs.splitlines() if "missed" in line])


@pytest.mark.parametrize(("count", "occurrences"), [(2, 8), (3, 8), (10, 8)])
async def test_workers_racing_on_a_1s_task_run_each_occurrence_exactly_once(
    redis_client: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
    workers_factory: Any,
    count: int,
    occurrences: int,
) -> None:
    """2, 3 and 10 worker processes race on one 1 s task for 8 occurrences: every
    occurrence runs exactly once and none is missed."""
    workers: WorkerFleet = workers_factory(redis_url, key_prefix)
    workers.start(count)
    await workers.wait_ready(redis_client)  # every worker's dispatcher, not just the first
    async with app_for(redis_url, key_prefix) as app:
        await app.bus.schedule_task(
            RecurrentTaskDescriptor(id="raced", name="RecordingJob", interval=1)
        )
        await wait_for_occurrences(workers, redis_client, "raced", occurrences)
        state = await app.bus.get_task("raced")
        await app.bus.cancel_task("raced")
    assert workers.stop() == [0] * count

    records = await workers.records(redis_client)
    runs = per_occurrence(records, "raced")
    lag = sorted(r["start"] - r["occurrence"] for r in records)
    print(
        f"{count} workers: {len(runs)} occurrences, {sum(runs.values())} runs, "
        f"{len({r['pid'] for r in records})} pids; start lag p50 {lag[len(lag) // 2]} ms, "
        f"max {lag[-1]} ms; counts {state.counts}"
    )
    assert set(runs.values()) == {1}, f"duplicates: {[o for o, n in runs.items() if n > 1]}"
    assert _on_grid(runs) == [], "an occurrence is missing"
    assert len(runs) >= occurrences
    assert Outcome.MISSED.value not in state.counts, state.counts


async def test_two_workers_with_clocks_5s_apart_run_each_occurrence_once(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str, workers_factory: Any
) -> None:
    """One worker's clock runs 5 s ahead of the other's (an injected clock): every
    occurrence of a 1 s task still runs at most once, and no occurrence goes missing
    silently: a grid point that did not run was counted as skipped (its previous run's
    outcome not yet recorded, on a loaded machine). (The worker ahead sees the first 4
    occurrences as already past when the task is scheduled and coalesces them: they are
    counted as missed, not lost.)"""
    target = "tests.fixtures.skewed_worker.WorkerSettings"
    honest: WorkerFleet = workers_factory(redis_url, key_prefix, target=target)
    ahead: WorkerFleet = workers_factory(
        redis_url, key_prefix, target=target, settings={"CML_JOBS_TEST_CLOCK_SKEW": "5"}
    )
    honest.start(1)
    ahead.start(1)
    await honest.wait_ready(redis_client)
    await ahead.wait_ready(redis_client)
    async with app_for(redis_url, key_prefix) as app:
        await app.bus.schedule_task(
            RecurrentTaskDescriptor(id="skewed", name="RecordingJob", interval=1)
        )

        async def twenty_ran() -> bool:
            ahead.check_alive()
            return len(per_occurrence(await honest.records(redis_client), "skewed")) >= 20

        await honest.until(twenty_ran, "20 occurrences of 'skewed' ran")
        state = await app.bus.get_task("skewed")
        await app.bus.cancel_task("skewed")
    assert honest.stop() + ahead.stop() == [0, 0]

    records = await honest.records(redis_client)
    runs = per_occurrence(records, "skewed")
    pids = Counter(r["pid"] for r in records)
    early = sorted(r["occurrence"] - r["start"] for r in records)
    print(
        f"skew 5 s: {len(runs)} occurrences, {sum(runs.values())} runs, runs per pid "
        f"{sorted(pids.values())}; started up to {early[-1] / 1000:.2f} s before the "
        f"occurrence; counts {state.counts}"
    )
    assert set(runs.values()) == {1}, f"duplicates: {[o for o, n in runs.items() if n > 1]}"
    gaps = _on_grid(runs)
    assert len(gaps) <= state.counts.get(Outcome.SKIPPED.value, 0), f"missing: {gaps}"
    assert len(runs) >= 20
    assert state.counts.get(Outcome.MISSED.value, 0) <= 5, state.counts


async def test_clock_jumps_give_one_coalesced_catch_up_and_never_a_second_run(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str
) -> None:
    """A 1 s task on a clock that jumps: +1 h gives one catch-up run (3599 missed), -1 h
    runs nothing again; no occurrence ever runs twice."""
    clock = ManualClock()
    scheduler = BackgroundTaskScheduler.configure(
        redis_url=redis_url,
        modules=["tests.fixtures.behaviour_jobs"],
        clock=clock,
        run_worker=False,
        key_prefix=key_prefix,
        queue_name=f"{key_prefix}queue",
    )
    ran: list[int] = []

    async def tick(seconds: float) -> int:
        clock.advance(seconds=seconds)
        events = await run_due(scheduler)
        done = [e for e in events if e.kind is EventKind.SUCCEEDED]
        ran.extend(to_ms(e.occurrence_at) for e in done if e.occurrence_at)
        return len(done)

    async with scheduler:
        await scheduler.bus.schedule_task(
            RecurrentTaskDescriptor(id="jumpy", name="ScriptedJob", interval=1)
        )
        steady = [await tick(1) for _ in range(5)]
        forward = await tick(3600)
        after_forward = [await tick(1) for _ in range(3)]
        missed = (await scheduler.bus.get_task("jumpy")).counts.get(Outcome.MISSED.value)
        backward = await tick(-3600)
        after_backward = [await tick(1) for _ in range(5)]
        clock.advance(seconds=3600 - 5)
        caught_up = [await tick(1) for _ in range(3)]
        state = await scheduler.bus.get_task("jumpy")

    print(
        f"steady {steady}; +1 h: {forward} run, {missed} missed, then {after_forward}; "
        f"-1 h: {backward} then {after_backward}; clock back past: {caught_up}; {state.counts}"
    )
    assert steady == [1] * 5
    assert (forward, missed) == (1, 3599)
    assert after_forward == [1, 1, 1]
    assert backward == 0 and after_backward == [0] * 5, "ran again after the clock went back"
    assert caught_up == [1, 1, 1]
    assert len(ran) == len(set(ran)), "an occurrence ran twice"


async def test_stop_recurrence_leaves_no_run_after_the_stop(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str, workers_factory: Any
) -> None:
    """A job raises StopRecurrence while the next occurrence is already claimed and running
    (max_instances=2, 1.5 s runs every 1 s): no run starts after the stop, and the task
    is gone. (A 1 s control task shows the dispatchers ticking on after the stop: once it
    has run twice more, a run of the stopped task would have started too.)"""
    workers: WorkerFleet = workers_factory(redis_url, key_prefix)
    workers.start(2)
    await workers.wait_ready(redis_client)
    async with app_for(redis_url, key_prefix) as app:
        await app.bus.schedule_task(
            RecurrentTaskDescriptor(
                id="stopper",
                name="RecordingJob",
                interval=1,
                max_instances=2,
                data={"sleep": 1.5, "stop_after": 2},
            )
        )
        await app.bus.schedule_task(
            RecurrentTaskDescriptor(id="control", name="RecordingJob", interval=1)
        )

        async def stopped() -> int | None:
            # The run that counted 2 raised StopRecurrence as it ended; the task is gone.
            ends = sorted(
                r["end"] for r in await workers.records(redis_client) if r["task"] == "stopper"
            )
            gone = "stopper" not in {t.id for t in await app.list_tasks()}
            return ends[1] if gone and len(ends) >= 2 else None

        stopped_at = await workers.until(stopped, "the task stopped itself")

        async def two_control_runs_later() -> bool:
            records = await workers.records(redis_client)
            return (
                len([r for r in records if r["task"] == "control" and r["start"] > stopped_at]) >= 2
            )

        await workers.until(two_control_runs_later, "the control task ran twice after the stop")
        left = [t.id for t in await app.list_tasks()]
        await app.bus.cancel_task("control")
    assert workers.stop() == [0, 0]

    records = [r for r in await workers.records(redis_client) if r["task"] == "stopper"]
    starts = [s for s in await workers.starts(redis_client) if s["task"] == "stopper"]
    after = [s for s in starts if s["start"] > stopped_at]
    print(
        f"{len(starts)} runs started, {len(records)} finished; started after the stop: "
        f"{len(after)}; started before it: {len(starts) - len(after)}"
    )
    assert after == [], f"runs started after the stop: {after}"
    assert left == ["control"]


async def test_a_claimed_occurrence_cannot_start_once_its_task_stopped(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    """The store's side of StopRecurrence: a next occurrence claimed before the stop is no
    longer valid after it (its fence died with the task): its lease cannot be renewed, so
    its worker stops it, and its outcome cannot be recorded."""
    store = RedisScheduleStore(redis_client, prefix=key_prefix)
    clock = ManualClock()
    now = clock.now()
    step = timedelta(seconds=1)
    descriptor = RecurrentTaskDescriptor(id="s", name="RecordingJob", interval=1, max_instances=2)
    await store.add(NewTask("s", descriptor.model_dump_json(), now, now), replace=False)
    lease = now + timedelta(seconds=30)
    [first] = await store.claim([Decision("s", now, now, now + step, None, 2)], lease_until=lease)
    [second] = await store.claim(
        [Decision("s", now + step, now + step, now + 2 * step, None, 2)], lease_until=lease
    )
    assert first.run is not None and second.run is not None
    assert await store.finish([Finish(first.run, Outcome.STOPPED, end_task=True)]) == [True]
    assert await store.extend([second.run], lease_until=lease) == [False]
    assert await store.finish([Finish(second.run, Outcome.SUCCEEDED)]) == [False]
    assert await store.get("s") is None
