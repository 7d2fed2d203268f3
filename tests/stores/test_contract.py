"""The ``ScheduleStore`` contract: one suite that every store must pass.

Each test runs on every store through the ``store`` fixture. Time never moves by itself:
every ``now`` is a fixed aware UTC datetime derived from ``T0``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import pytest
import redis.asyncio
from arq.connections import ArqRedis

from cml_jobs.exceptions import StoreUnavailableError, TaskExistsError
from cml_jobs.stores._base import (
    ClaimStatus,
    Decision,
    DueTask,
    NewTask,
    Outcome,
    Run,
    ScheduleStore,
    StartedRun,
)
from cml_jobs.stores.redis import RedisScheduleStore

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
SEC = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)
LEASE = 30 * SEC


def descriptor(task_id: str, version: int = 1) -> str:
    return f'{{"id": "{task_id}", "name": "Job", "version": {version}}}'


def new_task(
    task_id: str = "t1",
    due_at: datetime = T0,
    ready_at: datetime | None = None,
    version: int = 1,
) -> NewTask:
    return NewTask(task_id, descriptor(task_id, version), due_at, ready_at or due_at)


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


async def claim_run(
    store: ScheduleStore, d: Decision | None = None, *, lease_until: datetime = T0 + LEASE
) -> Run:
    [result] = await store.claim([d or decision()], now=T0, lease_until=lease_until)
    assert result.status is ClaimStatus.CLAIMED
    assert result.run is not None
    return result.run


async def status_of(store: ScheduleStore, d: Decision) -> ClaimStatus:
    [result] = await store.claim([d], now=T0, lease_until=T0 + LEASE)
    return result.status


# -- add -------------------------------------------------------------------------------


async def test_add_writes_a_new_task_due_at_its_first_occurrence(store: ScheduleStore) -> None:
    """A new task is stored with its descriptor and first due time."""
    assert await store.add(new_task(), replace=False) is True
    state = await store.get("t1")
    assert state is not None
    assert (state.task_id, state.descriptor_json, state.due_at) == ("t1", descriptor("t1"), T0)
    assert (state.paused, state.parked_reason, state.running) == (False, None, 0)
    assert (state.last_run_at, state.last_outcome, state.last_error) == (None, None, None)
    assert state.counts == {}


@pytest.mark.parametrize("replace", [False, True])
async def test_adding_the_same_descriptor_again_changes_nothing(
    store: ScheduleStore, replace: bool
) -> None:
    """Scheduling is idempotent: the same descriptor again returns False and keeps the state."""
    await store.add(new_task(), replace=False)
    run = await claim_run(store)
    assert await store.add(new_task(due_at=T0 + 9 * MINUTE), replace=replace) is False
    state = await store.get("t1")
    assert state is not None
    assert (state.due_at, state.running) == (T0 + MINUTE, 1)
    assert await store.start(run, now=T0, lease_until=T0 + LEASE) is not None


async def test_adding_a_different_descriptor_without_replace_raises(store: ScheduleStore) -> None:
    """Another descriptor under an existing id raises TaskExistsError and keeps the old task."""
    await store.add(new_task(), replace=False)
    with pytest.raises(TaskExistsError, match="'t1'"):
        await store.add(new_task(version=2, due_at=T0 + MINUTE), replace=False)
    state = await store.get("t1")
    assert state is not None
    assert (state.descriptor_json, state.due_at) == (descriptor("t1"), T0)


async def test_replacing_a_task_invalidates_the_fences_of_its_old_runs(
    store: ScheduleStore,
) -> None:
    """replace=True drops the old task and its runs; their fences stop being valid."""
    await store.add(new_task(), replace=False)
    old = await claim_run(store)
    assert await store.add(new_task(version=2, due_at=T0 + 5 * MINUTE), replace=True) is True
    state = await store.get("t1")
    assert state is not None
    assert (state.descriptor_json, state.due_at, state.running) == (
        descriptor("t1", 2),
        T0 + 5 * MINUTE,
        0,
    )
    assert await store.start(old, now=T0, lease_until=T0 + LEASE) is None
    assert await store.extend([old], lease_until=T0 + LEASE) == [False]
    assert await store.finish(old, Outcome.SUCCEEDED, now=T0) is False
    assert await store.reclaim_expired(now=T0 + LEASE, lease_until=T0 + 2 * LEASE, limit=10) == []
    assert await store.next_ready_at() == T0 + 5 * MINUTE


async def test_fences_are_unique_and_increase_across_tasks_and_replacements(
    store: ScheduleStore,
) -> None:
    """Every run gets a fence larger than any before it, even after its task was replaced."""
    await store.add(new_task("a"), replace=False)
    await store.add(new_task("b"), replace=False)
    first = await claim_run(store, decision("a"))
    second = await claim_run(store, decision("b"))
    await store.add(new_task("a", version=2), replace=True)
    third = await claim_run(store, decision("a"))
    assert first.fence < second.fence < third.fence


# -- remove, get, list -----------------------------------------------------------------


async def test_remove_deletes_the_task_and_invalidates_its_runs(store: ScheduleStore) -> None:
    """A removed task is gone, never due, and its runs can neither start nor finish."""
    await store.add(new_task(), replace=False)
    run = await claim_run(store)
    assert await store.remove("t1") == 0  # its run was claimed but had not started
    assert await store.confirm([run]) == [False]
    assert await store.get("t1") is None
    assert await store.list() == []
    assert await store.due(T0 + MINUTE, 10) == []
    assert await store.next_ready_at() is None
    assert await store.start(run, now=T0, lease_until=T0 + LEASE) is None
    assert await store.finish(run, Outcome.SUCCEEDED, now=T0) is False


async def test_removing_an_unknown_task_returns_none(store: ScheduleStore) -> None:
    """remove() reports None when there is no such task."""
    assert await store.remove("nope") is None


async def test_remove_counts_the_runs_that_had_started(store: ScheduleStore) -> None:
    """remove() counts exactly the runs confirmed before it: those already under way."""
    await store.add(new_task(), replace=False)
    first = await claim_run(store, decision(max_instances=3))
    second = await claim_run(store, decision("t1", T0 + MINUTE, max_instances=3))
    third = await claim_run(store, decision("t1", T0 + 2 * MINUTE, max_instances=3))
    assert await store.confirm([first, second]) == [True, True]
    await store.finish(second, Outcome.SUCCEEDED, now=T0)  # ended: no longer under way
    assert await store.remove("t1") == 1
    assert await store.confirm([third]) == [False]


async def test_a_re_issued_run_is_not_started_until_confirmed(store: ScheduleStore) -> None:
    """A run whose lease expired after it started is re-issued unstarted: removing the
    task then reports no run under way, and the old fence cannot be confirmed."""
    await store.add(new_task(), replace=False)
    run = await claim_run(store)
    assert await store.confirm([run]) == [True]
    [again] = await store.reclaim_expired(now=T0 + LEASE, lease_until=T0 + 2 * LEASE, limit=10)
    assert await store.confirm([run]) == [False]
    assert await store.remove("t1") == 0
    assert await store.confirm([again]) == [False]


async def test_get_returns_none_for_an_unknown_task(store: ScheduleStore) -> None:
    """get() of an id never added is None."""
    assert await store.get("nope") is None


async def test_list_returns_every_task_ordered_by_id(store: ScheduleStore) -> None:
    """list() returns all tasks, paused and parked included, sorted by id."""
    for task_id in ["c", "a", "d", "b"]:
        await store.add(new_task(task_id), replace=False)
    await store.set_paused("c", paused=True, due_at=None, ready_at=None)
    await store.park("d", "job class missing")
    states = await store.list()
    assert [s.task_id for s in states] == ["a", "b", "c", "d"]
    assert [s.paused for s in states] == [False, False, True, False]
    assert [s.parked_reason for s in states] == [None, None, None, "job class missing"]
    assert states[0] == await store.get("a")


async def test_list_of_an_empty_store_is_empty(store: ScheduleStore) -> None:
    """A fresh store lists no tasks."""
    assert await store.list() == []


# -- pause, resume, park ---------------------------------------------------------------


async def test_a_paused_task_is_never_due(store: ScheduleStore) -> None:
    """Pausing takes a task out of due() and next_ready_at(), keeping it listed."""
    await store.add(new_task(), replace=False)
    assert await store.set_paused("t1", paused=True, due_at=None, ready_at=None) is True
    state = await store.get("t1")
    assert state is not None and state.paused is True
    assert await store.due(T0 + MINUTE, 10) == []
    assert await store.next_ready_at() is None


async def test_resuming_makes_the_task_due_at_the_given_time(store: ScheduleStore) -> None:
    """A resumed task is due at ``due_at`` and claimable from ``ready_at``."""
    await store.add(new_task(), replace=False)
    await store.set_paused("t1", paused=True, due_at=None, ready_at=None)
    due, ready = T0 + 10 * MINUTE, T0 + 10 * MINUTE + 5 * SEC
    assert await store.set_paused("t1", paused=False, due_at=due, ready_at=ready) is True
    state = await store.get("t1")
    assert state is not None
    assert (state.paused, state.due_at) == (False, due)
    assert await store.due(due, 10) == []
    assert await store.due(ready, 10) == [DueTask("t1", due, descriptor("t1"))]
    assert await store.next_ready_at() == ready


async def test_resuming_with_no_next_occurrence_leaves_the_task_not_due(
    store: ScheduleStore,
) -> None:
    """Resumed with ``due_at=None``, a task has no next occurrence and is never due."""
    await store.add(new_task(), replace=False)
    await store.set_paused("t1", paused=True, due_at=None, ready_at=None)
    await store.set_paused("t1", paused=False, due_at=None, ready_at=None)
    state = await store.get("t1")
    assert state is not None and (state.paused, state.due_at) == (False, None)
    assert await store.due(T0 + MINUTE, 10) == []


@pytest.mark.parametrize("paused", [True, False])
async def test_pausing_or_resuming_an_unknown_task_returns_false(
    store: ScheduleStore, paused: bool
) -> None:
    """set_paused() reports False when there is no such task."""
    assert await store.set_paused("nope", paused=paused, due_at=T0, ready_at=T0) is False


async def test_a_parked_task_is_kept_with_its_reason_and_never_due(store: ScheduleStore) -> None:
    """Parking keeps the task with its reason, records the outcome and unschedules it."""
    await store.add(new_task(), replace=False)
    assert await store.park("t1", "unknown job 'Job'") is True
    state = await store.get("t1")
    assert state is not None
    assert state.parked_reason == "unknown job 'Job'"
    assert (state.last_outcome, state.counts) == (Outcome.PARKED, {"parked": 1})
    assert await store.due(T0 + MINUTE, 10) == []
    assert await store.next_ready_at() is None


async def test_resuming_a_parked_task_does_not_unpark_it(store: ScheduleStore) -> None:
    """Resume clears the pause only: a parked task stays out of the schedule."""
    await store.add(new_task(), replace=False)
    await store.park("t1", "bad data")
    await store.set_paused("t1", paused=True, due_at=None, ready_at=None)
    await store.set_paused("t1", paused=False, due_at=T0, ready_at=T0)
    assert await store.due(T0 + MINUTE, 10) == []
    assert await status_of(store, decision()) is ClaimStatus.GONE


async def test_parking_an_unknown_task_returns_false(store: ScheduleStore) -> None:
    """park() reports False when there is no such task."""
    assert await store.park("nope", "why") is False


# -- due, next_ready_at ----------------------------------------------------------------


async def test_due_returns_ready_tasks_earliest_first_up_to_the_limit(
    store: ScheduleStore,
) -> None:
    """due() lists tasks ready at or before ``now``, earliest first, at most ``limit``."""
    for task_id, offset in [("late", 3), ("early", 1), ("middle", 2), ("future", 9)]:
        await store.add(new_task(task_id, due_at=T0 + offset * SEC), replace=False)
    found = await store.due(T0 + 3 * SEC, 2)
    assert [(d.task_id, d.due_at) for d in found] == [("early", T0 + SEC), ("middle", T0 + 2 * SEC)]
    assert [d.task_id for d in await store.due(T0 + 3 * SEC, 10)] == ["early", "middle", "late"]
    assert found[0].descriptor_json == descriptor("early")


async def test_due_excludes_tasks_not_yet_ready(store: ScheduleStore) -> None:
    """A task is due from its ready time (due_at plus jitter), and reports its due_at."""
    await store.add(new_task(due_at=T0, ready_at=T0 + 7 * SEC), replace=False)
    assert await store.due(T0 + 7 * SEC - timedelta(milliseconds=1), 10) == []
    assert await store.due(T0 + 7 * SEC, 10) == [DueTask("t1", T0, descriptor("t1"))]


async def test_a_task_with_no_next_occurrence_is_never_due(store: ScheduleStore) -> None:
    """After its last occurrence is claimed, a task is kept for its run but is not due."""
    await store.add(new_task(), replace=False)
    await claim_run(store, last_decision())
    state = await store.get("t1")
    assert state is not None and (state.due_at, state.running) == (None, 1)
    assert await store.due(T0 + 365 * timedelta(days=1), 10) == []


async def test_next_ready_at_of_an_empty_store_is_none(store: ScheduleStore) -> None:
    """With no tasks and no runs there is nothing to wake up for."""
    assert await store.next_ready_at() is None


async def test_next_ready_at_is_the_earliest_ready_time(store: ScheduleStore) -> None:
    """next_ready_at() is the earliest ready time among schedulable tasks."""
    await store.add(new_task("a", due_at=T0 + MINUTE), replace=False)
    await store.add(new_task("b", due_at=T0, ready_at=T0 + 5 * SEC), replace=False)
    await store.add(new_task("c", due_at=T0 - MINUTE), replace=False)
    await store.park("c", "bad")
    assert await store.next_ready_at() == T0 + 5 * SEC


async def test_next_ready_at_includes_lease_expiries(store: ScheduleStore) -> None:
    """A run's lease expiry counts as a wake-up time, earlier than any due task."""
    await store.add(new_task("once"), replace=False)
    await store.add(new_task("later", due_at=T0 + MINUTE), replace=False)
    await claim_run(store, last_decision("once"), lease_until=T0 + 10 * SEC)
    assert await store.next_ready_at() == T0 + 10 * SEC


