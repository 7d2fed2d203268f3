"""Worker processes killed or stopped under a run (scenarios 1 and 16).

Workers run with a 3 s lease and a 0.5 s dispatcher poll (``tests.workers``), so a run
whose worker is lost is re-run once its lease has expired. Figures come from the runs the
jobs recorded: every start (``:started``) and every finished run. Times are measured from
the event that decides them (the kill, the lease the test itself set, the worker's exit),
never from when the test happened to look.
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

from cml_jobs import Outcome, RecurrentTaskDescriptor, ScheduledTaskDescriptor, TaskInfo
from cml_jobs._timing import to_ms
from cml_jobs.stores._base import Decision
from cml_jobs.stores.redis import RedisScheduleStore
from cml_jobs.testing import ManualClock
from tests.reliability.conftest import app_for, per_occurrence
from tests.workers import WorkerFleet

pytestmark = [pytest.mark.reliability, pytest.mark.redis]

LEASE_S = 3.0
POLL_S = 0.5
#: Expired leases are looked for at most once a second, on a dispatcher tick (at least
#: one per poll interval): a lost run is claimed again within lease + 1 s + one poll.
RECLAIM_S = 1.0
#: From that claim to the re-run's first line (start, configure, the job's first write):
#: milliseconds on an idle machine; a busy one is allowed a second.
BUSY_S = 1.0
RERUN_WITHIN_S = LEASE_S + RECLAIM_S + POLL_S + BUSY_S


def _ms() -> int:
    return int(time.time() * 1000)


async def test_a_run_killed_mid_way_is_rerun_after_its_lease_with_attempt_2(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str, workers_factory: Any
) -> None:
    """kill -9 the worker running a 2 s job: the occurrence is re-run once by the other
    worker, as attempt 2, once the lease has expired (within lease + 1 s + a poll of the
    kill); no occurrence is lost."""
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
        first = await workers.until(lambda: workers.starts(redis_client), "the run started")
        victim = first[0]["pid"]
        os.kill(victim, signal.SIGKILL)  # at once: the job sleeps 2 s after its start
        killed_at = _ms()
        [killed] = [p for p in workers.processes if p.pid == victim]
        workers.forget(killed)

        async def rerun() -> list[dict[str, Any]]:
            return [r for r in await workers.records(redis_client) if r["attempt"] == 2]

        [record] = await workers.until(rerun, "the killed run was re-run")

        async def recorded() -> TaskInfo | None:
            # The job writes its record just before it returns; its outcome follows.
            state = await app.bus.get_task("slow")
            return state if state.counts.get(Outcome.SUCCEEDED.value) else None

        state = await workers.until(recorded, "the re-run's outcome was recorded")
        await app.bus.cancel_task("slow")
    assert [p.poll() for p in workers.processes] == [None]

    records = await workers.records(redis_client)
    rerun_after = (record["start"] - killed_at) / 1000
    runs = per_occurrence(records, "slow")
    print(f"re-run {rerun_after:.2f} s after the kill (lease {LEASE_S} s, poll {POLL_S} s)")
    assert not [r for r in records if r["pid"] == victim], "the kill did not catch the run"
    assert record["occurrence"] == first[0]["occurrence"]
    assert record["pid"] != victim
    assert runs == {first[0]["occurrence"]: 1}, "lost or duplicated"
    assert rerun_after <= RERUN_WITHIN_S, f"re-run only after {rerun_after:.2f} s"
    assert state.counts.get(Outcome.SUCCEEDED.value) == 1, state.counts


async def test_a_run_claimed_by_a_worker_that_died_before_starting_it_is_rerun(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str, workers_factory: Any
) -> None:
    """An occurrence claimed by a worker that died before starting it (here: this test
    claims it through the store, as a dispatcher does, with a 3 s lease, and never starts
    it) is re-run by a live worker as attempt 2: not before the lease expires, and within
    1 s + a poll after it."""
    workers: WorkerFleet = workers_factory(redis_url, key_prefix)
    workers.start(1)
    await workers.wait_ready(redis_client)
    async with app_for(redis_url, key_prefix) as app:
        # Due in 2 s: the doomed worker below claims it first, before the live one could.
        start_at = app.clock.now() + timedelta(seconds=2)
        info = await app.bus.schedule_task(
            RecurrentTaskDescriptor(
                id="claimed", name="RecordingJob", interval=60, start_at=start_at
            )
        )
        due = info.next_run_time
        assert due is not None
        # The doomed worker: claims the occurrence (lease 3 s) and dies without a trace.
        store = RedisScheduleStore(redis_client, prefix=key_prefix)
        now = app.clock.now()
        decision = Decision("claimed", due, due, due + timedelta(minutes=1), None)
        lease_until = now + timedelta(seconds=LEASE_S)
        [claim] = await store.claim([decision], lease_until=lease_until)
        assert claim.run is not None
        expires_at = to_ms(lease_until)

        async def succeeded() -> TaskInfo | None:
            state = await app.bus.get_task("claimed")
            done = state.running == 0 and state.counts.get(Outcome.SUCCEEDED.value)
            return state if done else None

        state = await workers.until(succeeded, "the claimed occurrence ran and succeeded")
        await app.bus.cancel_task("claimed")

    [record] = await workers.records(redis_client)
    rerun_after = (record["start"] - expires_at) / 1000
    print(f"claimed-but-not-started run re-run {rerun_after:.2f} s after its lease expired")
    assert (record["occurrence"], record["attempt"]) == (to_ms(due), 2)
    assert per_occurrence(await workers.records(redis_client), "claimed") == {to_ms(due): 1}
    assert record["start"] >= expires_at, "re-run while the claim's lease still held"
    assert rerun_after <= RERUN_WITHIN_S - LEASE_S, f"re-run {rerun_after:.2f} s after expiry"
    assert state.counts == {Outcome.SUCCEEDED.value: 1}, state.counts


async def test_a_late_write_from_a_lost_run_is_rejected_by_its_fence(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    """Once a lost run is re-issued, everything its old fence tries (heartbeat, finish) is
    refused and changes nothing; the new fence's outcome is the one recorded."""
    from cml_jobs.stores import Finish, NewTask

    store = RedisScheduleStore(redis_client, prefix=key_prefix)
    clock = ManualClock()
    now = clock.now()
    descriptor = RecurrentTaskDescriptor(id="fenced", name="RecordingJob", interval=60)
    await store.add(NewTask("fenced", descriptor.model_dump_json(), now, now), replace=False)
    decision = Decision("fenced", now, now, now + timedelta(minutes=1), None)
    [claim] = await store.claim([decision], lease_until=now + timedelta(seconds=3))
    old = claim.run
    assert old is not None
    later = clock.advance(seconds=4)
    [reissued] = await store.reclaim_expired(
        now=later, lease_until=later + timedelta(seconds=3), limit=9
    )
    new = reissued.run
    assert (new.attempt, new.fence > old.fence) == (2, True)

    refused = (
        await store.extend([old], lease_until=later + timedelta(seconds=3)),
        await store.finish([Finish(old, Outcome.FAILED, "late")]),
    )
    before = await store.get("fenced")
    [accepted] = await store.finish([Finish(new, Outcome.SUCCEEDED)])
    after = await store.get("fenced")
    assert refused == ([False], [False])
    assert before is not None and before.counts == {} and before.last_error is None
    assert accepted and after is not None
    assert after.counts == {Outcome.SUCCEEDED.value: 1}


