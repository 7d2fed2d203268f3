"""A Sentinel failover under real ``arq cml_jobs.WorkerSettings`` processes (R10).

The test runs its own primary, replica and three Sentinels (``tests.reliability.sentinels``),
two workers and the app on ``redis+sentinel://``, and 100 tasks every second; then it
kills the primary with SIGKILL. The runs record themselves in a fourth ``redis-server``
that no fault touches. The figures (printed, and quoted in docs/reliability.md):

- resumed: seconds from the primary's death to the first run of an occurrence due after
  it (that run was claimed from the new primary); and until every task has had one;
- twice: occurrences whose job body started more than once;
- lost: occurrences that neither ran nor were recorded as missed. Replication is
  asynchronous, so a write the old primary acknowledged but had not yet sent to the
  replica is gone; this figure is reported, not asserted.

The workers' events, published through their Sentinel pool, are read back through the
Sentinels after the failover.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cml_jobs import Outcome, RecurrentTaskDescriptor, TaskInfo
from cml_jobs._timing import to_ms
from cml_jobs.events import EventKind, EventStream
from cml_jobs.stores.redis import redis_client
from tests.reliability.conftest import (
    INTERVAL_MS,
    PREFIX,
    RedisServer,
    alive,
    app_for,
    needs_redis_server,
)
from tests.reliability.sentinels import SentinelGroup
from tests.workers import WorkerFleet

pytestmark = [pytest.mark.reliability, pytest.mark.redis, needs_redis_server]

TASKS = 100
#: Runs must resume this soon after the primary dies: Sentinel calls it down after 1 s
#: and elects and promotes the replica in a second or two; the rest is the workers'.
RESUME_WITHIN_S = 10.0
#: The default lease, not the tests' usual 3 s: a run that finished just before the
#: primary died records its outcome once the new primary answers, about 3 s later; a
#: shorter lease would expire first and the occurrence would be re-run, as for any Redis
#: outage longer than the lease (docs/reliability.md).
LEASE_S = "6"
#: An occurrence due this long after the kill was claimed after it (claims look 5 ms ahead).
AFTER_KILL_MS = 50


@pytest.fixture
async def sentinel_group(tmp_path: Path) -> AsyncIterator[SentinelGroup]:
    group = SentinelGroup(tmp_path)
    try:
        await group.start()
        yield group
    finally:
        group.close()


async def test_a_sentinel_failover_stops_no_worker_runs_no_occurrence_twice_and_keeps_every_task(
    sentinel_group: SentinelGroup, server_factory: Any, client_factory: Any, workers_factory: Any
) -> None:
    """The primary dies (SIGKILL) while two workers run 100 tasks every second: no worker
    exits, runs resume from the promoted replica within 10 s, no occurrence runs twice,
    every task is still scheduled, and the workers' events still reach the stream."""
    group = sentinel_group
    records: RedisServer = server_factory()
    await records.start()
    settings = {"CML_JOBS_TEST_RECORD_URL": records.url, "CML_JOBS_LEASE": LEASE_S}
    workers: WorkerFleet = workers_factory(group.url, settings=settings)
    workers.start(2)
    await workers.wait_ready()
    ids = [f"t{i:03d}" for i in range(TASKS)]
    first = await _schedule(group.url, ids)
    runs = _Runs(workers, client_factory(records.url), ids)
    await workers.until(lambda: runs.every_task_ran(0, 2), "every task ran twice")

    old_primary = group.primary.port
    down_at = int(time.time() * 1000)
    group.primary.kill()
    after = down_at + AFTER_KILL_MS
    resumed = await workers.until(lambda: runs.first_start_due_after(after), "a run after it")
    await workers.until(lambda: runs.every_task_ran(after, 1), "every task ran after it")
    all_resumed = int(time.time() * 1000)
    async with _event_stream(group.url) as stream:
        position = await stream.last_id()
        await workers.until(lambda: runs.every_task_ran(all_resumed, 2), "two more runs each")
        succeeded = [e for e in await stream.read(position) if e.event.kind == EventKind.SUCCEEDED]
    assert alive(workers) == [None, None]
    assert workers.stop() == [0, 0]

    async with app_for(group.url) as app:
        tasks = {task.id: task for task in await app.list_tasks()}
    started = await runs.starts()
    twice = {(t, o) for t in ids for o, n in started[t].items() if n > 1}
    lost = sum(_lost(tasks[t], first[t], started[t]) for t in ids)
    missed = sum(t.counts.get(Outcome.MISSED.value, 0) for t in tasks.values())
    resume_s = (resumed - down_at) / 1000
    print(
        f"\nfailover from :{old_primary} to :{await group.primary_port()}; runs resumed "
        f"{resume_s:.2f} s after the primary died, every task {(all_resumed - down_at) / 1000:.2f}"
        f" s after; occurrences run twice: {len(twice)}; lost: {lost} (of "
        f"{sum(len(r) for r in started.values())} run, {missed} missed); events read through "
        f"Sentinel after the failover: {len(succeeded)} succeeded"
    )
    assert await group.primary_port() != old_primary, "Sentinel did not fail over"
    assert resume_s <= RESUME_WITHIN_S, f"runs resumed only {resume_s:.1f} s after the failover"
    assert not twice, f"occurrences run twice: {sorted(twice)[:10]}"
    assert sorted(tasks) == ids, f"tasks gone: {sorted(set(ids) - set(tasks))}"
    unscheduled = [t.id for t in tasks.values() if t.next_run_time is None or t.parked_reason]
    assert not unscheduled, f"tasks no longer scheduled: {unscheduled}"
    assert succeeded, "no event of a run after the failover reached the stream"