# -- claim -----------------------------------------------------------------------------


async def test_claim_hands_out_a_run_and_moves_the_schedule_on(store: ScheduleStore) -> None:
    """CLAIMED: a run for ``run_at`` under a fresh fence; the task is due at ``next_due_at``."""
    await store.add(new_task(), replace=False)
    run = await claim_run(store)
    assert (run.task_id, run.occurrence_at, run.attempt) == ("t1", T0, 1)
    assert isinstance(run.fence, int)
    state = await store.get("t1")
    assert state is not None
    assert (state.due_at, state.running, state.last_outcome) == (T0 + MINUTE, 1, None)
    assert await store.due(T0, 10) == []
    assert [d.due_at for d in await store.due(T0 + MINUTE, 10)] == [T0 + MINUTE]


async def test_claim_without_run_at_advances_the_schedule(store: ScheduleStore) -> None:
    """ADVANCED: nothing runs, and the task moves to its next occurrence."""
    await store.add(new_task(), replace=False)
    [result] = await store.claim([decision(run=False)], now=T0, lease_until=T0 + LEASE)
    assert (result.status, result.run) == (ClaimStatus.ADVANCED, None)
    state = await store.get("t1")
    assert state is not None and (state.due_at, state.running) == (T0 + MINUTE, 0)
    assert await store.next_ready_at() == T0 + MINUTE