#: Scenario 16. A lease this long tells a released run (re-run within a reclaim, about
#: a second) from one left to expire (re-run 2/3 of a lease or more after its release,
#: since the heartbeat renews it every third of a lease) with no appeal to speed.
TERM_LEASE_S = 60
TERM_DRAIN_S = 4  # longer than what is left of the short run when SIGTERM comes
SHORT_S, LONG_S = 2, 10  # the long run is still going at the end of the drain


async def test_sigterm_lets_short_runs_finish_and_releases_long_ones_for_a_rerun(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str, workers_factory: Any
) -> None:
    """SIGTERM, with a 4 s drain, to a worker running a 2 s and a 10 s job: the short run
    finishes there during the drain and the worker exits 0; the long one is released and
    re-run by the other worker at once, not after its lease (60 s here), as the same
    attempt (1): a release is not a lost worker."""
    lease = {"CML_JOBS_LEASE": str(TERM_LEASE_S)}
    old: WorkerFleet = workers_factory(
        redis_url, key_prefix, settings={**lease, "CML_JOBS_DRAIN_TIMEOUT": str(TERM_DRAIN_S)}
    )
    new: WorkerFleet = workers_factory(redis_url, key_prefix, settings=lease)
    old.start(1)
    await old.wait_ready(redis_client)
    async with app_for(redis_url, key_prefix) as app:
        start_at = app.clock.now() + timedelta(seconds=1)
        for task_id, sleep in (("short", SHORT_S), ("long", LONG_S)):
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

        await old.until(both_started, "both runs started on the first worker")
        # Nothing is left for the second worker to claim but what the first releases.
        new.start(1)
        [process] = old.processes
        process.send_signal(signal.SIGTERM)
        signalled_at = _ms()
        code = await asyncio.to_thread(old.forget, process, 60)
        exited_at = _ms()
        await new.wait_ready(redis_client)
        ready_at = _ms()

        async def long_rerun() -> list[dict[str, Any]]:
            starts = await new.starts(redis_client)
            return [s for s in starts if s["task"] == "long" and s["pid"] != process.pid]

        [rerun] = await new.until(long_rerun, "the long run was re-run")

        async def both_succeeded() -> dict[str, TaskInfo] | None:
            states = {t.id: t for t in await app.list_tasks()}
            done = all(states[t].counts.get(Outcome.SUCCEEDED.value) for t in ("short", "long"))
            return states if done else None

        states = await new.until(both_succeeded, "both tasks recorded a success")
        for task_id in states:
            await app.bus.cancel_task(task_id)

    records = await new.records(redis_client)
    by_task = {task: [r for r in records if r["task"] == task] for task in ("short", "long")}
    [short] = by_task["short"]
    rerun_after = (rerun["start"] - max(exited_at, ready_at)) / 1000
    print(
        f"worker exited with {code}, {(exited_at - signalled_at) / 1000:.2f} s after SIGTERM; "
        f"the other worker was ready {(ready_at - exited_at) / 1000:.2f} s after that exit; "
        f"long run re-run {rerun_after:.2f} s after both"
    )
    assert code == 0
    assert short["pid"] == process.pid, "the short run did not finish on its worker"
    assert short["start"] < signalled_at < short["end"], "SIGTERM came outside the short run"
    assert [(r["pid"], r["attempt"]) for r in by_task["long"]] == [(rerun["pid"], 1)]
    assert rerun_after < TERM_LEASE_S / 3, f"re-run {rerun_after:.2f} s after exit: a lease"
    assert states["long"].counts.get(Outcome.SUCCEEDED.value) == 1, states["long"].counts
    assert states["short"].counts.get(Outcome.SUCCEEDED.value) == 1, states["short"].counts


