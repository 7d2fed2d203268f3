"""Run history: what ``get_history`` keeps for each task, on every store."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from cml_jobs import (
    BackgroundTaskScheduler,
    Outcome,
    RecurrentTaskDescriptor,
    RunRecord,
    ScheduledTaskDescriptor,
    TaskNotFoundError,
)
from cml_jobs.stores import ScheduleStore
from cml_jobs.testing import ManualClock, run_due
from tests.fixtures.ops_jobs import AccountSyncJob

JOBS = ["tests.fixtures.ops_jobs", "tests.fixtures.behaviour_jobs"]
EMAIL = "alice@example.com"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def scheduler(
    store: ScheduleStore, clock: ManualClock
) -> AsyncIterator[BackgroundTaskScheduler]:
    """A scheduler over each store, with no worker: tests run due occurrences themselves."""
    AccountSyncJob.runs.clear()
    app = BackgroundTaskScheduler.configure(
        modules=JOBS, store=store, clock=clock, run_worker=False
    )
    async with app:
        yield app


def sync(fail: bool = False, **options: object) -> RecurrentTaskDescriptor:
    data = {"email": EMAIL, "fail": fail}
    return RecurrentTaskDescriptor(
        id="sync", name="AccountSyncJob", data=data, interval=60, **options
    )


async def test_the_latest_100_of_150_runs_are_kept_with_every_field(
    scheduler: BackgroundTaskScheduler, clock: ManualClock
) -> None:
    """After 150 runs, get_history gives the latest 100, newest first, each with its
    occurrence, start, end, outcome, attempt, worker, lateness and duration."""
    start = clock.now()
    await scheduler.bus.schedule_task(sync())
    for _ in range(150):
        clock.advance(seconds=60)
        await run_due(scheduler)
    rows = await scheduler.bus.get_history("sync", limit=1000)
    assert len(rows) == 100
    occurrences = [start + timedelta(seconds=60 * k) for k in range(150, 50, -1)]
    assert [row.occurrence_at for row in rows] == occurrences
    worker = scheduler.runtime.executor.worker
    assert worker.count(":") >= 1 and worker.split(":")[1].split("/")[0].isdigit()
    for row in rows:
        assert (row.task_id, row.outcome, row.attempt, row.worker) == (
            "sync",
            Outcome.SUCCEEDED,
            1,
            worker,
        )
        assert row.started_at == row.ended_at == row.occurrence_at  # the clock stood still
        assert (row.lateness, row.duration) == (timedelta(0), timedelta(0))
        assert (row.error_type, row.error_message) == (None, None)
    assert [row.occurrence_at for row in await scheduler.bus.get_history("sync", 3)] == (
        occurrences[:3]
    )
    assert (await scheduler.bus.get_task("sync")).counts == {"succeeded": 150}


async def test_a_failed_run_shows_its_error_type_and_message_redacted(
    scheduler: BackgroundTaskScheduler, clock: ManualClock
) -> None:
    """A job that fails with a message quoting a redacted data value: the history row and
    the task's last error show the type and the message, with the value hidden."""
    await scheduler.bus.schedule_task(sync(fail=True))
    clock.advance(seconds=60)
    await run_due(scheduler)
    [row] = await scheduler.bus.get_history("sync")
    assert row.outcome is Outcome.FAILED
    assert row.error_type == "PermissionError"
    assert row.error_message == "PermissionError: account [redacted] is locked"
    task = await scheduler.bus.get_task("sync")
    assert task.last_error == row.error_message
    assert EMAIL not in json.dumps([row.to_json(), task.last_error])