async def test_an_occurrence_due_at_max_instances_is_skipped(store: ScheduleStore) -> None:
    """SKIPPED: with max_instances runs going, the occurrence is counted as skipped."""
    await store.add(new_task(), replace=False)
    await claim_run(store)
    [result] = await store.claim([decision(expected=T0 + MINUTE)], now=T0, lease_until=T0 + LEASE)
    assert (result.status, result.run) == (ClaimStatus.SKIPPED, None)
    state = await store.get("t1")
    assert state is not None
    assert (state.due_at, state.running) == (T0 + 2 * MINUTE, 1)
    assert (state.last_outcome, state.counts) == (Outcome.SKIPPED, {"skipped": 1})


async def test_claim_allows_up_to_max_instances_runs_at_once(store: ScheduleStore) -> None:
    """With max_instances=2, two occurrences run side by side and the third is skipped."""
    await store.add(new_task(), replace=False)
    statuses = [
        await status_of(store, decision(expected=T0 + k * MINUTE, max_instances=2))
        for k in range(3)
    ]
    assert statuses == [ClaimStatus.CLAIMED, ClaimStatus.CLAIMED, ClaimStatus.SKIPPED]


async def test_claim_with_a_stale_expected_due_at_races(store: ScheduleStore) -> None:
    """RACED: a decision made from an outdated due_at changes nothing."""
    await store.add(new_task(), replace=False)
    before = await store.get("t1")
    assert await status_of(store, decision(expected=T0 - MINUTE, missed=2)) is ClaimStatus.RACED
    assert await store.get("t1") == before


