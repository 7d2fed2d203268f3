"""Worker processes killed or stopped under a run (scenarios 1 and 16).

Workers run with a 3 s lease and a 0.5 s dispatcher poll (``tests.workers``), so a run
whose worker is lost is re-run within lease + 1 s. Figures come from the runs the jobs
recorded: every start (``:started``) and every finished run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from cml_jobs import Outcome, RecurrentTaskDescriptor
from cml_jobs._timing import to_ms
from cml_jobs.stores._base import Decision
from cml_jobs.stores.redis import RedisScheduleStore
from cml_jobs.testing import ManualClock
from tests.reliability.conftest import app_for, per_occurrence, stay_alive
from tests.workers import WorkerFleet

pytestmark = [pytest.mark.reliability, pytest.mark.redis]

LEASE_S = 3.0
POLL_S = 0.5
#: Expired leases are looked for at most once a second, whatever the poll interval.
RECLAIM_S = 1.0


async def _wait_for(check: Any, timeout: float) -> Any:
    """Poll ``check`` until it returns something truthy, for at most ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            if found := await check():
                return found
            await asyncio.sleep(0.05)


async def test_a_run_killed_mid_way_is_rerun_within_lease_and_poll_with_attempt_2(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str, workers_factory: Any
) -> None:
    """kill -9 the worker running a 2 s job: the occurrence is re-run once by the other
    worker, as attempt 2, within lease + 1 s of the kill; no occurrence is lost."""
    workers: WorkerFleet = workers_factory(redis_url, key_prefix)
    workers.start(2)
    await workers.wait_ready(redis_client)
    async with app_for(redis_url, key_prefix) as app:
        await app.bus.schedule_task(
            RecurrentTaskDescriptor(
                id="slow",
                name="RecordingJob",
                interval=30,
                start_at=app.clock.now() + timedelta(seconds=0.5),
                data={"sleep": 2},
            )
        )
        first = await _wait_for(lambda: workers.starts(redis_client), timeout=5)
        victim = first[0]["pid"]
        await asyncio.sleep(0.5)  # mid-run
        os.kill(victim, signal.SIGKILL)
        killed_at = int(time.time() * 1000)

        async def rerun() -> list[dict[str, Any]]:
            return [r for r in await workers.records(redis_client) if r["attempt"] == 2]

        [record] = await _wait_for(rerun, timeout=LEASE_S + POLL_S + 5)
        state = await app.bus.get_task("slow")
        await app.bus.cancel_task("slow")
    survivors = [p for p in workers.processes if p.pid != victim]
    assert [p.poll() for p in survivors] == [None]

    rerun_after = (record["start"] - killed_at) / 1000
    runs = per_occurrence(await workers.records(redis_client), "slow")
    print(f"re-run {rerun_after:.2f} s after the kill (lease {LEASE_S} s + poll {POLL_S} s)")
    assert record["occurrence"] == first[0]["occurrence"]
    assert record["pid"] != victim
    assert runs == {first[0]["occurrence"]: 1}, "lost or duplicated"
    assert rerun_after <= LEASE_S + RECLAIM_S + 0.5, f"re-run only after {rerun_after:.2f} s"
    assert state.counts.get(Outcome.SUCCEEDED.value) == 1, state.counts


async def test_a_run_claimed_by_a_worker_that_died_before_starting_it_is_rerun(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str, workers_factory: Any
) -> None:
    """An occurrence claimed by a worker that died before starting it (here: this test
    claims it through the store, as a dispatcher does, and never starts it) is re-run by a
    live worker as attempt 2 within lease + 1 s of the claim."""
    workers: WorkerFleet = workers_factory(redis_url, key_prefix)
    workers.start(1)
    await workers.wait_ready(redis_client)
    async with app_for(redis_url, key_prefix) as app:
        info = await app.bus.schedule_task(
            RecurrentTaskDescriptor(id="claimed", name="RecordingJob", interval=60)
        )
        due = info.next_run_time
        assert due is not None
        # The doomed worker: claims the occurrence (lease 3 s) and dies without a trace.
        store = RedisScheduleStore(redis_client, prefix=key_prefix)
        now = app.clock.now()
        decision = Decision("claimed", due, due, due + timedelta(minutes=1), None)
        [claim] = await store.claim(
            [decision], now=now, lease_until=now + timedelta(seconds=LEASE_S)
        )
        assert claim.run is not None
        claimed_at = to_ms(now)

        [record] = await _wait_for(lambda: workers.records(redis_client), LEASE_S + POLL_S + 5)
        await stay_alive(workers, 1.0)
        state = await app.bus.get_task("claimed")
        await app.bus.cancel_task("claimed")

    rerun_after = (record["start"] - claimed_at) / 1000
    print(f"claimed-but-not-started run re-run {rerun_after:.2f} s after the claim")
    assert (record["occurrence"], record["attempt"]) == (to_ms(due), 2)
    assert per_occurrence(await workers.records(redis_client), "claimed") == {to_ms(due): 1}
    assert rerun_after <= LEASE_S + RECLAIM_S + 0.5, f"re-run only after {rerun_after:.2f} s"
    assert state.counts.get(Outcome.SUCCEEDED.value) == 1, state.counts


