"""Hostile and careless input: data written straight into Redis, oversized or non-JSON
task data, concurrent and repeated scheduling, cancels racing claims (scenarios 12-15).
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import random
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from cml_jobs import (
    InvalidTaskDataError,
    PayloadTooLargeError,
    RecurrentTaskDescriptor,
    ScheduledTaskDescriptor,
    TaskExistsError,
    TaskInfo,
    TaskNotFoundError,
)
from cml_jobs._timing import to_ms
from tests.reliability.conftest import (
    app_for,
    per_occurrence,
    stay_alive,
    wait_for_occurrences,
)
from tests.workers import WorkerFleet

pytestmark = [pytest.mark.reliability, pytest.mark.redis]


class _Exploit:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _valid(task_id: str, **fields: Any) -> dict[str, Any]:
    return {"kind": "recurrent", "id": task_id, "name": "RecordingJob", "interval": 1.0, **fields}


def _hostile_descriptors(marker: Path) -> dict[str, bytes]:
    """Task id -> what is written as its stored descriptor."""
    flipped = bytearray(json.dumps(_valid("flipped")).encode())
    for at in (3, 17, 29):
        flipped[at] ^= 0xFF
    return {
        "bad-json": b'{"kind": "recurrent", "id": "bad-json", "name": ',
        "missing-fields": b'{"kind": "recurrent", "id": "missing-fields"}',
        "interval-zero": json.dumps(_valid("interval-zero", interval=0)).encode(),
        "interval-negative": json.dumps(_valid("interval-negative", interval=-5)).encode(),
        "nan-interval": json.dumps(_valid("nan-interval", interval=float("nan"))).encode(),
        "nan-data": json.dumps(_valid("nan-data", data={"sleep": float("nan")})).encode(),
        "unknown-field": json.dumps(_valid("unknown-field", exec="rm -rf /")).encode(),
        "pickle": pickle.dumps(_Exploit(marker)),
        "flipped": bytes(flipped),
    }


async def _write_task(
    client: aioredis.Redis, prefix: str, task_id: str, descriptor: bytes, due_ms: int
) -> None:
    """A task as the store lays it out (see stores/redis.py), with whatever descriptor."""
    key = f"{prefix}task:{task_id}"
    await client.hset(
        key,
        mapping={"descriptor": descriptor, "due_at": due_ms},
    )
    await client.zadd(f"{prefix}due", {task_id: due_ms})


async def test_hostile_descriptors_in_redis_are_parked_and_never_executed(
    redis_client: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
    workers_factory: Any,
    tmp_path: Path,
) -> None:
    """Descriptors written straight into Redis (bad JSON, missing fields, interval <= 0,
    NaN, an unknown field, a pickle with __reduce__, flipped bytes), and the same
    pickle queued as an arq job: no code runs (marker absent), each task is parked with a
    reason, no worker exits, a valid task beside them runs once per occurrence. A valid
    task due in year 9999 stays scheduled and harms nothing."""
    marker = tmp_path / "pwned"
    workers: WorkerFleet = workers_factory(redis_url, key_prefix)
    workers.start(2)
    await workers.wait_ready(redis_client)
    async with app_for(redis_url, key_prefix) as app:
        await app.bus.schedule_task(
            RecurrentTaskDescriptor(id="good", name="RecordingJob", interval=1)
        )
        now = to_ms(app.clock.now())
        hostile = _hostile_descriptors(marker)
        for task_id, descriptor in hostile.items():
            await _write_task(redis_client, key_prefix, task_id, descriptor, now)
        end_of_time = to_ms(datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc))
        year_9999 = _valid("year-9999", interval=86400, start_at="9999-12-31T23:59:59Z")
        await _write_task(
            redis_client, key_prefix, "year-9999", json.dumps(year_9999).encode(), end_of_time
        )
        await redis_client.set("arq:job:evil", pickle.dumps(_Exploit(marker)))
        await redis_client.zadd(workers.queue, {"evil": now})

        async def all_handled() -> dict[str, Any] | None:
            # Every hostile task parked, the queued pickle taken off the queue by a worker
            # (so it was looked at), and the valid task run on.
            tasks = {t.id: t for t in await app.list_tasks()}
            parked = all(tasks[i].parked_reason for i in hostile if i in tasks)
            consumed = await redis_client.zscore(workers.queue, "evil") is None
            runs = per_occurrence(await workers.records(redis_client), "good")
            return tasks if parked and consumed and len(runs) >= 4 else None

        tasks = await workers.until(all_handled, "hostile tasks parked, the pickle consumed")
        await app.bus.cancel_task("good")
    assert workers.stop() == [0, 0]

    runs = per_occurrence(await workers.records(redis_client), "good")
    parked = {i: tasks[i].parked_reason for i in hostile if i in tasks}
    for task_id, reason in parked.items():
        print(f"{task_id}: {str(reason)[:110]}")
    print(f"good: {len(runs)} occurrences, {sum(runs.values())} runs; marker {marker.exists()}")
    assert not marker.exists(), "a pickle was executed"
    assert sorted(parked) == sorted(hostile), "a hostile task vanished"
    unexplained = {i: r for i, r in parked.items() if "descriptor" not in str(r)}
    assert unexplained == {}, f"parked without saying the descriptor is bad: {unexplained}"
    assert all(tasks[i].counts == {"parked": 1} for i in hostile), "parked more than once"
    assert set(runs.values()) == {1} and len(runs) >= 4, runs
    assert tasks["good"].parked_reason is None
    assert tasks["year-9999"].parked_reason is None, "a valid far-future task was parked"


async def test_malformed_store_fields_are_parked_or_dropped_and_dispatching_goes_on(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str, workers_factory: Any
) -> None:
    """Store entries corrupted in place while workers run: a due_at that is not a number
    is parked with a reason that says so; a runs entry without a fence is dropped; a due
    time past year 9999 is read as the latest time there is; a task whose descriptor is
    gone shows as unreadable. No worker exits, and the valid task beside them goes on
    running once per occurrence."""
    workers: WorkerFleet = workers_factory(redis_url, key_prefix)
    workers.start(2)
    await workers.wait_ready(redis_client)
    async with app_for(redis_url, key_prefix) as app:
        await app.bus.schedule_task(
            RecurrentTaskDescriptor(id="good", name="RecordingJob", interval=1)
        )
        await wait_for_occurrences(workers, redis_client, "good", 2)
        now = to_ms(app.clock.now())
        valid = json.dumps(_valid("x")).encode()
        await _write_task(redis_client, key_prefix, "text-due", valid, now)
        await redis_client.hset(f"{key_prefix}task:text-due", "due_at", "soon")
        await _write_task(redis_client, key_prefix, "no-descriptor", valid, now)
        await redis_client.hdel(f"{key_prefix}task:no-descriptor", "descriptor")
        await redis_client.zadd(f"{key_prefix}runs", {"garbage": 0})
        await _write_task(redis_client, key_prefix, "far", valid, 253402300800000)  # 10000 AD
        corrupted_at = to_ms(app.clock.now())
        # The store reads what was written as tasks: the corruption is where the workers
        # look, not in keys nobody reads.
        listed = {t.id for t in await app.list_tasks()}
        assert {"text-due", "no-descriptor", "far"} <= listed, listed

        async def handled() -> dict[str, TaskInfo] | None:
            tasks = {t.id: t for t in await app.list_tasks()}
            dropped = await redis_client.zscore(f"{key_prefix}runs", "garbage") is None
            runs = per_occurrence(await workers.records(redis_client), "good")
            ran_on = len([o for o in runs if o > corrupted_at]) >= 3
            return tasks if tasks["text-due"].parked_reason and dropped and ran_on else None

        tasks = await workers.until(handled, "the bad due_at parked, the bad run dropped")
        await app.bus.cancel_task("good")
    errors = [
        line
        for p in workers.processes
        for line in workers.stderr(p).splitlines()
        if "Error" in line or "ERROR" in line
    ]
    codes = workers.stop()

    runs = per_occurrence(await workers.records(redis_client), "good")
    after = [o for o in runs if o > corrupted_at]
    for task_id in ("text-due", "no-descriptor", "far"):
        task = tasks[task_id]
        print(f"{task_id}: parked {task.parked_reason!r}, next {task.next_run_time}, {task.counts}")
    print(f"good: {len(runs)} occurrences, {len(after)} after the corruption")
    print(f"exit codes {codes}; errors logged:")
    print("\n".join(sorted(set(errors))))
    assert codes == [0, 0]
    reason = tasks["text-due"].parked_reason
    assert reason is not None and "due_at" in reason and "soon" in reason, reason
    assert tasks["text-due"].counts == {"parked": 1}
    far = tasks["far"]
    assert far.parked_reason is None and far.next_run_time is not None
    assert far.next_run_time.year == 9999, far.next_run_time
    assert (tasks["no-descriptor"].descriptor, tasks["no-descriptor"].name) == (None, "")
    assert set(runs.values()) == {1}


async def test_oversized_or_non_json_data_is_refused_and_nothing_is_written(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str
) -> None:
    """1 MB and 20 MB of data raise PayloadTooLargeError (limit 64 KiB); values that are
    not JSON (an object, bytes, a set, NaN, a datetime) raise InvalidTaskDataError; no key
    is written."""
    refused: dict[str, str] = {}
    async with app_for(redis_url, key_prefix) as app:
        for label, size in (("1 MB", 1 << 20), ("20 MB", 20 << 20)):
            started = time.perf_counter()
            with pytest.raises(PayloadTooLargeError):
                await app.bus.schedule_task(
                    RecurrentTaskDescriptor(
                        id="big", name="RecordingJob", interval=1, data={"note": "x" * size}
                    )
                )
            refused[label] = f"PayloadTooLargeError in {time.perf_counter() - started:.2f} s"
        odd: dict[str, Any] = {
            "object": object(),
            "bytes": b"\x00",
            "set": {1, 2},
            "nan": float("nan"),
            "datetime": datetime.now(timezone.utc),
        }
        for label, value in odd.items():
            with pytest.raises(InvalidTaskDataError) as caught:
                await app.bus.schedule_task(
                    RecurrentTaskDescriptor(
                        id="odd", name="RecordingJob", interval=1, data={"sleep": value}
                    )
                )
            refused[label] = type(caught.value).__name__
    keys = [key async for key in redis_client.scan_iter(match=f"{key_prefix}*")]
    print(refused, f"keys written: {len(keys)}")
    assert keys == []


async def test_concurrent_scheduling_stores_one_task_and_an_ended_id_is_reusable_at_once(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str, workers_factory: Any
) -> None:
    """50 concurrent schedule_task calls with one id store 1 task; a different payload
    without replace=True raises TaskExistsError; once a one-time task has run and ended
    (it stays listed as ended), its id can be scheduled again at once, and runs again."""
    workers: WorkerFleet = workers_factory(redis_url, key_prefix)
    workers.start(1)
    await workers.wait_ready(redis_client)
    async with app_for(redis_url, key_prefix) as app:
        same = RecurrentTaskDescriptor(id="dup", name="RecordingJob", interval=3600)
        results = await asyncio.gather(*(app.bus.schedule_task(same) for _ in range(50)))
        stored = len([k async for k in redis_client.scan_iter(f"{key_prefix}task:*")])
        with pytest.raises(TaskExistsError):
            await app.bus.schedule_task(same.model_copy(update={"interval": timedelta(hours=2)}))
        await app.bus.cancel_task("dup")

        ends: list[float] = []
        for _ in range(2):
            scheduled = time.perf_counter()
            await app.bus.schedule_task(
                ScheduledTaskDescriptor(
                    id="again",
                    name="RecordingOnceJob",
                    scheduled_at=app.clock.now() + timedelta(seconds=0.2),
                )
            )

            async def ran_and_ended() -> bool:
                ran = len(await workers.records(redis_client)) > len(ends)
                live = {t.id for t in await app.list_tasks() if t.ended_at is None}
                return ran and "again" not in live  # ended: listed until its retention

            await workers.until(ran_and_ended, "the one-time task ran and ended")
            ends.append(time.perf_counter() - scheduled)
    assert workers.stop() == [0]

    records = await workers.records(redis_client)
    print(f"50 concurrent calls -> {stored} stored; 'again' ran and ended in {ends} s")
    assert stored == 1 and {r.id for r in results} == {"dup"}
    assert Counter(r["task"] for r in records) == {"again": 2}
    assert len({r["occurrence"] for r in records}) == 2


async def test_no_run_starts_after_a_successful_cancel(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str, workers_factory: Any
) -> None:
    """100 one-time tasks, each cancelled within +-10 ms of its due time while 2 workers
    claim them, and 3 tasks cancelled 1 s into a 3 s run. A cancel returns how many runs
    were under way (claimed): after one that returned 0, no run of its task starts; no
    task starts more runs than its cancel counted (a counted run may be stopped before its
    body), and the cancelled long runs are stopped."""
    workers: WorkerFleet = workers_factory(redis_url, key_prefix)
    workers.start(2)
    await workers.wait_ready(redis_client)
    rng = random.Random(15)
    cancelled: dict[str, int] = {}  # task id -> when cancel_task returned (ms)
    under_way: dict[str, int] = {}  # task id -> runs the cancel reported as started
    async with app_for(redis_url, key_prefix) as app:
        base = app.clock.now() + timedelta(seconds=1)
        dues = {f"race-{i}": base + timedelta(milliseconds=25 * i) for i in range(100)}
        for task_id, due in dues.items():
            await app.bus.schedule_task(
                ScheduledTaskDescriptor(id=task_id, name="RecordingOnceJob", scheduled_at=due)
            )
        for i in range(3):
            await app.bus.schedule_task(
                RecurrentTaskDescriptor(
                    id=f"long-{i}",
                    name="RecordingJob",
                    interval=60,
                    start_at=base,
                    data={"sleep": 3},
                )
            )

        async def cancel(task_id: str, at: datetime) -> None:
            await asyncio.sleep(max((at - app.clock.now()).total_seconds(), 0))
            try:
                started = await app.bus.cancel_task(task_id)
            except TaskNotFoundError:
                return  # it had run and ended: not a successful cancel
            cancelled[task_id] = int(time.time() * 1000)
            under_way[task_id] = started

        plan = [
            (task_id, due + timedelta(milliseconds=rng.uniform(-10, 10)))
            for task_id, due in dues.items()
        ]
        plan += [(f"long-{i}", base + timedelta(seconds=1)) for i in range(3)]
        await asyncio.gather(*(cancel(task_id, at) for task_id, at in plan))
        await stay_alive(workers, 3)
    assert workers.stop() == [0, 0]

    starts = await workers.starts(redis_client)
    records = await workers.records(redis_client)
    started_tasks = Counter(s["task"] for s in starts)
    late = [
        s
        for s in starts
        if s["task"] in cancelled and not under_way[s["task"]] and s["start"] > cancelled[s["task"]]
    ]
    races = [t for t in cancelled if t.startswith("race-")]
    reported = {t: n for t, n in under_way.items() if n}
    ran_uncancelled = [t for t in dues if t in started_tasks and t not in cancelled]
    long_finished = [r for r in records if r["task"].startswith("long-")]
    race_under_way = [t for t in reported if t.startswith("race-")]
    body_after_cancel = [
        s["task"]
        for s in starts
        if s["task"] in race_under_way and s["start"] > cancelled[s["task"]]
    ]
    print(
        f"race: {len(races)}/100 cancels succeeded, {len(race_under_way)} of them while the "
        f"run was under way ({len(body_after_cancel)} of these bodies logged their start after "
        f"the cancel returned), {len(ran_uncancelled)} ran and ended first; long: "
        f"{sum(started_tasks[f'long-{i}'] for i in range(3))} started, {len(long_finished)} "
        f"finished; runs started after a cancel that reported none under way: {len(late)}"
    )
    assert late == [], f"started after a cancel that reported no run under way: {late}"
    assert all(started_tasks[task] <= n for task, n in reported.items()), (
        f"a cancelled task started more runs than its cancel counted: {reported} vs {started_tasks}"
    )
    assert set(races) | set(ran_uncancelled) == set(dues), "a task neither ran nor was cancelled"
    assert all(under_way[f"long-{i}"] == 1 for i in range(3)), "a long run not reported"
    assert long_finished == [], "a cancelled run went on to the end"