async def test_claim_of_a_task_without_next_occurrence_races(store: ScheduleStore) -> None:
    """A task whose last occurrence was already claimed no longer has the expected due_at."""
    await store.add(new_task(), replace=False)
    await claim_run(store, last_decision())
    assert await status_of(store, last_decision()) is ClaimStatus.RACED


@pytest.mark.parametrize("how", ["removed", "paused", "parked", "never added"])
async def test_claim_of_a_task_that_left_the_schedule_is_gone(
    store: ScheduleStore, how: str
) -> None:
    """GONE: the task was cancelled, paused or parked after due() returned it."""
    if how != "never added":
        await store.add(new_task(), replace=False)
    if how == "removed":
        await store.remove("t1")
    elif how == "paused":
        await store.set_paused("t1", paused=True, due_at=None, ready_at=None)
    elif how == "parked":
        await store.park("t1", "bad")
    [result] = await store.claim([decision()], now=T0, lease_until=T0 + LEASE)
    assert (result.status, result.run) == (ClaimStatus.GONE, None)
    state = await store.get("t1")
    assert state is None or (state.due_at, state.running) == (T0, 0)


async def test_claim_adds_missed_occurrences_to_the_missed_count(store: ScheduleStore) -> None:
    """``missed`` is added to the missed count; a claimed catch-up run leaves last_outcome."""
    await store.add(new_task(), replace=False)
    await claim_run(store, decision(missed=3))
    state = await store.get("t1")
    assert state is not None and (state.counts, state.last_outcome) == ({"missed": 3}, None)


async def test_missed_occurrences_with_nothing_to_run_are_the_last_outcome(
    store: ScheduleStore,
) -> None:
    """An ADVANCED decision with missed occurrences records ``missed`` as the last outcome."""
    await store.add(new_task(), replace=False)
    assert await status_of(store, decision(run=False, missed=2)) is ClaimStatus.ADVANCED
    state = await store.get("t1")
    assert state is not None and (state.counts, state.last_outcome) == ({"missed": 2}, "missed")


async def test_a_skipped_occurrence_outranks_missed_ones_as_last_outcome(
    store: ScheduleStore,
) -> None:
    """When the latest occurrence is skipped, last_outcome is skipped; misses still count."""
    await store.add(new_task(), replace=False)
    await claim_run(store)
    d = decision(expected=T0 + MINUTE, missed=1)
    assert await status_of(store, d) is ClaimStatus.SKIPPED
    state = await store.get("t1")
    assert state is not None
    assert (state.last_outcome, state.counts) == (Outcome.SKIPPED, {"skipped": 1, "missed": 1})


async def test_claim_applies_a_batch_with_one_result_per_decision_in_order(
    store: ScheduleStore,
) -> None:
    """One claim() call applies many decisions; results follow the decisions' order."""
    for task_id in ["a", "b", "c", "d"]:
        await store.add(new_task(task_id), replace=False)
    await store.park("d", "bad")
    batch = [
        decision("c"),
        decision("a", run=False),
        decision("b", expected=T0 + SEC),
        decision("d"),
        decision("zz"),
        decision("c", expected=T0 + MINUTE),
    ]
    results = await store.claim(batch, now=T0, lease_until=T0 + LEASE)
    assert [(r.task_id, r.status) for r in results] == [
        ("c", ClaimStatus.CLAIMED),
        ("a", ClaimStatus.ADVANCED),
        ("b", ClaimStatus.RACED),
        ("d", ClaimStatus.GONE),
        ("zz", ClaimStatus.GONE),
        ("c", ClaimStatus.SKIPPED),
    ]


async def test_claim_of_a_large_batch_claims_every_task(store: ScheduleStore) -> None:
    """A dispatcher claims hundreds of tasks at once, each with its own fence."""
    ids = [f"task-{i:04d}" for i in range(500)]
    for task_id in ids:
        await store.add(new_task(task_id), replace=False)
    due = await store.due(T0, 1000)
    assert [d.task_id for d in due] == ids
    results = await store.claim([decision(d.task_id) for d in due], now=T0, lease_until=T0 + LEASE)
    assert {r.status for r in results} == {ClaimStatus.CLAIMED}
    assert len({r.run.fence for r in results if r.run}) == len(ids)