class _Runs:
    """The run starts the recording jobs wrote, per task and occurrence."""

    def __init__(self, workers: WorkerFleet, client: Any, ids: list[str]) -> None:
        self.workers, self.client, self.ids = workers, client, ids

    async def starts(self) -> dict[str, Counter[int]]:
        """Starts per occurrence (ms), per task."""
        found: dict[str, Counter[int]] = {task: Counter() for task in self.ids}
        for start in await self.workers.starts(self.client):
            found[start["task"]][start["occurrence"]] += 1
        return found

    async def every_task_ran(self, after_ms: int, count: int) -> bool:
        """Every task started ``count`` occurrences due after ``after_ms``."""
        runs = await self.starts()
        return all(len([o for o in runs[t] if o > after_ms]) >= count for t in self.ids)

    async def first_start_due_after(self, after_ms: int) -> int | None:
        """When the first run of an occurrence due after ``after_ms`` started (ms)."""
        starts = await self.workers.starts(self.client)
        return min((s["start"] for s in starts if s["occurrence"] > after_ms), default=None)


@contextlib.asynccontextmanager
async def _event_stream(url: str) -> AsyncIterator[EventStream]:
    """The event stream, read through the Sentinels like any other connection."""
    client = redis_client(url, patient=True)
    try:
        yield EventStream(client, prefix=PREFIX)
    finally:
        await client.aclose()


async def _schedule(url: str, ids: list[str]) -> dict[str, int]:
    """Schedule a 1 s task per id through the app; each task's first occurrence (ms)."""
    first = {}
    async with app_for(url) as app:
        for task in ids:
            descriptor = RecurrentTaskDescriptor(id=task, name="RecordingJob", interval=1)
            info = await app.bus.schedule_task(descriptor)
            assert info.next_run_time is not None
            first[task] = to_ms(info.next_run_time)
    return first


def _lost(task: TaskInfo, first: int, runs: Counter[int]) -> int:
    """Occurrences of ``task`` due so far that neither ran nor were recorded as missed
    or skipped."""
    assert task.next_run_time is not None
    due = range(first, to_ms(task.next_run_time), INTERVAL_MS)
    ran = len([o for o in due if o in runs])
    accounted = ran + task.counts.get(Outcome.MISSED.value, 0)
    return max(0, len(due) - accounted - task.counts.get(Outcome.SKIPPED.value, 0))
