"""The ``ScheduleStore`` contract: one suite that every store must pass.

Each test runs on every store through the ``store`` fixture: the memory store, the Redis
store, the Redis store holding descriptors signed by ``DescriptorCodec`` (the store must
hand them back byte for byte), and the PostgreSQL store (a schema of the test's own).
Time never moves by itself: every ``now`` is a fixed aware UTC datetime derived from
``T0``. The Redis-only tests at the end write hostile data straight into Redis.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
import redis.asyncio
from arq.connections import ArqRedis

from cml_jobs import RecurrentTaskDescriptor
from cml_jobs._codec import DescriptorCodec
from cml_jobs.exceptions import StoreUnavailableError, TaskExistsError
from cml_jobs.stores import (
    ClaimedRun,
    ClaimStatus,
    Decision,
    DueTask,
    Finish,
    InMemoryScheduleStore,
    NewTask,
    Outcome,
    Run,
    ScheduleStore,
)
from cml_jobs.stores.redis import RedisScheduleStore

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
SEC = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)
YEAR = timedelta(days=365)
LEASE = 30 * SEC
SIGNING_KEY = "contract-suite-key"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Tasks:
    """The suite's tasks, their descriptors encoded as an app with ``codec`` writes them."""

    codec: DescriptorCodec

    @staticmethod
    def descriptor(task_id: str = "t1", version: int = 1) -> RecurrentTaskDescriptor:
        return RecurrentTaskDescriptor(id=task_id, name="Job", interval=60, data={"v": version})

    def text(self, task_id: str = "t1", version: int = 1) -> str:
        return self.codec.encode(self.descriptor(task_id, version))

    def new(
        self,
        task_id: str = "t1",
        due_at: datetime = T0,
        ready_at: datetime | None = None,
        *,
        version: int = 1,
        trace_context: str | None = None,
    ) -> NewTask:
        text = self.text(task_id, version)
        return NewTask(task_id, text, due_at, ready_at or due_at, trace_context)