async def test_claim_of_an_empty_batch_returns_nothing(store: ScheduleStore) -> None:
    """An empty batch is a no-op."""
    assert await store.claim([], now=T0, lease_until=T0 + LEASE) == []


async def test_two_dispatchers_claiming_the_same_occurrence_get_one_run(
    store: ScheduleStore,
) -> None:
    """Concurrent identical decisions: exactly one is CLAIMED, the other RACED."""
    await store.add(new_task(), replace=False)
    results = await asyncio.gather(
        *(store.claim([decision()], now=T0, lease_until=T0 + LEASE) for _ in range(2))
    )
    statuses = sorted(r.status.value for [r] in results)
    assert statuses == [ClaimStatus.CLAIMED.value, ClaimStatus.RACED.value]
    state = await store.get("t1")
    assert state is not None and state.running == 1


async def test_a_claimed_run_is_invisible_to_a_second_dispatcher_until_its_lease_expires(
    store: ScheduleStore,
) -> None:
    """A claimed occurrence is not due again, and is re-issued only once its lease expired."""
    await store.add(new_task(), replace=False)
    await claim_run(store, lease_until=T0 + 10 * SEC)
    later = T0 + 10 * SEC - timedelta(milliseconds=1)
    assert await store.due(later, 10) == []
    assert await store.reclaim_expired(now=later, lease_until=later + LEASE, limit=10) == []
    [run] = await store.reclaim_expired(now=T0 + 10 * SEC, lease_until=T0 + LEASE, limit=10)
    assert (run.occurrence_at, run.attempt) == (T0, 2)


# -- reclaim_expired -------------------------------------------------------------------


async def test_reclaim_reissues_an_expired_run_under_a_new_fence(store: ScheduleStore) -> None:
    """An expired run comes back with a new fence and attempt+1; the old fence is dead."""
    await store.add(new_task(), replace=False)
    old = await claim_run(store, lease_until=T0 + 10 * SEC)
    [new] = await store.reclaim_expired(now=T0 + 10 * SEC, lease_until=T0 + 40 * SEC, limit=10)
    assert (new.task_id, new.occurrence_at, new.attempt) == ("t1", T0, 2)
    assert new.fence > old.fence
    assert await store.start(old, now=T0, lease_until=T0 + LEASE) is None
    assert await store.extend([old], lease_until=T0 + LEASE) == [False]
    assert await store.finish(old, Outcome.SUCCEEDED, now=T0) is False
    assert await store.next_ready_at() == T0 + 40 * SEC
    state = await store.get("t1")
    assert state is not None and (state.running, state.counts) == (1, {})
    assert await store.start(new, now=T0 + 11 * SEC, lease_until=T0 + LEASE) is not None


async def test_a_reissued_run_that_expires_again_gets_another_attempt(
    store: ScheduleStore,
) -> None:
    """Each re-issue increments the attempt of the same occurrence."""
    await store.add(new_task(), replace=False)
    await claim_run(store, lease_until=T0 + SEC)
    await store.reclaim_expired(now=T0 + SEC, lease_until=T0 + 2 * SEC, limit=10)
    [run] = await store.reclaim_expired(now=T0 + 2 * SEC, lease_until=T0 + 3 * SEC, limit=10)
    assert (run.occurrence_at, run.attempt) == (T0, 3)


async def test_reclaim_reissues_at_most_limit_runs(store: ScheduleStore) -> None:
    """Expired runs beyond ``limit`` wait for the next call."""
    for task_id in ["a", "b", "c"]:
        await store.add(new_task(task_id), replace=False)
        await claim_run(store, decision(task_id), lease_until=T0 + SEC)
    first = await store.reclaim_expired(now=T0 + SEC, lease_until=T0 + LEASE, limit=2)
    rest = await store.reclaim_expired(now=T0 + SEC, lease_until=T0 + LEASE, limit=2)
    assert (len(first), len(rest)) == (2, 1)
    assert sorted(r.task_id for r in first + rest) == ["a", "b", "c"]


async def test_reclaim_drops_runs_of_tasks_that_no_longer_exist(store: ScheduleStore) -> None:
    """A run of a removed task is never re-issued."""
    await store.add(new_task(), replace=False)
    await claim_run(store, lease_until=T0 + SEC)
    await store.remove("t1")
    assert await store.reclaim_expired(now=T0 + MINUTE, lease_until=T0 + LEASE, limit=10) == []
    assert await store.next_ready_at() is None


# -- start, extend ---------------------------------------------------------------------


async def test_start_confirms_a_valid_run_and_returns_its_descriptor(
    store: ScheduleStore,
) -> None:
    """start() returns the run with the descriptor and records the last run time."""
    await store.add(new_task(), replace=False)
    run = await claim_run(store)
    started = await store.start(run, now=T0 + 2 * SEC, lease_until=T0 + LEASE)
    assert started == StartedRun(run, descriptor("t1"))
    state = await store.get("t1")
    assert state is not None and state.last_run_at == T0 + 2 * SEC