async def test_a_late_write_from_a_lost_run_is_rejected_by_its_fence(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    """Once a lost run is re-issued, everything its old fence tries (start, heartbeat,
    finish) is refused and changes nothing; the new fence's outcome is the one recorded."""
    from cml_jobs.stores._base import NewTask

    store = RedisScheduleStore(redis_client, prefix=key_prefix)
    clock = ManualClock()
    now = clock.now()
    descriptor = RecurrentTaskDescriptor(id="fenced", name="RecordingJob", interval=60)
    await store.add(NewTask("fenced", descriptor.model_dump_json(), now, now), replace=False)
    decision = Decision("fenced", now, now, now + timedelta(minutes=1), None)
    [claim] = await store.claim([decision], now=now, lease_until=now + timedelta(seconds=3))
    old = claim.run
    assert old is not None
    later = clock.advance(seconds=4)
    [new] = await store.reclaim_expired(
        now=later, lease_until=later + timedelta(seconds=3), limit=9
    )
    assert (new.attempt, new.fence > old.fence) == (2, True)

    refused = (
        await store.start(old, now=later, lease_until=later + timedelta(seconds=3)),
        await store.extend([old], lease_until=later + timedelta(seconds=3)),
        await store.finish(old, Outcome.FAILED, now=later, error="late"),
    )
    before = await store.get("fenced")
    accepted = await store.finish(new, Outcome.SUCCEEDED, now=later)
    after = await store.get("fenced")
    assert refused == (None, [False], False)
    assert before is not None and before.counts == {} and before.last_error is None
    assert accepted and after is not None
    assert after.counts == {Outcome.SUCCEEDED.value: 1}


async def test_sigterm_lets_short_runs_finish_and_releases_long_ones_for_a_rerun(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str, workers_factory: Any
) -> None:
    """SIGTERM with a 2 s drain while a worker runs a 0.5 s and an 8 s job: the short run
    completes there; the long one is released and re-run by the other worker within a poll
    of the first worker's exit (not after a lease)."""
    old: WorkerFleet = workers_factory(
        redis_url, key_prefix, settings={"CML_JOBS_DRAIN_TIMEOUT": "2"}
    )
    old.start(1)
    await old.wait_ready(redis_client)
    async with app_for(redis_url, key_prefix) as app:
        start_at = app.clock.now() + timedelta(seconds=1)
        for task_id, sleep in (("short", 1.5), ("long", 8)):
            await app.bus.schedule_task(
                RecurrentTaskDescriptor(
                    id=task_id,
                    name="RecordingJob",
                    interval=60,
                    start_at=start_at,
                    data={"sleep": sleep},
                )
            )

        async def both_started() -> bool:
            return {s["task"] for s in await old.starts(redis_client)} == {"short", "long"}

        await _wait_for(both_started, timeout=10)
        new: WorkerFleet = workers_factory(redis_url, key_prefix)
        new.start(1)
        await new.wait_ready(redis_client)
        [process] = old.processes
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 15)
        exited_at = int(time.time() * 1000)

        async def long_rerun() -> list[dict[str, Any]]:
            starts = await new.starts(redis_client)
            return [s for s in starts if s["task"] == "long" and s["pid"] != process.pid]

        [rerun] = await _wait_for(long_rerun, timeout=5)
        await asyncio.sleep(8.5)
        states = {t.id: t for t in await app.list_tasks()}
        for task_id in states:
            await app.bus.cancel_task(task_id)

    records = await new.records(redis_client)
    by_task = {task: [r for r in records if r["task"] == task] for task in ("short", "long")}
    rerun_after = (rerun["start"] - exited_at) / 1000
    print(f"worker exited with {code}; long run re-run {rerun_after:.2f} s after its exit")
    assert code == 0
    assert [r["pid"] for r in by_task["short"]] == [process.pid], "the short run did not finish"
    assert [(r["pid"], r["attempt"]) for r in by_task["long"]] == [(rerun["pid"], 2)]
    assert rerun_after <= POLL_S + 0.5, f"re-run {rerun_after:.2f} s after exit: waited a lease"
    assert states["long"].counts.get(Outcome.SUCCEEDED.value) == 1, states["long"].counts
    assert states["short"].counts.get(Outcome.SUCCEEDED.value) == 1, states["short"].counts