PLAIN = Tasks(DescriptorCodec())


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("redis-signed", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def flavour(request: pytest.FixtureRequest) -> str:
    """Which store the suite runs on, and how its descriptors are encoded."""
    name: str = request.param
    return name


@pytest.fixture
def store(flavour: str, request: pytest.FixtureRequest) -> ScheduleStore:
    """An empty store of the flavour (overrides the conftest one: adds "redis-signed")."""
    if flavour == "memory":
        return InMemoryScheduleStore()
    if flavour == "postgres":
        found: ScheduleStore = request.getfixturevalue("postgres_store")
        return found
    client: redis.asyncio.Redis = request.getfixturevalue("redis_client")
    return RedisScheduleStore(client, prefix=request.getfixturevalue("key_prefix"))


@pytest.fixture
def tasks(flavour: str) -> Tasks:
    """The suite's descriptors: signed under ``SIGNING_KEY`` for "redis-signed"."""
    return Tasks(DescriptorCodec(SIGNING_KEY if flavour == "redis-signed" else None))


def decision(
    task_id: str = "t1",
    expected: datetime = T0,
    *,
    run: bool = True,
    next_due: datetime | None = None,
    max_instances: int = 1,
    missed: int = 0,
) -> Decision:
    """Run the occurrence at ``expected`` (or not), and move on one minute unless told."""
    following = expected + MINUTE if next_due is None else next_due
    return Decision(
        task_id,
        expected_due_at=expected,
        run_at=expected if run else None,
        next_due_at=following,
        next_ready_at=following,
        max_instances=max_instances,
        missed=missed,
    )


def last_decision(task_id: str = "t1", expected: datetime = T0, max_instances: int = 1) -> Decision:
    """Run the occurrence at ``expected``; the task has no occurrence after it."""
    return Decision(task_id, expected, expected, None, None, max_instances=max_instances)


def parking(task_id: str = "t1", expected: datetime = T0, reason: str = "bad data") -> Decision:
    """Park the task, as the dispatcher does with a descriptor that cannot run."""
    return Decision(task_id, expected, None, None, park_reason=reason)


async def claim_run(
    store: ScheduleStore, d: Decision | None = None, *, lease_until: datetime = T0 + LEASE
) -> Run:
    [result] = await store.claim([d or decision()], lease_until=lease_until)
    assert result.status is ClaimStatus.CLAIMED
    assert result.run is not None
    return result.run


async def status_of(store: ScheduleStore, d: Decision) -> ClaimStatus:
    [result] = await store.claim([d], lease_until=T0 + LEASE)
    return result.status


async def park(
    store: ScheduleStore, task_id: str = "t1", reason: str = "bad data", expected: datetime = T0
) -> None:
    assert await status_of(store, parking(task_id, expected, reason)) is ClaimStatus.PARKED


async def finish(
    store: ScheduleStore,
    run: Run,
    outcome: Outcome = Outcome.SUCCEEDED,
    *,
    error: str | None = None,
    end_task: bool = False,
    started_at: datetime | None = None,
) -> bool:
    [done] = await store.finish([Finish(run, outcome, error, end_task, started_at)])
    return done


async def due(store: ScheduleStore, now: datetime, limit: int = 100) -> list[DueTask]:
    return (await store.poll(now, limit)).tasks


async def next_ready(store: ScheduleStore) -> datetime | None:
    """The earliest ready time of any schedulable task: poll at a time when none is due."""
    return (await store.poll(T0 - YEAR, 100)).next_ready_at


async def reclaim(
    store: ScheduleStore, now: datetime, lease_until: datetime | None = None, limit: int = 10
) -> list[ClaimedRun]:
    until = now + LEASE if lease_until is None else lease_until
    return await store.reclaim_expired(now=now, lease_until=until, limit=limit)


# -- add -------------------------------------------------------------------------------


async def test_add_writes_a_new_task_due_at_its_first_occurrence(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """A new task is stored with its descriptor and first due time."""
    assert await store.add(tasks.new(), replace=False) is True
    state = await store.get("t1")
    assert state is not None
    assert (state.task_id, state.descriptor_json, state.due_at) == ("t1", tasks.text("t1"), T0)
    assert (state.paused, state.parked_reason, state.running) == (False, None, 0)
    assert (state.last_run_at, state.last_outcome, state.last_error) == (None, None, None)
    assert state.counts == {}


@pytest.mark.parametrize("replace", [False, True])
async def test_adding_the_same_descriptor_again_changes_nothing(
    store: ScheduleStore, tasks: Tasks, replace: bool
) -> None:
    """Scheduling is idempotent: the same descriptor again returns False and keeps the state."""
    await store.add(tasks.new(), replace=False)
    run = await claim_run(store)
    assert await store.add(tasks.new(due_at=T0 + 9 * MINUTE), replace=replace) is False
    state = await store.get("t1")
    assert state is not None
    assert (state.due_at, state.running) == (T0 + MINUTE, 1)
    assert await store.extend([run], lease_until=T0 + LEASE) == [True]


async def test_adding_a_different_descriptor_without_replace_raises(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """Another descriptor under an existing id raises TaskExistsError and keeps the old task."""
    await store.add(tasks.new(), replace=False)
    with pytest.raises(TaskExistsError, match="'t1'"):
        await store.add(tasks.new(version=2, due_at=T0 + MINUTE), replace=False)
    state = await store.get("t1")
    assert state is not None
    assert (state.descriptor_json, state.due_at) == (tasks.text("t1"), T0)


async def test_replacing_a_task_invalidates_the_fences_of_its_old_runs(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """replace=True drops the old task and its runs; their fences stop being valid."""
    await store.add(tasks.new(), replace=False)
    old = await claim_run(store)
    assert await store.add(tasks.new(version=2, due_at=T0 + 5 * MINUTE), replace=True) is True
    state = await store.get("t1")
    assert state is not None
    assert (state.descriptor_json, state.due_at, state.running) == (
        tasks.text("t1", 2),
        T0 + 5 * MINUTE,
        0,
    )
    assert await store.extend([old], lease_until=T0 + LEASE) == [False]
    assert await finish(store, old) is False
    assert await reclaim(store, T0 + LEASE) == []
    assert await next_ready(store) == T0 + 5 * MINUTE


async def test_fences_are_unique_and_increase_across_tasks_and_replacements(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """Every run gets a fence larger than any before it, even after its task was replaced."""
    await store.add(tasks.new("a"), replace=False)
    await store.add(tasks.new("b"), replace=False)
    first = await claim_run(store, decision("a"))
    second = await claim_run(store, decision("b"))
    await store.add(tasks.new("a", version=2), replace=True)
    third = await claim_run(store, decision("a"))
    assert first.fence < second.fence < third.fence


async def test_descriptors_come_back_byte_for_byte(store: ScheduleStore, tasks: Tasks) -> None:
    """The descriptor is opaque text: poll, get, list and reclaim_expired hand back exactly
    what add() was given, which the codec that wrote it still reads."""
    opaque = 'hmac-sha256:not-a-mac:{"ünïcode": "✓", "bar": "|", "quote": "\\""}'
    await store.add(tasks.new("t1"), replace=False)
    await store.add(NewTask("t2", opaque, T0, T0), replace=False)
    [first, second] = await due(store, T0)
    assert (first.descriptor_json, second.descriptor_json) == (tasks.text("t1"), opaque)
    assert [s.descriptor_json for s in await store.list()] == [tasks.text("t1"), opaque]
    await claim_run(store, decision("t1"), lease_until=T0 + SEC)
    [again] = await reclaim(store, T0 + SEC)
    assert again.descriptor_json == tasks.text("t1")
    assert tasks.codec.decode(again.descriptor_json) == tasks.descriptor("t1")


# -- remove, get, list -----------------------------------------------------------------


async def test_remove_deletes_the_task_and_invalidates_its_runs(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """A removed task is gone and never due, and its claimed run can no longer go on."""
    await store.add(tasks.new(), replace=False)
    run = await claim_run(store)
    assert await store.remove("t1") == 1  # claimed and not finished: under way
    assert await store.extend([run], lease_until=T0 + LEASE) == [False]
    assert await store.get("t1") is None
    assert await store.list() == []
    batch = await store.poll(T0 + MINUTE, 10)
    assert (batch.tasks, batch.next_ready_at) == ([], None)
    assert await finish(store, run) is False
    assert await reclaim(store, T0 + YEAR) == []


async def test_removing_an_unknown_task_returns_none(store: ScheduleStore) -> None:
    """remove() reports None when there is no such task."""
    assert await store.remove("nope") is None


@pytest.mark.parametrize("under_way", [0, 1, 2])
async def test_remove_counts_the_runs_under_way(
    store: ScheduleStore, tasks: Tasks, under_way: int
) -> None:
    """remove() counts the runs claimed and not finished (a finished one is not counted),
    and every one of them stops being valid."""
    await store.add(tasks.new(), replace=False)
    done = await claim_run(store, decision(max_instances=2))
    await finish(store, done)
    runs = [
        await claim_run(store, decision(expected=T0 + k * MINUTE, max_instances=2))
        for k in range(1, under_way + 1)
    ]
    assert await store.remove("t1") == under_way
    assert await store.extend(runs, lease_until=T0 + LEASE) == [False] * under_way


async def test_after_remove_no_run_of_the_task_is_claimed_or_re_issued(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """Once remove() returns, the task's occurrences give GONE, its expired runs are not
    re-issued, and extend and finish of its runs answer False."""
    await store.add(tasks.new(), replace=False)
    first = await claim_run(store, decision(max_instances=2), lease_until=T0 + SEC)
    d = decision(expected=T0 + MINUTE, max_instances=2)
    second = await claim_run(store, d, lease_until=T0 + SEC)
    assert await store.remove("t1") == 2
    assert await status_of(store, decision(expected=T0 + 2 * MINUTE)) is ClaimStatus.GONE
    assert await reclaim(store, T0 + MINUTE) == []
    assert await store.extend([first, second], lease_until=T0 + LEASE) == [False, False]
    finishes = [Finish(first, Outcome.SUCCEEDED), Finish(second, Outcome.FAILED, "boom")]
    assert await store.finish(finishes) == [False, False]
    assert await store.get("t1") is None


async def test_a_re_issued_run_counts_once_as_under_way(store: ScheduleStore, tasks: Tasks) -> None:
    """A run re-issued after its lease expired is one run under way, not two: remove()
    counts it once, and neither its old nor its new fence is valid afterwards."""
    await store.add(tasks.new(), replace=False)
    run = await claim_run(store, lease_until=T0 + SEC)
    [again] = await reclaim(store, T0 + SEC)
    assert await store.extend([run], lease_until=T0 + LEASE) == [False]
    assert await store.remove("t1") == 1
    assert await store.extend([again.run], lease_until=T0 + LEASE) == [False]


async def test_get_returns_none_for_an_unknown_task(store: ScheduleStore) -> None:
    """get() of an id never added is None."""
    assert await store.get("nope") is None


async def test_list_returns_every_task_ordered_by_id(store: ScheduleStore, tasks: Tasks) -> None:
    """list() returns all tasks, paused and parked included, sorted by id."""
    for task_id in ["c", "a", "d", "b"]:
        await store.add(tasks.new(task_id), replace=False)
    await store.set_paused("c", paused=True, due_at=None, ready_at=None)
    await park(store, "d", "job class missing")
    states = await store.list()
    assert [s.task_id for s in states] == ["a", "b", "c", "d"]
    assert [s.paused for s in states] == [False, False, True, False]
    assert [s.parked_reason for s in states] == [None, None, None, "job class missing"]
    assert states[0] == await store.get("a")


async def test_list_of_an_empty_store_is_empty(store: ScheduleStore) -> None:
    """A fresh store lists no tasks."""
    assert await store.list() == []


# -- pause, resume ---------------------------------------------------------------------


async def test_a_paused_task_is_never_due(store: ScheduleStore, tasks: Tasks) -> None:
    """Pausing takes a task out of poll(), its tasks and its next ready time, keeping it."""
    await store.add(tasks.new(), replace=False)
    assert await store.set_paused("t1", paused=True, due_at=None, ready_at=None) is True
    state = await store.get("t1")
    assert state is not None and state.paused is True
    assert await due(store, T0 + MINUTE) == []
    assert await next_ready(store) is None


async def test_resuming_makes_the_task_due_at_the_given_time(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """A resumed task is due at ``due_at`` and claimable from ``ready_at``."""
    await store.add(tasks.new(), replace=False)
    await store.set_paused("t1", paused=True, due_at=None, ready_at=None)
    due_at, ready_at = T0 + 10 * MINUTE, T0 + 10 * MINUTE + 5 * SEC
    assert await store.set_paused("t1", paused=False, due_at=due_at, ready_at=ready_at) is True
    state = await store.get("t1")
    assert state is not None
    assert (state.paused, state.due_at) == (False, due_at)
    assert await due(store, due_at) == []
    assert await due(store, ready_at) == [DueTask("t1", due_at, tasks.text("t1"))]
    assert await next_ready(store) == ready_at


async def test_resuming_with_no_next_occurrence_leaves_the_task_not_due(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """Resumed with ``due_at=None``, a task has no next occurrence and is never due."""
    await store.add(tasks.new(), replace=False)
    await store.set_paused("t1", paused=True, due_at=None, ready_at=None)
    await store.set_paused("t1", paused=False, due_at=None, ready_at=None)
    state = await store.get("t1")
    assert state is not None and (state.paused, state.due_at) == (False, None)
    assert await due(store, T0 + MINUTE) == []


@pytest.mark.parametrize("paused", [True, False])
async def test_pausing_or_resuming_an_unknown_task_returns_false(
    store: ScheduleStore, paused: bool
) -> None:
    """set_paused() reports False when there is no such task."""
    assert await store.set_paused("nope", paused=paused, due_at=T0, ready_at=T0) is False


# -- parking by claim ------------------------------------------------------------------


async def test_a_claim_with_a_park_reason_parks_the_task_and_keeps_it(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """PARKED: the task is kept with its reason and the parked outcome, is never polled
    again, and later claims of it give GONE."""
    await store.add(tasks.new(), replace=False)
    [result] = await store.claim([parking(reason="unknown job 'Job'")], lease_until=T0 + LEASE)
    assert (result.status, result.run) == (ClaimStatus.PARKED, None)
    state = await store.get("t1")
    assert state is not None
    assert state.parked_reason == "unknown job 'Job'"
    assert (state.last_outcome, state.counts, state.running) == (Outcome.PARKED, {"parked": 1}, 0)
    assert await due(store, T0 + YEAR) == []
    assert await next_ready(store) is None
    assert await status_of(store, decision()) is ClaimStatus.GONE


async def test_a_park_reason_overrides_the_rest_of_the_decision(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """With park_reason, run_at, next_due_at and missed are ignored: no run is handed out,
    no miss is counted and the due time stays as it was."""
    await store.add(tasks.new(), replace=False)
    d = Decision("t1", T0, T0, T0 + MINUTE, T0 + MINUTE, missed=3, park_reason="bad data")
    [result] = await store.claim([d], lease_until=T0 + LEASE)
    assert (result.status, result.run) == (ClaimStatus.PARKED, None)
    state = await store.get("t1")
    assert state is not None
    assert (state.due_at, state.running, state.counts) == (T0, 0, {"parked": 1})
    assert await reclaim(store, T0 + YEAR) == []


async def test_an_empty_park_reason_still_parks(store: ScheduleStore, tasks: Tasks) -> None:
    """park_reason="" is a reason (only None means no park): the task is parked, not run."""
    await store.add(tasks.new(), replace=False)
    d = Decision("t1", T0, T0, T0 + MINUTE, park_reason="")
    assert await status_of(store, d) is ClaimStatus.PARKED


async def test_a_claim_that_parks_invalidates_the_runs_under_way(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """Parking a task whose earlier occurrence is running ends that run's validity: extend
    and finish answer False, and it is never re-issued."""
    await store.add(tasks.new(), replace=False)
    run = await claim_run(store, lease_until=T0 + SEC)
    await park(store, expected=T0 + MINUTE)
    assert await store.extend([run], lease_until=T0 + LEASE) == [False]
    assert await finish(store, run) is False
    assert await reclaim(store, T0 + MINUTE) == []
    state = await store.get("t1")
    assert state is not None
    assert (state.parked_reason, state.running, state.counts) == ("bad data", 0, {"parked": 1})


@pytest.mark.parametrize("how", ["stale", "removed", "paused", "parked", "never added"])
async def test_raced_and_gone_win_over_a_park_reason(
    store: ScheduleStore, tasks: Tasks, how: str
) -> None:
    """A parking decision applies only to a task still in the schedule at the expected due
    time: otherwise it gives RACED (stale) or GONE, and writes nothing."""
    if how != "never added":
        await store.add(tasks.new(), replace=False)
    if how == "removed":
        await store.remove("t1")
    elif how == "paused":
        await store.set_paused("t1", paused=True, due_at=None, ready_at=None)
    elif how == "parked":
        await park(store, reason="first reason")
    before = await store.get("t1")
    expected = T0 - MINUTE if how == "stale" else T0
    status = await status_of(store, parking(expected=expected, reason="second reason"))
    assert status is (ClaimStatus.RACED if how == "stale" else ClaimStatus.GONE)
    assert await store.get("t1") == before


async def test_resuming_a_parked_task_does_not_unpark_it(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """Resume clears the pause only: a parked task stays out of the schedule."""
    await store.add(tasks.new(), replace=False)
    await park(store)
    await store.set_paused("t1", paused=True, due_at=None, ready_at=None)
    await store.set_paused("t1", paused=False, due_at=T0, ready_at=T0)
    assert await due(store, T0 + MINUTE) == []
    assert await status_of(store, decision()) is ClaimStatus.GONE


# -- poll ------------------------------------------------------------------------------


async def test_poll_returns_ready_tasks_earliest_first_up_to_the_limit(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """poll() lists tasks ready at or before ``now``, earliest first, at most ``limit``."""
    for task_id, offset in [("late", 3), ("early", 1), ("middle", 2), ("future", 9)]:
        await store.add(tasks.new(task_id, due_at=T0 + offset * SEC), replace=False)
    found = await due(store, T0 + 3 * SEC, 2)
    assert [(d.task_id, d.due_at) for d in found] == [("early", T0 + SEC), ("middle", T0 + 2 * SEC)]
    assert [d.task_id for d in await due(store, T0 + 3 * SEC)] == ["early", "middle", "late"]
    assert found[0].descriptor_json == tasks.text("early")


async def test_poll_excludes_tasks_not_yet_ready(store: ScheduleStore, tasks: Tasks) -> None:
    """A task is due from its ready time (due_at plus jitter), and reports its due_at."""
    await store.add(tasks.new(due_at=T0, ready_at=T0 + 7 * SEC), replace=False)
    assert await due(store, T0 + 7 * SEC - timedelta(milliseconds=1)) == []
    assert await due(store, T0 + 7 * SEC) == [DueTask("t1", T0, tasks.text("t1"))]


async def test_a_task_with_no_next_occurrence_is_never_due(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """After its last occurrence is claimed, a task is kept for its run but is not due."""
    await store.add(tasks.new(), replace=False)
    await claim_run(store, last_decision())
    state = await store.get("t1")
    assert state is not None and (state.due_at, state.running) == (None, 1)
    assert await due(store, T0 + YEAR) == []
    assert await next_ready(store) is None


async def test_poll_of_an_empty_store_finds_nothing_to_wake_for(store: ScheduleStore) -> None:
    """With no tasks there is nothing due and no next ready time."""
    batch = await store.poll(T0, 10)
    assert (batch.tasks, batch.next_ready_at) == ([], None)


async def test_poll_returns_the_due_tasks_and_when_the_next_one_is_ready(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """next_ready_at is the ready time of the first task poll() left out, whether it was not
    ready yet or beyond ``limit``; None when every schedulable task was returned."""
    for n, offset in enumerate([0, 1, 5]):
        await store.add(tasks.new(f"t{n}", due_at=T0 + offset * MINUTE), replace=False)
    batch = await store.poll(T0 + MINUTE, 10)
    assert [task.task_id for task in batch.tasks] == ["t0", "t1"]
    assert batch.next_ready_at == T0 + 5 * MINUTE
    limited = await store.poll(T0 + MINUTE, 1)
    assert ([t.task_id for t in limited.tasks], limited.next_ready_at) == (["t0"], T0 + MINUTE)
    nothing = await store.poll(T0 + MINUTE, 0)
    assert (nothing.tasks, nothing.next_ready_at) == ([], T0)
    await store.set_paused("t2", paused=True, due_at=None, ready_at=None)
    assert (await store.poll(T0 + MINUTE, 10)).next_ready_at is None


async def test_next_ready_at_is_the_earliest_ready_time_of_a_schedulable_task(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """next_ready_at counts ready times (with jitter), and ignores parked tasks."""
    await store.add(tasks.new("a", due_at=T0 + MINUTE), replace=False)
    await store.add(tasks.new("b", due_at=T0, ready_at=T0 + 5 * SEC), replace=False)
    await store.add(tasks.new("c", due_at=T0 - MINUTE), replace=False)
    await park(store, "c", expected=T0 - MINUTE)
    assert await next_ready(store) == T0 + 5 * SEC


async def test_next_ready_at_counts_tasks_not_the_leases_of_runs(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """A run's lease expiry is not a ready time: expired leases are found by
    reclaim_expired(), and poll() reports the next task only."""
    await store.add(tasks.new("once"), replace=False)
    await store.add(tasks.new("later", due_at=T0 + MINUTE), replace=False)
    await claim_run(store, last_decision("once"), lease_until=T0 + 10 * SEC)
    assert await next_ready(store) == T0 + MINUTE


async def test_the_generation_stays_the_same_while_the_store_keeps_its_data(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """poll() answers the same non-empty generation until the store's data is lost, whatever
    is written meanwhile."""
    first = (await store.poll(T0, 10)).generation
    await store.add(tasks.new(), replace=False)
    run = await claim_run(store)
    await finish(store, run)
    await store.remove("t1")
    assert (await store.poll(T0 + MINUTE, 10)).generation == first
    assert first


# -- claim -----------------------------------------------------------------------------


async def test_claim_hands_out_a_run_and_moves_the_schedule_on(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """CLAIMED: a run for ``run_at`` under a fresh fence, under way at once (running=1);
    the task is due at ``next_due_at``."""
    await store.add(tasks.new(), replace=False)
    run = await claim_run(store)
    assert (run.task_id, run.occurrence_at, run.attempt) == ("t1", T0, 1)
    assert isinstance(run.fence, int)
    state = await store.get("t1")
    assert state is not None
    assert (state.due_at, state.running, state.last_outcome) == (T0 + MINUTE, 1, None)
    assert await due(store, T0) == []
    assert [d.due_at for d in await due(store, T0 + MINUTE)] == [T0 + MINUTE]


async def test_claim_without_run_at_advances_the_schedule(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """ADVANCED: nothing runs, and the task moves to its next occurrence."""
    await store.add(tasks.new(), replace=False)
    [result] = await store.claim([decision(run=False)], lease_until=T0 + LEASE)
    assert (result.status, result.run) == (ClaimStatus.ADVANCED, None)
    state = await store.get("t1")
    assert state is not None and (state.due_at, state.running) == (T0 + MINUTE, 0)
    assert await next_ready(store) == T0 + MINUTE


async def test_a_none_next_ready_at_means_ready_at_the_next_due_time(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """A decision without next_ready_at makes the next occurrence ready when it is due."""
    await store.add(tasks.new(), replace=False)
    await claim_run(store, Decision("t1", T0, T0, T0 + MINUTE))
    assert await next_ready(store) == T0 + MINUTE


async def test_an_occurrence_due_at_max_instances_is_skipped(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """SKIPPED: with max_instances runs going, the occurrence is counted as skipped."""
    await store.add(tasks.new(), replace=False)
    await claim_run(store)
    [result] = await store.claim([decision(expected=T0 + MINUTE)], lease_until=T0 + LEASE)
    assert (result.status, result.run) == (ClaimStatus.SKIPPED, None)
    state = await store.get("t1")
    assert state is not None
    assert (state.due_at, state.running) == (T0 + 2 * MINUTE, 1)
    assert (state.last_outcome, state.counts) == (Outcome.SKIPPED, {"skipped": 1})


async def test_claim_allows_up_to_max_instances_runs_at_once(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """With max_instances=2, two occurrences run side by side and the third is skipped."""
    await store.add(tasks.new(), replace=False)
    statuses = [
        await status_of(store, decision(expected=T0 + k * MINUTE, max_instances=2))
        for k in range(3)
    ]
    assert statuses == [ClaimStatus.CLAIMED, ClaimStatus.CLAIMED, ClaimStatus.SKIPPED]


async def test_claim_with_a_stale_expected_due_at_races(store: ScheduleStore, tasks: Tasks) -> None:
    """RACED: a decision made from an outdated due_at changes nothing."""
    await store.add(tasks.new(), replace=False)
    before = await store.get("t1")
    assert await status_of(store, decision(expected=T0 - MINUTE, missed=2)) is ClaimStatus.RACED
    assert await store.get("t1") == before


async def test_claim_of_a_task_without_next_occurrence_races(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """A task whose last occurrence was already claimed no longer has the expected due_at."""
    await store.add(tasks.new(), replace=False)
    await claim_run(store, last_decision())
    assert await status_of(store, last_decision()) is ClaimStatus.RACED


@pytest.mark.parametrize("how", ["removed", "paused", "parked", "never added"])
async def test_claim_of_a_task_that_left_the_schedule_is_gone(
    store: ScheduleStore, tasks: Tasks, how: str
) -> None:
    """GONE: the task was cancelled, paused or parked after poll() returned it."""
    if how != "never added":
        await store.add(tasks.new(), replace=False)
    if how == "removed":
        await store.remove("t1")
    elif how == "paused":
        await store.set_paused("t1", paused=True, due_at=None, ready_at=None)
    elif how == "parked":
        await park(store)
    [result] = await store.claim([decision()], lease_until=T0 + LEASE)
    assert (result.status, result.run) == (ClaimStatus.GONE, None)
    state = await store.get("t1")
    assert state is None or (state.due_at, state.running) == (T0, 0)


async def test_claim_adds_missed_occurrences_to_the_missed_count(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """``missed`` is added to the missed count; a claimed catch-up run leaves last_outcome."""
    await store.add(tasks.new(), replace=False)
    await claim_run(store, decision(missed=3))
    state = await store.get("t1")
    assert state is not None and (state.counts, state.last_outcome) == ({"missed": 3}, None)


async def test_missed_occurrences_with_nothing_to_run_are_the_last_outcome(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """An ADVANCED decision with missed occurrences records ``missed`` as the last outcome."""
    await store.add(tasks.new(), replace=False)
    assert await status_of(store, decision(run=False, missed=2)) is ClaimStatus.ADVANCED
    state = await store.get("t1")
    assert state is not None
    assert (state.counts, state.last_outcome) == ({"missed": 2}, Outcome.MISSED)


async def test_a_skipped_occurrence_outranks_missed_ones_as_last_outcome(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """When the latest occurrence is skipped, last_outcome is skipped; misses still count."""
    await store.add(tasks.new(), replace=False)
    await claim_run(store)
    d = decision(expected=T0 + MINUTE, missed=1)
    assert await status_of(store, d) is ClaimStatus.SKIPPED
    state = await store.get("t1")
    assert state is not None
    assert (state.last_outcome, state.counts) == (Outcome.SKIPPED, {"skipped": 1, "missed": 1})


async def test_a_missed_one_time_occurrence_ends_the_task(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """A decision that runs nothing and leaves no next occurrence deletes the task."""
    await store.add(tasks.new(), replace=False)
    missed = Decision("t1", T0, None, None, None, missed=1)
    [result] = await store.claim([missed], lease_until=T0 + LEASE)
    assert result.status is ClaimStatus.ADVANCED
    assert await store.get("t1") is None


async def test_claim_applies_a_batch_with_one_result_per_decision_in_order(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """One claim() call applies many decisions; results follow the decisions' order."""
    for task_id in ["a", "b", "c", "d", "e"]:
        await store.add(tasks.new(task_id), replace=False)
    await park(store, "d")
    batch = [
        decision("c"),
        decision("a", run=False),
        decision("b", expected=T0 + SEC),
        decision("d"),
        parking("e"),
        decision("zz"),
        decision("c", expected=T0 + MINUTE),
    ]
    results = await store.claim(batch, lease_until=T0 + LEASE)
    assert [(r.task_id, r.status) for r in results] == [
        ("c", ClaimStatus.CLAIMED),
        ("a", ClaimStatus.ADVANCED),
        ("b", ClaimStatus.RACED),
        ("d", ClaimStatus.GONE),
        ("e", ClaimStatus.PARKED),
        ("zz", ClaimStatus.GONE),
        ("c", ClaimStatus.SKIPPED),
    ]


async def test_claim_of_a_large_batch_claims_every_task(store: ScheduleStore, tasks: Tasks) -> None:
    """A dispatcher claims hundreds of tasks at once, each with its own fence."""
    ids = [f"task-{i:04d}" for i in range(500)]
    for task_id in ids:
        await store.add(tasks.new(task_id), replace=False)
    found = await due(store, T0, 1000)
    assert [d.task_id for d in found] == ids
    results = await store.claim([decision(d.task_id) for d in found], lease_until=T0 + LEASE)
    assert {r.status for r in results} == {ClaimStatus.CLAIMED}
    assert len({r.run.fence for r in results if r.run}) == len(ids)


async def test_claim_of_an_empty_batch_returns_nothing(store: ScheduleStore) -> None:
    """An empty batch is a no-op."""
    assert await store.claim([], lease_until=T0 + LEASE) == []


async def test_two_dispatchers_claiming_the_same_occurrence_get_one_run(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """Concurrent identical decisions: exactly one is CLAIMED, the other RACED."""
    await store.add(tasks.new(), replace=False)
    results = await asyncio.gather(
        *(store.claim([decision()], lease_until=T0 + LEASE) for _ in range(2))
    )
    statuses = sorted(r.status.value for [r] in results)
    assert statuses == [ClaimStatus.CLAIMED.value, ClaimStatus.RACED.value]
    state = await store.get("t1")
    assert state is not None and state.running == 1


async def test_a_claimed_run_is_invisible_to_a_second_dispatcher_until_its_lease_expires(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """A claimed occurrence is not due again, and is re-issued only once its lease expired."""
    await store.add(tasks.new(), replace=False)
    await claim_run(store, lease_until=T0 + 10 * SEC)
    later = T0 + 10 * SEC - timedelta(milliseconds=1)
    assert await due(store, later) == []
    assert await reclaim(store, later) == []
    [again] = await reclaim(store, T0 + 10 * SEC)
    assert (again.run.occurrence_at, again.run.attempt) == (T0, 2)


# -- reclaim_expired -------------------------------------------------------------------


async def test_reclaim_reissues_an_expired_run_under_a_new_fence(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """An expired run comes back with a new fence and attempt+1; the old fence is dead and
    the re-issued run is still the one run under way."""
    await store.add(tasks.new(), replace=False)
    old = await claim_run(store, lease_until=T0 + 10 * SEC)
    [again] = await reclaim(store, T0 + 10 * SEC, lease_until=T0 + 40 * SEC)
    new = again.run
    assert (new.task_id, new.occurrence_at, new.attempt) == ("t1", T0, 2)
    assert new.fence > old.fence
    assert await store.extend([old], lease_until=T0 + LEASE) == [False]
    assert await finish(store, old) is False
    state = await store.get("t1")
    assert state is not None and (state.running, state.counts) == (1, {})
    assert await reclaim(store, T0 + 40 * SEC - timedelta(milliseconds=1)) == []
    assert await store.extend([new], lease_until=T0 + LEASE) == [True]


async def test_reclaim_hands_out_the_descriptor_and_trace_context(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """A re-issued run comes with its task's descriptor and trace context (None when the
    task has none), so its worker needs no other call."""
    await store.add(tasks.new("traced", trace_context=TRACEPARENT), replace=False)
    await store.add(tasks.new("plain"), replace=False)
    await claim_run(store, decision("traced"), lease_until=T0 + SEC)
    await claim_run(store, decision("plain"), lease_until=T0 + 2 * SEC)
    reissued = await reclaim(store, T0 + 2 * SEC)
    assert [(c.run.task_id, c.descriptor_json, c.trace_context) for c in reissued] == [
        ("traced", tasks.text("traced"), TRACEPARENT),
        ("plain", tasks.text("plain"), None),
    ]


async def test_a_reissued_run_that_expires_again_gets_another_attempt(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """Each re-issue increments the attempt of the same occurrence."""
    await store.add(tasks.new(), replace=False)
    await claim_run(store, lease_until=T0 + SEC)
    await reclaim(store, T0 + SEC, lease_until=T0 + 2 * SEC)
    [again] = await reclaim(store, T0 + 2 * SEC, lease_until=T0 + 3 * SEC)
    assert (again.run.occurrence_at, again.run.attempt) == (T0, 3)


async def test_reclaim_reissues_at_most_limit_runs(store: ScheduleStore, tasks: Tasks) -> None:
    """Expired runs beyond ``limit`` wait for the next call."""
    for task_id in ["a", "b", "c"]:
        await store.add(tasks.new(task_id), replace=False)
        await claim_run(store, decision(task_id), lease_until=T0 + SEC)
    first = await reclaim(store, T0 + SEC, limit=2)
    rest = await reclaim(store, T0 + SEC, limit=2)
    assert (len(first), len(rest)) == (2, 1)
    assert sorted(c.run.task_id for c in first + rest) == ["a", "b", "c"]


async def test_reclaim_drops_runs_of_tasks_that_no_longer_exist(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """A run of a removed task is never re-issued."""
    await store.add(tasks.new(), replace=False)
    await claim_run(store, lease_until=T0 + SEC)
    await store.remove("t1")
    assert await reclaim(store, T0 + MINUTE) == []
    assert await next_ready(store) is None


@pytest.mark.parametrize("how", ["by claim", "by finish"])
async def test_reclaim_drops_runs_of_parked_tasks(
    store: ScheduleStore, tasks: Tasks, how: str
) -> None:
    """Once a task is parked, none of its runs is re-issued, however it was parked."""
    await store.add(tasks.new(), replace=False)
    first = await claim_run(store, decision(max_instances=2), lease_until=T0 + SEC)
    d = decision(expected=T0 + MINUTE, max_instances=2)
    await claim_run(store, d, lease_until=T0 + SEC)
    if how == "by claim":
        await park(store, expected=T0 + 2 * MINUTE)
    else:
        assert await finish(store, first, Outcome.PARKED, error="bad data") is True
    assert await reclaim(store, T0 + MINUTE) == []
    state = await store.get("t1")
    assert state is not None and (state.parked_reason, state.running) == ("bad data", 0)


# -- extend ----------------------------------------------------------------------------


async def test_extend_renews_valid_leases_and_rejects_stale_fences(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """extend() answers per run: True and a new lease when valid, False when not."""
    await store.add(tasks.new("a"), replace=False)
    await store.add(tasks.new("b"), replace=False)
    live = await claim_run(store, decision("a"), lease_until=T0 + SEC)
    done = await claim_run(store, decision("b"), lease_until=T0 + SEC)
    await finish(store, done)
    foreign = Run("b", live.fence, live.occurrence_at)
    assert await store.extend([live, done, foreign], lease_until=T0 + LEASE) == [True, False, False]
    assert await reclaim(store, T0 + LEASE - timedelta(milliseconds=1)) == []
    [again] = await reclaim(store, T0 + LEASE)
    assert again.run.occurrence_at == live.occurrence_at


async def test_extend_tells_which_runs_may_go_on(store: ScheduleStore, tasks: Tasks) -> None:
    """extend() is True for a live run and False once its task is cancelled."""
    await store.add(tasks.new("a"), replace=False)
    await store.add(tasks.new("b"), replace=False)
    run_a = await claim_run(store, decision("a"))
    run_b = await claim_run(store, decision("b"))
    await store.remove("b")
    assert await store.extend([run_a, run_b], lease_until=T0 + LEASE) == [True, False]
    assert await store.get("a") is not None


async def test_extending_a_lease_into_the_past_gives_the_run_back_at_once(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """A lease_until in the past hands the run back: it is re-issued at the next call."""
    await store.add(tasks.new(), replace=False)
    run = await claim_run(store, lease_until=T0 + LEASE)
    assert await store.extend([run], lease_until=T0 - SEC) == [True]
    [again] = await reclaim(store, T0)
    assert (again.run.occurrence_at, again.run.attempt) == (T0, 2)


async def test_a_run_given_back_with_release_is_re_issued_as_the_same_attempt(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """extend(release=True) by a worker that stops cleanly: the run is re-issued at once
    and keeps its attempt, however often that happens (a heartbeat renewal in between
    changes nothing); a lease that simply expires still costs an attempt."""
    await store.add(tasks.new(), replace=False)
    run = await claim_run(store, lease_until=T0 + LEASE)
    for _ in range(3):
        assert await store.extend([run], lease_until=T0, release=True) == [True]
        assert await store.extend([run], lease_until=T0) == [True]  # the heartbeat, late
        [again] = await reclaim(store, T0)
        assert (again.run.occurrence_at, again.run.attempt, again.run.extra) == (T0, 1, False)
        assert again.run.fence > run.fence
        run = again.run
    [lost] = await reclaim(store, T0 + LEASE)
    assert lost.run.attempt == 2
    assert await store.extend([lost.run], lease_until=T0 + LEASE, release=True) == [True]
    [kept] = await reclaim(store, T0 + LEASE)
    assert kept.run.attempt == 2
    state = await store.get("t1")
    assert state is not None and state.running == 1


async def test_releasing_a_stale_fence_changes_nothing(store: ScheduleStore, tasks: Tasks) -> None:
    """A release through a fence that was re-issued meanwhile is refused and leaves the
    live run as it was: it still costs an attempt when its own lease expires."""
    await store.add(tasks.new(), replace=False)
    old = await claim_run(store, lease_until=T0 + SEC)
    [again] = await reclaim(store, T0 + SEC, lease_until=T0 + 2 * SEC)
    assert await store.extend([old], lease_until=T0, release=True) == [False]
    assert await reclaim(store, T0 + SEC) == []
    [third] = await reclaim(store, T0 + 2 * SEC)
    assert (third.run.attempt, again.run.attempt) == (3, 2)


async def test_extend_of_no_runs_returns_nothing(store: ScheduleStore) -> None:
    """An empty batch is a no-op."""
    assert await store.extend([], lease_until=T0 + LEASE) == []


# -- finish ----------------------------------------------------------------------------


async def test_finish_records_the_outcome_and_releases_the_run(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """finish() sets last_outcome, counts it and frees the run's slot."""
    await store.add(tasks.new(), replace=False)
    run = await claim_run(store)
    assert await finish(store, run) is True
    state = await store.get("t1")
    assert state is not None
    assert (state.running, state.last_outcome, state.last_error) == (0, Outcome.SUCCEEDED, None)
    assert (state.counts, state.due_at, state.last_run_at) == ({"succeeded": 1}, T0 + MINUTE, None)
    assert await next_ready(store) == T0 + MINUTE


async def test_finish_records_the_error_of_a_failed_run(store: ScheduleStore, tasks: Tasks) -> None:
    """A failed run leaves its one-line error on the task, and its start as last run time."""
    await store.add(tasks.new(), replace=False)
    run = await claim_run(store)
    await finish(store, run, Outcome.FAILED, error="ValueError: boom", started_at=T0 + SEC)
    state = await store.get("t1")
    assert state is not None
    assert (state.last_outcome, state.last_error) == (Outcome.FAILED, "ValueError: boom")
    assert state.last_run_at == T0 + SEC


async def test_counts_accumulate_per_outcome(store: ScheduleStore, tasks: Tasks) -> None:
    """Each finished run adds one to its outcome's count."""
    await store.add(tasks.new(), replace=False)
    outcomes = [Outcome.SUCCEEDED, Outcome.FAILED, Outcome.SUCCEEDED, Outcome.TIMED_OUT]
    for k, outcome in enumerate(outcomes):
        run = await claim_run(store, decision(expected=T0 + k * MINUTE))
        await finish(store, run, outcome)
    state = await store.get("t1")
    assert state is not None
    assert state.counts == {"succeeded": 2, "failed": 1, "timed_out": 1}
    assert state.last_outcome is Outcome.TIMED_OUT


async def test_finish_with_a_stale_fence_writes_nothing(store: ScheduleStore, tasks: Tasks) -> None:
    """A late finish from a re-issued run returns False and leaves the task untouched."""
    await store.add(tasks.new(), replace=False)
    old = await claim_run(store, lease_until=T0 + SEC)
    await reclaim(store, T0 + SEC)
    before = await store.get("t1")
    assert await finish(store, old, Outcome.FAILED, error="late", started_at=T0) is False
    assert await finish(store, old, Outcome.STOPPED, end_task=True) is False
    assert await finish(store, old, Outcome.PARKED, error="late park") is False
    assert await store.get("t1") == before


async def test_finishing_a_run_twice_counts_it_once(store: ScheduleStore, tasks: Tasks) -> None:
    """The second finish of the same fence is rejected."""
    await store.add(tasks.new(), replace=False)
    run = await claim_run(store)
    assert await finish(store, run) is True
    assert await finish(store, run) is False
    state = await store.get("t1")
    assert state is not None and state.counts == {"succeeded": 1}


async def test_a_one_time_task_is_deleted_when_its_run_finishes(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """A task with no next occurrence ends with its last run, leaving no lease behind."""
    await store.add(tasks.new(), replace=False)
    run = await claim_run(store, last_decision(), lease_until=T0 + SEC)
    assert await finish(store, run, Outcome.FAILED, error="boom") is True
    assert await store.get("t1") is None
    assert await store.list() == []
    assert await reclaim(store, T0 + YEAR) == []


@pytest.mark.parametrize("how", ["finished", "parked", "re-issued"])
async def test_a_run_that_ends_leaves_no_lease_behind(
    store: ScheduleStore, tasks: Tasks, how: str
) -> None:
    """Once a run is finished, its task parked, or the run re-issued, its old lease is gone:
    nothing but the re-issued run ever expires."""
    await store.add(tasks.new(), replace=False)
    run = await claim_run(store, lease_until=T0 + LEASE)
    if how == "finished":
        await finish(store, run)
    elif how == "parked":
        await park(store, reason="no longer wanted", expected=T0 + MINUTE)
    else:
        [again] = await reclaim(store, T0 + LEASE, lease_until=T0 + 3 * LEASE)
        await finish(store, again.run)
    assert await reclaim(store, T0 + YEAR) == []
    state = await store.get("t1")
    assert state is not None and state.running == 0


async def test_a_task_without_next_occurrence_waits_for_its_last_run(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """With two runs going, the task survives the first finish and ends with the second."""
    await store.add(tasks.new(), replace=False)
    first = await claim_run(store, decision(max_instances=2))
    second = await claim_run(store, last_decision(expected=T0 + MINUTE, max_instances=2))
    await finish(store, first)
    state = await store.get("t1")
    assert state is not None and state.running == 1
    await finish(store, second)
    assert await store.get("t1") is None


async def test_finish_with_end_task_deletes_the_task_and_its_runs(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """end_task (StopRecurrence) deletes the task; its other runs' fences die with it."""
    await store.add(tasks.new(), replace=False)
    run = await claim_run(store, decision(max_instances=2))
    other = await claim_run(store, decision(expected=T0 + MINUTE, max_instances=2))
    assert await finish(store, run, Outcome.STOPPED, end_task=True) is True
    assert await store.get("t1") is None
    assert await store.extend([other], lease_until=T0 + LEASE) == [False]
    assert await reclaim(store, T0 + YEAR) == []
    assert await next_ready(store) is None


async def test_finish_applies_each_finish_of_a_batch_and_rejects_stale_fences(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """One call finishes several runs; a stale fence in the batch is rejected alone."""
    await store.add(tasks.new("a"), replace=False)
    await store.add(tasks.new("b"), replace=False)
    run_a = await claim_run(store, decision("a"))
    run_b = await claim_run(store, decision("b"))
    stale = Run("a", run_a.fence + 10_000, T0)
    results = await store.finish(
        [
            Finish(run_a, Outcome.SUCCEEDED, started_at=T0 + SEC),
            Finish(stale, Outcome.FAILED, error="late"),
            Finish(run_b, Outcome.FAILED, error="boom", started_at=T0 + 2 * SEC),
        ]
    )
    assert results == [True, False, True]
    a, b = await store.get("a"), await store.get("b")
    assert a is not None and b is not None
    assert (a.last_outcome, a.last_run_at, a.running) == (Outcome.SUCCEEDED, T0 + SEC, 0)
    assert (b.last_outcome, b.last_error, b.last_run_at) == (Outcome.FAILED, "boom", T0 + 2 * SEC)


async def test_finish_of_no_runs_returns_nothing(store: ScheduleStore) -> None:
    """An empty batch is a no-op."""
    assert await store.finish([]) == []


async def test_a_parked_finish_parks_the_task_with_the_error_as_reason(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """Outcome.PARKED parks the task with ``error`` as the reason: its other runs stop being
    valid, it is never due again, and its run's start is kept as the last run time."""
    await store.add(tasks.new(), replace=False)
    run = await claim_run(store, decision(max_instances=2))
    other = await claim_run(store, decision(expected=T0 + MINUTE, max_instances=2))
    reason = "stored descriptor is invalid: no job named 'Job'"
    assert await finish(store, run, Outcome.PARKED, error=reason, started_at=T0 + SEC) is True
    state = await store.get("t1")
    assert state is not None
    assert (state.parked_reason, state.last_outcome) == (reason, Outcome.PARKED)
    assert (state.counts, state.running, state.last_run_at) == ({"parked": 1}, 0, T0 + SEC)
    assert await store.extend([other], lease_until=T0 + LEASE) == [False]
    assert await finish(store, other) is False
    assert await due(store, T0 + YEAR) == []
    assert await status_of(store, decision(expected=T0 + 2 * MINUTE)) is ClaimStatus.GONE


async def test_a_parked_finish_keeps_a_one_time_task(store: ScheduleStore, tasks: Tasks) -> None:
    """A parked task is kept for its reason even when its last run was the one parked."""
    await store.add(tasks.new(), replace=False)
    run = await claim_run(store, last_decision())
    assert await finish(store, run, Outcome.PARKED, error="job class removed") is True
    state = await store.get("t1")
    assert state is not None
    assert (state.parked_reason, state.running, state.due_at) == ("job class removed", 0, None)


async def test_a_parked_finish_without_an_error_still_gives_a_reason(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """A PARKED finish with error=None parks the task with a non-empty reason, so the task
    reads as parked."""
    await store.add(tasks.new(), replace=False)
    run = await claim_run(store)
    assert await finish(store, run, Outcome.PARKED) is True
    state = await store.get("t1")
    assert state is not None and state.parked_reason


# -- time ------------------------------------------------------------------------------


async def test_datetimes_are_kept_to_the_millisecond(store: ScheduleStore, tasks: Tasks) -> None:
    """Microseconds are truncated to milliseconds everywhere a time is stored."""
    precise = T0 + timedelta(microseconds=123_456)
    kept = T0 + timedelta(milliseconds=123)
    await store.add(NewTask("t1", tasks.text("t1"), precise, precise), replace=False)
    state = await store.get("t1")
    assert state is not None and state.due_at == kept
    [found] = await due(store, kept)
    assert found.due_at == kept
    run = await claim_run(store, Decision("t1", found.due_at, found.due_at, precise, precise))
    assert run.occurrence_at == kept
    await finish(store, run, started_at=precise)
    state = await store.get("t1")
    assert state is not None and (state.due_at, state.last_run_at) == (kept, kept)
    assert await next_ready(store) == kept


async def test_datetimes_in_any_timezone_come_back_as_the_same_instant_in_utc(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """An aware datetime in another zone is stored as its instant and read back in UTC."""
    plus_two = timezone(timedelta(hours=2))
    local = T0.astimezone(plus_two)
    await store.add(NewTask("t1", tasks.text("t1"), local, local), replace=False)
    state = await store.get("t1")
    assert state is not None and state.due_at == T0
    assert state.due_at.utcoffset() == timedelta(0)


# -- trace context ---------------------------------------------------------------------


async def test_a_task_keeps_the_trace_context_it_was_added_with(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """poll() and get() return the W3C trace context given to add(), for every occurrence."""
    await store.add(tasks.new(trace_context=TRACEPARENT), replace=False)
    [found] = await due(store, T0)
    assert found.trace_context == TRACEPARENT
    state = await store.get("t1")
    assert state is not None and state.trace_context == TRACEPARENT
    await claim_run(store)
    [following] = await due(store, T0 + MINUTE)
    assert following.trace_context == TRACEPARENT


async def test_a_task_added_without_a_trace_context_has_none(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """No trace context in, None out (not an empty string)."""
    await store.add(tasks.new(), replace=False)
    [found] = await due(store, T0)
    state = await store.get("t1")
    assert found.trace_context is None
    assert state is not None and state.trace_context is None
    assert [s.trace_context for s in await store.list()] == [None]


async def test_a_replaced_task_takes_the_new_trace_context(
    store: ScheduleStore, tasks: Tasks
) -> None:
    """replace=True drops the old task's trace context with it."""
    await store.add(tasks.new(), replace=False)
    await store.add(tasks.new(version=2, trace_context=TRACEPARENT), replace=True)
    state = await store.get("t1")
    assert state is not None and state.trace_context == TRACEPARENT


# -- the Redis store only: client flavours and failures --------------------------------


def _ms(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(milliseconds=1)


@pytest.fixture(params=["decoded", "arq"])
async def other_redis_client(
    request: pytest.FixtureRequest, redis_client: redis.asyncio.Redis, redis_url: str
) -> AsyncIterator[redis.asyncio.Redis]:
    """Clients the store must also accept: one decoding responses, and arq's ArqRedis."""
    if request.param == "decoded":
        client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    else:
        client = ArqRedis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.mark.redis
async def test_redis_store_accepts_decoding_and_arq_clients(
    other_redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    """The Redis store reads the same data whatever the client's response decoding."""
    store = RedisScheduleStore(other_redis_client, prefix=key_prefix)
    await store.add(PLAIN.new(trace_context=TRACEPARENT), replace=False)
    [found] = await due(store, T0)
    run = await claim_run(store, decision(expected=found.due_at), lease_until=T0 + SEC)
    [again] = await reclaim(store, T0 + SEC)
    assert again == ClaimedRun(Run("t1", again.run.fence, T0, 2), PLAIN.text(), TRACEPARENT)
    assert again.run.fence > run.fence
    await finish(store, again.run, Outcome.FAILED, error="Ünïcode error", started_at=T0)
    [state] = await store.list()
    assert (state.last_outcome, state.last_error) == (Outcome.FAILED, "Ünïcode error")
    assert await next_ready(store) == T0 + MINUTE


@pytest.mark.redis
async def test_redis_store_keeps_every_key_under_its_prefix(
    redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    """Two prefixes on one database are two independent stores."""
    mine = RedisScheduleStore(redis_client, prefix=key_prefix)
    theirs = RedisScheduleStore(redis_client, prefix=f"{key_prefix}other:")
    await mine.add(PLAIN.new(), replace=False)
    await due(mine, T0)
    await claim_run(mine)
    assert await theirs.list() == []
    assert await next_ready(theirs) is None
    keys = [key async for key in redis_client.scan_iter(match=f"{key_prefix}*")]
    theirs_generation = f"{key_prefix}other:generation"
    assert {key.decode() for key in keys} - {theirs_generation} == {
        f"{key_prefix}{name}" for name in ["task:t1", "due", "runs", "fence", "generation"]
    }


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_an_unreachable_redis_raises_store_unavailable() -> None:
    """Connection failures surface as StoreUnavailableError naming the address."""
    port = _closed_port()
    client = redis.asyncio.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    store = RedisScheduleStore(client)
    calls = [
        lambda: store.get("t1"),
        lambda: store.poll(T0, 10),
        lambda: store.claim([decision()], lease_until=T0 + LEASE),
    ]
    try:
        for call in calls:
            with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{port}") as info:
                await call()
            assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_a_redis_that_lost_its_data_has_a_new_generation(
    redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    """The generation is written by the first poll(), kept after, and a new one is created
    once the keys are gone (a restart without persistence)."""
    store = RedisScheduleStore(redis_client, prefix=key_prefix)
    assert await redis_client.exists(f"{key_prefix}generation") == 0
    first = (await store.poll(T0, 10)).generation
    assert (await redis_client.get(f"{key_prefix}generation")).decode() == first
    assert (await store.poll(T0, 10)).generation == first
    await redis_client.delete(*[k async for k in redis_client.scan_iter(f"{key_prefix}*")])
    assert (await store.poll(T0, 10)).generation not in ("", first)


# -- the Redis store only: data written around the store -------------------------------


async def _string_at_task_key(client: redis.asyncio.Redis, prefix: str, task_id: str) -> None:
    """A STRING where a task's hash belongs, listed in the due index at T0."""
    await client.set(f"{prefix}task:{task_id}", "not a hash")
    await client.zadd(f"{prefix}due", {task_id: _ms(T0)})


async def _runs_of(client: redis.asyncio.Redis, prefix: str, task_id: str) -> tuple[set[str], ...]:
    """The task's run fields and its members of the lease index, as Redis holds them."""
    fields = {f.decode() for f in await client.hkeys(f"{prefix}task:{task_id}")}
    leases = {m.decode() for m in await client.zrange(f"{prefix}runs", 0, -1)}
    mine = {m for m in leases if m.endswith(f"|{task_id}")}
    return {f for f in fields if f.startswith("r:")}, mine


@pytest.mark.redis
async def test_a_string_at_a_task_key_is_not_a_task(
    redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    """A STRING written at a task key is no task: poll() drops it from the due index, get()
    is None, list() skips it, and a claim batch naming it says GONE for it alone, writing
    nothing for it."""
    store = RedisScheduleStore(redis_client, prefix=key_prefix)
    await store.add(PLAIN.new("a"), replace=False)
    await store.add(PLAIN.new("c"), replace=False)
    await _string_at_task_key(redis_client, key_prefix, "b")
    assert [t.task_id for t in await due(store, T0)] == ["a", "c"]
    assert await redis_client.zscore(f"{key_prefix}due", "b") is None
    assert await store.get("b") is None
    assert [s.task_id for s in await store.list()] == ["a", "c"]
    batch = [decision("a"), decision("b"), decision("c")]
    results = await store.claim(batch, lease_until=T0 + LEASE)
    claimed, gone = ClaimStatus.CLAIMED, ClaimStatus.GONE
    assert [r.status for r in results] == [claimed, gone, claimed]
    assert await redis_client.get(f"{key_prefix}task:b") == b"not a hash"
    leases = [m.decode() for m in await redis_client.zrange(f"{key_prefix}runs", 0, -1)]
    assert sorted(m.rsplit("|", 1)[1] for m in leases) == ["a", "c"]
    assert sorted(c.run.task_id for c in await reclaim(store, T0 + YEAR)) == ["a", "c"]


@pytest.mark.redis
@pytest.mark.parametrize("damage", ["a STRING", "an unreadable due_at"])
async def test_poll_reports_the_next_ready_task_after_dropping_a_broken_one(
    redis_client: redis.asyncio.Redis, key_prefix: str, damage: str
) -> None:
    """A task key poll() drops (not a hash) or parks (its due_at is not a time) does not
    hide the ready time of the task after it."""
    store = RedisScheduleStore(redis_client, prefix=key_prefix)
    await store.add(PLAIN.new("a"), replace=False)
    await store.add(PLAIN.new("later", due_at=T0 + 5 * MINUTE), replace=False)
    if damage == "a STRING":
        await _string_at_task_key(redis_client, key_prefix, "b")
    else:
        await store.add(PLAIN.new("b"), replace=False)
        await redis_client.hset(f"{key_prefix}task:b", "due_at", "soon")
    batch = await store.poll(T0, 10)
    assert [t.task_id for t in batch.tasks] == ["a"]
    assert batch.next_ready_at == T0 + 5 * MINUTE


@pytest.mark.redis
async def test_removing_a_string_at_a_task_key_finds_no_task(
    redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    """remove() of an id whose key holds a STRING answers None, as get() does."""
    store = RedisScheduleStore(redis_client, prefix=key_prefix)
    await _string_at_task_key(redis_client, key_prefix, "b")
    assert await store.remove("b") is None


@pytest.mark.redis
async def test_adding_over_a_string_at_a_task_key_writes_the_task(
    redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    """add(replace=False) over a STRING, which is not a task, writes the new task."""
    store = RedisScheduleStore(redis_client, prefix=key_prefix)
    await _string_at_task_key(redis_client, key_prefix, "b")
    assert await store.add(PLAIN.new("b"), replace=False) is True


@pytest.mark.redis
async def test_a_running_field_that_is_not_a_number_parks_its_task_alone(
    redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    """A ``running`` field set to "lots" cannot be counted on: that task is parked with a
    reason naming the field and its value, written whole (no run field, no lease), while
    the rest of the batch is claimed."""
    store = RedisScheduleStore(redis_client, prefix=key_prefix)
    for task_id in ["a", "b", "c"]:
        await store.add(PLAIN.new(task_id), replace=False)
    await redis_client.hset(f"{key_prefix}task:b", "running", "lots")
    results = await store.claim([decision(t) for t in "abc"], lease_until=T0 + LEASE)
    claimed, parked = ClaimStatus.CLAIMED, ClaimStatus.PARKED
    assert [r.status for r in results] == [claimed, parked, claimed]
    assert results[1].reason is not None and "running" in results[1].reason
    assert await _runs_of(redis_client, key_prefix, "b") == (set(), set())
    state = await store.get("b")
    assert state is not None and state.parked_reason == results[1].reason
    assert "lots" in state.parked_reason and (state.running, state.counts) == (0, {"parked": 1})
    assert [t.task_id for t in await due(store, T0 + YEAR)] == ["a", "c"]