async def test_start_extends_the_lease(store: ScheduleStore) -> None:
    """After start(), the run's lease ends at the new ``lease_until``."""
    await store.add(new_task(), replace=False)
    run = await claim_run(store, last_decision(), lease_until=T0 + SEC)
    await store.start(run, now=T0, lease_until=T0 + MINUTE)
    assert await store.reclaim_expired(now=T0 + 59 * SEC, lease_until=T0 + LEASE, limit=10) == []
    assert await store.next_ready_at() == T0 + MINUTE


async def test_start_of_a_finished_run_returns_none(store: ScheduleStore) -> None:
    """A run that already finished must not execute again."""
    await store.add(new_task(), replace=False)
    run = await claim_run(store)
    await store.finish(run, Outcome.SUCCEEDED, now=T0)
    assert await store.start(run, now=T0, lease_until=T0 + LEASE) is None


async def test_extend_renews_valid_leases_and_rejects_stale_fences(store: ScheduleStore) -> None:
    """extend() answers per run: True and a new lease when valid, False when not."""
    await store.add(new_task("a"), replace=False)
    await store.add(new_task("b"), replace=False)
    live = await claim_run(store, decision("a"), lease_until=T0 + SEC)
    done = await claim_run(store, decision("b"), lease_until=T0 + SEC)
    await store.finish(done, Outcome.SUCCEEDED, now=T0)
    foreign = Run("b", live.fence, live.occurrence_at)
    assert await store.extend([live, done, foreign], lease_until=T0 + LEASE) == [True, False, False]
    assert await store.reclaim_expired(now=T0 + 29 * SEC, lease_until=T0 + LEASE, limit=10) == []


async def test_extend_of_no_runs_returns_nothing(store: ScheduleStore) -> None:
    """An empty batch is a no-op."""
    assert await store.extend([], lease_until=T0 + LEASE) == []


# -- finish ----------------------------------------------------------------------------


async def test_finish_records_the_outcome_and_releases_the_run(store: ScheduleStore) -> None:
    """finish() sets last_outcome, counts it and frees the run's slot."""
    await store.add(new_task(), replace=False)
    run = await claim_run(store)
    assert await store.finish(run, Outcome.SUCCEEDED, now=T0 + SEC) is True
    state = await store.get("t1")
    assert state is not None
    assert (state.running, state.last_outcome, state.last_error) == (0, Outcome.SUCCEEDED, None)
    assert (state.counts, state.due_at) == ({"succeeded": 1}, T0 + MINUTE)
    assert await store.next_ready_at() == T0 + MINUTE


async def test_finish_records_the_error_of_a_failed_run(store: ScheduleStore) -> None:
    """A failed run leaves its one-line error on the task."""
    await store.add(new_task(), replace=False)
    run = await claim_run(store)
    await store.finish(run, Outcome.FAILED, now=T0, error="ValueError: boom")
    state = await store.get("t1")
    assert state is not None
    assert (state.last_outcome, state.last_error) == (Outcome.FAILED, "ValueError: boom")


async def test_counts_accumulate_per_outcome(store: ScheduleStore) -> None:
    """Each finished run adds one to its outcome's count."""
    await store.add(new_task(), replace=False)
    outcomes = [Outcome.SUCCEEDED, Outcome.FAILED, Outcome.SUCCEEDED, Outcome.TIMED_OUT]
    for k, outcome in enumerate(outcomes):
        run = await claim_run(store, decision(expected=T0 + k * MINUTE))
        await store.finish(run, outcome, now=T0 + k * MINUTE)
    state = await store.get("t1")
    assert state is not None
    assert state.counts == {"succeeded": 2, "failed": 1, "timed_out": 1}
    assert state.last_outcome is Outcome.TIMED_OUT


async def test_finish_with_a_stale_fence_writes_nothing(store: ScheduleStore) -> None:
    """A late finish from a re-issued run returns False and leaves the task untouched."""
    await store.add(new_task(), replace=False)
    old = await claim_run(store, lease_until=T0 + SEC)
    await store.reclaim_expired(now=T0 + SEC, lease_until=T0 + LEASE, limit=10)
    before = await store.get("t1")
    assert await store.finish(old, Outcome.FAILED, now=T0, error="late") is False
    assert await store.finish(old, Outcome.FAILED, now=T0, end_task=True) is False
    assert await store.get("t1") == before


async def test_finishing_a_run_twice_counts_it_once(store: ScheduleStore) -> None:
    """The second finish() of the same fence is rejected."""
    await store.add(new_task(), replace=False)
    run = await claim_run(store)
    assert await store.finish(run, Outcome.SUCCEEDED, now=T0) is True
    assert await store.finish(run, Outcome.SUCCEEDED, now=T0) is False
    state = await store.get("t1")
    assert state is not None and state.counts == {"succeeded": 1}


@pytest.mark.parametrize("confirmed", [False, True], ids=["claimed", "started"])
async def test_a_one_time_task_is_deleted_when_its_run_finishes(
    store: ScheduleStore, confirmed: bool
) -> None:
    """A task with no next occurrence ends with its last run, leaving no lease behind."""
    await store.add(new_task(), replace=False)
    run = await claim_run(store, last_decision())
    if confirmed:
        assert await store.confirm([run]) == [True]
    assert await store.finish(run, Outcome.FAILED, now=T0, error="boom") is True
    assert await store.get("t1") is None
    assert await store.list() == []
    assert await store.next_ready_at() is None