async def test_a_long_error_message_is_cut_to_1_kib(
    scheduler: BackgroundTaskScheduler, clock: ManualClock
) -> None:
    """History stays bounded in bytes: an error message is kept to 1 KiB (cut on a
    character boundary, marked with an ellipsis)."""
    await scheduler.bus.schedule_task(sync())
    long = RunRecord("sync", clock.now(), Outcome.FAILED, clock.now(), error_message="é" * 2000)
    await scheduler.runtime.store.record([long])  # type: ignore[attr-defined]
    [stored] = await scheduler.bus.get_history("sync")
    assert stored.error_message is not None and len(stored.error_message.encode()) <= 1024
    assert stored.error_message == "é" * 510 + "..."


async def test_missed_and_skipped_occurrences_appear_in_the_history(
    scheduler: BackgroundTaskScheduler, clock: ManualClock
) -> None:
    """Occurrences that never ran are rows too: a backlog coalesced into one catch-up run
    shows as coalesced beside that run."""
    await scheduler.bus.schedule_task(sync(misfire_grace_time=30))
    clock.advance(seconds=60 * 5)
    await run_due(scheduler)
    rows = await scheduler.bus.get_history("sync")
    assert [row.outcome for row in rows] == [Outcome.SUCCEEDED, Outcome.COALESCED]
    assert rows[1].error_message is not None and rows[1].error_message.startswith("4 ")


async def test_update_task_keeps_history_and_counts(
    scheduler: BackgroundTaskScheduler, clock: ManualClock
) -> None:
    """Changing a task's trigger and options keeps its history, counts and last outcome;
    its next occurrence follows the new trigger."""
    await scheduler.bus.schedule_task(sync())
    clock.advance(seconds=60)
    await run_due(scheduler)
    updated = await scheduler.bus.update_task(sync(fail=True))
    assert updated.counts == {"succeeded": 1}
    assert updated.next_run_time == clock.now() + timedelta(seconds=60)
    changed = RecurrentTaskDescriptor(
        id="sync", name="AccountSyncJob", data={"email": EMAIL}, interval=600
    )
    info = await scheduler.bus.update_task(changed)
    assert info.next_run_time == clock.now() + timedelta(seconds=600)
    assert info.descriptor == changed and info.last_outcome is Outcome.SUCCEEDED
    assert len(await scheduler.bus.get_history("sync")) == 1
    with pytest.raises(TaskNotFoundError):
        await scheduler.bus.update_task(changed.model_copy(update={"id": "nope"}))


async def test_history_of_an_unknown_task_is_an_error(scheduler: BackgroundTaskScheduler) -> None:
    """get_history on an id that never was a task raises TaskNotFoundError."""
    with pytest.raises(TaskNotFoundError, match="'nope'"):
        await scheduler.bus.get_history("nope")


async def test_a_finished_one_time_task_shows_its_failure_until_retention_ends(
    scheduler: BackgroundTaskScheduler, clock: ManualClock
) -> None:
    """A one-time task that failed stays listed, ended, with its outcome and its history,
    for history_retention (7 days); then both are gone."""
    at = clock.now() + timedelta(seconds=5)
    await scheduler.bus.schedule_task(
        ScheduledTaskDescriptor(id="once", name="OneShotJob", data={}, scheduled_at=at)
    )
    clock.advance(seconds=5)
    await run_due(scheduler)
    task = await scheduler.bus.get_task("once")
    assert (task.last_outcome, task.ended_at) == (Outcome.SUCCEEDED, at)
    clock.advance(timedelta(days=6, hours=23))
    assert [t.id for t in await scheduler.list_tasks()] == ["once"]
    assert len(await scheduler.bus.get_history("once")) == 1
    clock.advance(timedelta(hours=1))
    assert await scheduler.list_tasks() == []
    with pytest.raises(TaskNotFoundError):
        await scheduler.bus.get_task("once")
    # A new task may take the id at once, without replace=True.
    await scheduler.bus.schedule_task(
        ScheduledTaskDescriptor(
            id="once", name="OneShotJob", scheduled_at=clock.now() + timedelta(seconds=5)
        )
    )
    assert (await scheduler.bus.get_task("once")).ended_at is None
