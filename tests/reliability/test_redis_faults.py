"""Redis faults under real ``arq cml_jobs.WorkerSettings`` processes (scenarios 6 and 7).

Each test runs its own ``redis-server`` on a free port, stops it and starts it again on
the same port, and checks that no worker process exits and that every occurrence of a
1 s recurrent task has one outcome (and that the task runs on the grid again once Redis is
back).
Outages last as long as the scenario says; every other wait is for a condition, with a
deadline. Assertions are figures computed from the runs the jobs recorded; how soon the
workers resumed is printed, not asserted: the grid with no gap is the behaviour.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from cml_jobs import Outcome, RecurrentTaskDescriptor
from cml_jobs._timing import to_ms
from tests.reliability.conftest import (
    INTERVAL_MS,
    RedisServer,
    alive,
    app_for,
    needs_redis_server,
    per_occurrence,
    stay_alive,
    wait_for_occurrences,
    wait_for_record,
)
from tests.workers import WorkerFleet

pytestmark = [pytest.mark.reliability, pytest.mark.redis, needs_redis_server]


async def test_workers_started_before_redis_wait_for_it_and_run_once_per_occurrence(
    server_factory: Any, client_factory: Any, workers_factory: Any
) -> None:
    """Redis is down when two workers start and comes up 6 s later: no worker exits, and a
    1 s task scheduled right then runs from its first occurrence on, once per occurrence."""
    server: RedisServer = server_factory()
    workers: WorkerFleet = workers_factory(server.url)
    workers.start(2)
    await stay_alive(workers, 6.0)  # Redis is not there yet
    assert alive(workers) == [None, None]

    await server.start()
    up_at = int(time.time() * 1000)
    client = client_factory(server.url)
    async with app_for(server.url) as app:
        info = await app.bus.schedule_task(
            RecurrentTaskDescriptor(id="late", name="RecordingJob", interval=1)
        )
        first = to_ms(info.next_run_time)  # type: ignore[arg-type]
        record = await wait_for_record(workers, client, "late")
        first_run_delay = (record["end"] - up_at) / 1000
        await wait_for_occurrences(workers, client, "late", 5)
        await app.bus.cancel_task("late")
    assert alive(workers) == [None, None]
    assert workers.stop() == [0, 0]

    runs = per_occurrence(await workers.records(client), "late")
    print(f"first run {first_run_delay:.2f} s after Redis was up; {len(runs)} occurrences")
    assert set(runs.values()) == {1}, f"duplicates: {[o for o, n in runs.items() if n > 1]}"
    assert sorted(runs) == list(range(first, max(runs) + 1, INTERVAL_MS)), "missing occurrence"
    assert len(runs) >= 5


@pytest.mark.parametrize("stop_signal", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
async def test_redis_outage_mid_run_loses_no_worker_and_records_each_occurrence_once(
    server_factory: Any, client_factory: Any, workers_factory: Any, stop_signal: int
) -> None:
    """Redis (AOF, fsync always) goes away for 7 s while two workers run a 1 s task: no
    worker exits; once Redis is back the task runs again on its grid; every occurrence —
    before, during or after the outage — has exactly one outcome recorded. A job body runs
    twice only where docs/reliability.md allows it: it was going when Redis went away, so
    its worker was cut off for longer than the lease, and it was re-run."""
    server: RedisServer = server_factory(persist=True)
    await server.start()
    client = client_factory(server.url)
    workers: WorkerFleet = workers_factory(server.url)
    workers.start(2)
    await workers.wait_ready(client)
    async with app_for(server.url) as app:
        info = await app.bus.schedule_task(
            RecurrentTaskDescriptor(id="steady", name="RecordingJob", interval=1)
        )
    first = to_ms(info.next_run_time)  # type: ignore[arg-type]
    await wait_for_occurrences(workers, client, "steady", 3)

    server.stop(stop_signal)
    down_at = int(time.time() * 1000)
    await stay_alive(workers, 7.0)
    await server.start()
    up_at = int(time.time() * 1000)
    assert alive(workers) == [None, None]

    resumed = await wait_for_record(workers, client, "steady", after_ms=up_at)
    resume_delay = (resumed["end"] - up_at) / 1000

    async def four_after_the_outage() -> bool:
        runs = per_occurrence(await workers.records(client), "steady")
        return len([o for o in runs if o > up_at]) >= 4

    await workers.until(four_after_the_outage, "4 occurrences ran after Redis came back")
    async with app_for(server.url) as app:
        steady = await app.bus.get_task("steady")
        await app.bus.cancel_task("steady")
    assert alive(workers) == [None, None]
    assert workers.stop() == [0, 0]

    records = await workers.records(client)
    runs = per_occurrence(records, "steady")
    twice = {o for o, n in runs.items() if n > 1}
    cut_off = {r["occurrence"] for r in records if r["end"] < down_at}
    rerun = {r["occurrence"] for r in records if r["attempt"] > 1}
    assert steady.next_run_time is not None
    due = (to_ms(steady.next_run_time) - first) // INTERVAL_MS
    before = sorted(o for o in runs if o < down_at)
    after = sorted(o for o in runs if o >= down_at)
    print(
        f"outage {(up_at - down_at) / 1000:.1f} s; resumed {resume_delay:.2f} s after; "
        f"{len(before)} occurrences before, {len(after)} from the outage on: "
        f"{[(o - first) // INTERVAL_MS for o in after]}; bodies run again after being cut "
        f"off: {len(twice)}"
    )
    assert sum(steady.counts.values()) + steady.running == due, (steady.counts, due)
    assert max(runs.values()) <= 2 and twice <= cut_off & rerun, f"duplicates: {sorted(twice)}"
    assert len(before) >= 3, "the task did not run before the outage"
    assert before == list(range(first, max(before) + 1, INTERVAL_MS)), "missing before outage"
    assert all((o - first) % INTERVAL_MS == 0 for o in runs), "an occurrence is off the grid"
    tail = [o for o in after if o > up_at]
    assert len(tail) >= 4, f"only {len(tail)} occurrences after Redis came back"
    assert tail == list(range(min(tail), max(tail) + 1, INTERVAL_MS)), "not resumed on the grid"
    assert after == list(range(min(after), max(after) + 1, INTERVAL_MS)), "a gap after resuming"
    gap = (min(after) - max(before)) // INTERVAL_MS - 1
    assert gap >= 4, f"only {gap} occurrences fell in a 7 s outage"
    # Each occurrence of the outage is recorded missed, or skipped when it came due while
    # the run Redis cut off still held the task's one slot (max_instances=1) and was not
    # yet re-issued.
    in_gap = steady.counts.get(Outcome.MISSED.value, 0) + steady.counts.get(
        Outcome.SKIPPED.value, 0
    )
    assert in_gap == gap, f"missed not recorded: {steady.counts}"
    assert steady.counts.get(Outcome.MISSED.value, 0) >= gap - 1, steady.counts
    assert steady.counts.get(Outcome.SUCCEEDED.value, 0) >= len(runs) - 1, steady.counts
    assert Outcome.FAILED.value not in steady.counts, f"a run failed: {steady.counts}"