@pytest.mark.parametrize("how", ["finished", "parked", "re-issued"])
async def test_a_started_run_that_ends_leaves_no_lease_to_wake_for(
    store: ScheduleStore, how: str
) -> None:
    """Once a started run is finished, parked or re-issued, its old lease is gone: the next
    thing due is the task's next occurrence (or the new run's lease), never the old one."""
    await store.add(new_task(), replace=False)
    run = await claim_run(store, decision(), lease_until=T0 + LEASE)
    assert await store.confirm([run]) == [True]
    if how == "finished":
        await store.finish(run, Outcome.SUCCEEDED, now=T0)
        assert await store.next_ready_at() == T0 + MINUTE
    elif how == "parked":
        await store.park("t1", "no longer wanted")
        assert await store.next_ready_at() is None
    else:
        later = T0 + 3 * LEASE
        [again] = await store.reclaim_expired(now=T0 + LEASE, lease_until=later, limit=10)
        await store.set_paused("t1", paused=True, due_at=None, ready_at=None)
        assert await store.next_ready_at() == later
        await store.finish(again, Outcome.SUCCEEDED, now=T0)
        assert await store.next_ready_at() is None


async def test_a_task_without_next_occurrence_waits_for_its_last_run(
    store: ScheduleStore,
) -> None:
    """With two runs going, the task survives the first finish and ends with the second."""
    await store.add(new_task(), replace=False)
    first = await claim_run(store, decision(max_instances=2))
    second = await claim_run(store, last_decision(expected=T0 + MINUTE, max_instances=2))
    await store.finish(first, Outcome.SUCCEEDED, now=T0)
    state = await store.get("t1")
    assert state is not None and state.running == 1
    await store.finish(second, Outcome.SUCCEEDED, now=T0)
    assert await store.get("t1") is None


async def test_finish_with_end_task_deletes_the_task_and_its_runs(store: ScheduleStore) -> None:
    """end_task (StopRecurrence) deletes the task; its other runs' fences die with it."""
    await store.add(new_task(), replace=False)
    run = await claim_run(store, decision(max_instances=2))
    other = await claim_run(store, decision(expected=T0 + MINUTE, max_instances=2))
    assert await store.finish(run, Outcome.STOPPED, now=T0, end_task=True) is True
    assert await store.get("t1") is None
    assert await store.start(other, now=T0, lease_until=T0 + LEASE) is None
    assert await store.reclaim_expired(now=T0 + MINUTE, lease_until=T0 + LEASE, limit=10) == []
    assert await store.next_ready_at() is None


# -- time ------------------------------------------------------------------------------


async def test_datetimes_are_kept_to_the_millisecond(store: ScheduleStore) -> None:
    """Microseconds are truncated to milliseconds everywhere a time is stored."""
    precise = T0 + timedelta(microseconds=123_456)
    kept = T0 + timedelta(milliseconds=123)
    await store.add(NewTask("t1", descriptor("t1"), precise, precise), replace=False)
    state = await store.get("t1")
    assert state is not None and state.due_at == kept
    [due] = await store.due(kept, 10)
    assert due.due_at == kept
    run = await claim_run(store, Decision("t1", due.due_at, due.due_at, precise, precise))
    assert run.occurrence_at == kept
    await store.start(run, now=precise, lease_until=precise)
    state = await store.get("t1")
    assert state is not None and (state.due_at, state.last_run_at) == (kept, kept)
    assert await store.next_ready_at() == kept


async def test_datetimes_in_any_timezone_come_back_as_the_same_instant_in_utc(
    store: ScheduleStore,
) -> None:
    """An aware datetime in another zone is stored as its instant and read back in UTC."""
    plus_two = timezone(timedelta(hours=2))
    local = T0.astimezone(plus_two)
    await store.add(NewTask("t1", descriptor("t1"), local, local), replace=False)
    state = await store.get("t1")
    assert state is not None and state.due_at == T0
    assert state.due_at.utcoffset() == timedelta(0)


# -- the Redis store only: client flavours and failures --------------------------------


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
    await store.add(new_task(), replace=False)
    [due] = await store.due(T0, 10)
    run = await claim_run(store, decision(expected=due.due_at))
    started = await store.start(run, now=T0, lease_until=T0 + LEASE)
    assert started == StartedRun(run, descriptor("t1"))
    await store.finish(run, Outcome.FAILED, now=T0, error="Ünïcode error")
    [state] = await store.list()
    assert (state.last_outcome, state.last_error) == (Outcome.FAILED, "Ünïcode error")
    assert await store.next_ready_at() == T0 + MINUTE


@pytest.mark.redis
async def test_redis_store_keeps_every_key_under_its_prefix(
    redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    """Two prefixes on one database are two independent stores."""
    mine = RedisScheduleStore(redis_client, prefix=key_prefix)
    theirs = RedisScheduleStore(redis_client, prefix=f"{key_prefix}other:")
    await mine.add(new_task(), replace=False)
    await claim_run(mine)
    assert await theirs.list() == []
    assert await theirs.next_ready_at() is None
    keys = [key async for key in redis_client.scan_iter(match=f"{key_prefix}*")]
    assert {key.decode() for key in keys} == {
        f"{key_prefix}{name}" for name in ["task:t1", "due", "runs", "fence"]
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
        store.next_ready_at,
        lambda: store.claim([decision()], now=T0, lease_until=T0 + LEASE),
    ]
    try:
        for call in calls:
            with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{port}") as info:
                await call()
            assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)
    finally:
        await client.aclose()