#: Rolling restarts: a run that outlasts the drain, a drain short enough to release it.
ROLLING_RUN_S, ROLLING_DRAIN_S = 3, 0.2


async def _started_on(workers: WorkerFleet, client: aioredis.Redis, pid: int) -> bool:
    return any(start["pid"] == pid for start in await workers.starts(client))


async def test_three_rolling_restarts_in_a_row_do_not_use_up_a_runs_attempts(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str, workers_factory: Any
) -> None:
    """Scenario 16 three times over: three workers in a row get SIGTERM (drain 0.2 s)
    while they run a one-time task's 3 s run. Each releases the run and exits 0, the next
    re-runs it as attempt 1 (not after its 60 s lease), and the 4th runs it to completion:
    a rolling restart is not a lost worker, so three of them do not give the run up."""
    settings = {"CML_JOBS_LEASE": str(TERM_LEASE_S), "CML_JOBS_DRAIN_TIMEOUT": str(ROLLING_DRAIN_S)}
    async with app_for(redis_url, key_prefix) as app:
        await app.bus.schedule_task(
            ScheduledTaskDescriptor(
                id="rolling",
                name="RecordingOnceJob",
                scheduled_at=app.clock.now() + timedelta(seconds=1),
                data={"sleep": ROLLING_RUN_S},
                misfire_grace_time=TERM_LEASE_S,  # each restart makes the re-run later
            )
        )
        stopped = []
        for _ in range(3):
            workers: WorkerFleet = workers_factory(redis_url, key_prefix, settings=settings)
            [process] = workers.start(1)
            await workers.until(
                lambda: _started_on(workers, redis_client, process.pid),  # noqa: B023
                "the run started on this worker",
            )
            process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(workers.forget, process, 60) == 0
            stopped.append(process.pid)
        last: WorkerFleet = workers_factory(redis_url, key_prefix, settings=settings)
        last.start(1)
        [record] = await last.until(
            lambda: last.records(redis_client), "the run finished on the 4th worker"
        )

        async def ended() -> TaskInfo | None:  # the job's record comes before its outcome
            task = await app.bus.get_task("rolling")
            return task if task.last_outcome is not None else None

        task = await last.until(ended, "the run's outcome recorded")
    starts = await last.starts(redis_client)
    assert [start["attempt"] for start in starts] == [1, 1, 1, 1]
    assert [start["pid"] for start in starts][:3] == stopped
    assert (record["attempt"], record["pid"] in stopped) == (1, False)
    assert (task.last_outcome, task.counts) == (Outcome.SUCCEEDED, {"succeeded": 1})