# -- parking and ending ----------------------------------------------------------------


async def test_parking_a_task_invalidates_its_runs_and_keeps_it(store: ScheduleStore) -> None:
    """A parked task's runs may not start or finish, and it is kept, not deleted."""
    await store.add(new_task(), replace=False)
    run = await claim_run(store, last_decision())
    assert await store.park("t1", "job class removed") is True
    assert await store.start(run, now=T0, lease_until=T0 + LEASE) is None
    assert await store.finish(run, Outcome.SUCCEEDED, now=T0) is False
    state = await store.get("t1")
    assert state is not None
    assert (state.parked_reason, state.running, state.counts) == (
        "job class removed",
        0,
        {"parked": 1},
    )


async def test_a_missed_one_time_occurrence_ends_the_task(store: ScheduleStore) -> None:
    """A decision that runs nothing and leaves no next occurrence deletes the task."""
    await store.add(new_task(), replace=False)
    missed = Decision("t1", T0, None, None, None, missed=1)
    [result] = await store.claim([missed], now=T0, lease_until=T0 + LEASE)
    assert result.status is ClaimStatus.ADVANCED
    assert await store.get("t1") is None


# -- batched finishes ------------------------------------------------------------------


async def test_finish_many_applies_each_finish_and_rejects_stale_fences(
    store: ScheduleStore,
) -> None:
    """One call finishes several runs; a stale fence in the batch is rejected alone."""
    from cml_jobs.stores import Finish

    await store.add(new_task("a"), replace=False)
    await store.add(new_task("b"), replace=False)
    run_a = await claim_run(store, decision("a"))
    run_b = await claim_run(store, decision("b"))
    stale = Run("a", run_a.fence + 10_000, T0)
    results = await store.finish_many(
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


# -- trace context ---------------------------------------------------------------------

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_a_task_keeps_the_trace_context_it_was_added_with(store: ScheduleStore) -> None:
    """due() and get() return the W3C trace context given to add(), for every occurrence."""
    task = NewTask("t1", descriptor("t1"), T0, T0, trace_context=TRACEPARENT)
    await store.add(task, replace=False)
    [due] = await store.due(T0, 10)
    assert due.trace_context == TRACEPARENT
    state = await store.get("t1")
    assert state is not None and state.trace_context == TRACEPARENT
    await claim_run(store)
    [following] = await store.due(T0 + MINUTE, 10)
    assert following.trace_context == TRACEPARENT


async def test_a_task_added_without_a_trace_context_has_none(store: ScheduleStore) -> None:
    """No trace context in, None out (not an empty string)."""
    await store.add(new_task(), replace=False)
    [due] = await store.due(T0, 10)
    state = await store.get("t1")
    assert due.trace_context is None
    assert state is not None and state.trace_context is None
    assert [s.trace_context for s in await store.list()] == [None]


async def test_a_replaced_task_takes_the_new_trace_context(store: ScheduleStore) -> None:
    """replace=True drops the old task's trace context with it."""
    await store.add(new_task(), replace=False)
    replacement = NewTask("t1", descriptor("t1", 2), T0, T0, trace_context=TRACEPARENT)
    await store.add(replacement, replace=True)
    state = await store.get("t1")
    assert state is not None and state.trace_context == TRACEPARENT


async def test_poll_returns_the_due_tasks_and_when_the_next_one_is_ready(
    store: ScheduleStore,
) -> None:
    """poll() is due() plus the ready time of the first task it left out."""
    for n, offset in enumerate([0, 1, 5]):
        await store.add(new_task(f"t{n}", due_at=T0 + offset * MINUTE), replace=False)
    batch = await store.poll(T0 + MINUTE, 10)
    assert [task.task_id for task in batch.tasks] == ["t0", "t1"]
    assert batch.next_ready_at == T0 + 5 * MINUTE
    limited = await store.poll(T0 + MINUTE, 1)
    assert ([t.task_id for t in limited.tasks], limited.next_ready_at) == (["t0"], T0 + MINUTE)
    await store.set_paused("t2", paused=True, due_at=None, ready_at=None)
    assert (await store.poll(T0 + MINUTE, 10)).next_ready_at is None


async def test_the_generation_stays_the_same_while_the_store_keeps_its_data(
    store: ScheduleStore,
) -> None:
    """generation() answers the same id until the store's data is lost."""
    first = await store.generation()
    await store.add(new_task(), replace=False)
    assert await store.generation() == first
    assert first


async def test_a_redis_that_lost_its_data_has_a_new_generation(
    redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    """After the keys are gone (a restart without persistence) the generation differs."""
    from cml_jobs.stores.redis import RedisScheduleStore

    store = RedisScheduleStore(redis_client, prefix=key_prefix)
    first = await store.generation()
    await redis_client.delete(*[k async for k in redis_client.scan_iter(f"{key_prefix}*")])
    assert await store.generation() != first


async def test_confirm_tells_which_runs_may_still_start(store: ScheduleStore) -> None:
    """confirm() is True for a live run and False once its task is cancelled."""
    await store.add(new_task("a"), replace=False)
    await store.add(new_task("b"), replace=False)
    run_a = await claim_run(store, decision("a"))
    run_b = await claim_run(store, decision("b"))
    await store.remove("b")
    assert await store.confirm([run_a, run_b]) == [True, False]
    assert (await store.get("a")) is not None
