"""The scheduler's behaviour, on both stores, with time moved by hand (cml_jobs.testing)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from cml_jobs import (
    BackgroundTaskScheduler,
    CronTaskDescriptor,
    EventKind,
    InvalidTaskDataError,
    InvalidTriggerError,
    Outcome,
    PayloadTooLargeError,
    RecurrentTaskDescriptor,
    ScheduledTaskDescriptor,
    TaskEvent,
    TaskExistsError,
    TaskNotFoundError,
    UnknownJobError,
)
from cml_jobs.exceptions import InvalidDescriptorError
from cml_jobs.stores import ScheduleStore
from cml_jobs.testing import ManualClock, run_due
from tests.fixtures.behaviour_jobs import GatedJob, OneShotJob, ScriptedJob

JOBS = ["tests.fixtures.behaviour_jobs"]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def scheduler(
    store: ScheduleStore, clock: ManualClock
) -> AsyncIterator[BackgroundTaskScheduler]:
    """A scheduler over each store, with no worker: tests run due occurrences themselves."""
    ScriptedJob.attempts.clear()
    OneShotJob.ran.clear()
    app = BackgroundTaskScheduler.configure(
        modules=JOBS, store=store, clock=clock, run_worker=False
    )
    async with app:
        yield app


def recurrent(task_id: str = "r", mode: str = "ok", **options: object) -> RecurrentTaskDescriptor:
    return RecurrentTaskDescriptor(
        id=task_id, name="ScriptedJob", data={"mode": mode}, interval=60, **options
    )


def kinds(events: list) -> list[str]:  # type: ignore[type-arg]
    return [e.kind.value for e in events]


async def test_a_recurrent_task_runs_on_its_grid_and_reports_next_run_time(
    scheduler: BackgroundTaskScheduler, clock: ManualClock
) -> None:
    """Occurrences fall at start + k x interval, whenever the runs happen."""
    start = clock.now()
    info = await scheduler.bus.schedule_task(recurrent())
    assert info.next_run_time == start + timedelta(seconds=60)
    assert await run_due(scheduler) == []
    clock.advance(seconds=61.5)
    events = await run_due(scheduler)
    assert kinds(events) == ["started", "succeeded"]
    assert events[0].occurrence_at == start + timedelta(seconds=60)
    [task] = await scheduler.list_tasks()
    assert task.next_run_time == start + timedelta(seconds=120)
    assert task.last_outcome is Outcome.SUCCEEDED
    assert task.last_run_time == clock.now()


async def test_missed_occurrences_coalesce_into_one_catch_up_run(
    scheduler: BackgroundTaskScheduler, clock: ManualClock
) -> None:
    """After 5 intervals without a tick, one run happens and 4 are recorded missed."""
    await scheduler.bus.schedule_task(recurrent())
    clock.advance(seconds=300 + 10)
    events = await run_due(scheduler)
    assert kinds(events) == ["missed", "started", "succeeded"]
    assert events[0].count == 4
    task = await scheduler.bus.get_task("r")
    assert task.counts == {"missed": 4, "succeeded": 1}


async def test_without_coalesce_each_occurrence_within_grace_runs(
    scheduler: BackgroundTaskScheduler, clock: ManualClock
) -> None:
    """coalesce=False runs every late occurrence still within misfire_grace_time."""
    await scheduler.bus.schedule_task(recurrent(coalesce=False, misfire_grace_time=150))
    clock.advance(seconds=300 + 10)
    events = await run_due(scheduler)
    assert kinds(events).count("succeeded") == 3  # 180, 240 and 300 s are within 150 s
    assert (await scheduler.bus.get_task("r")).counts["missed"] == 2


async def test_an_occurrence_later_than_grace_is_missed_not_run(
    scheduler: BackgroundTaskScheduler, clock: ManualClock
) -> None:
    """A one-time task found more than misfire_grace_time late is recorded missed and ends."""
    at = clock.now() + timedelta(seconds=10)
    await scheduler.bus.schedule_task(
        ScheduledTaskDescriptor(id="once", name="OneShotJob", scheduled_at=at, misfire_grace_time=5)
    )
    clock.advance(seconds=20)
    assert kinds(await run_due(scheduler)) == ["missed"]
    assert OneShotJob.ran == []
    assert await scheduler.list_tasks() == []


async def test_a_one_time_task_runs_once_and_ends(
    scheduler: BackgroundTaskScheduler, clock: ManualClock
) -> None:
    """A scheduled task runs at its time, once; it stays listed, ended, with its outcome
    and history for history_retention (7 days), then is gone."""
    at = clock.now() + timedelta(seconds=10)
    await scheduler.bus.schedule_task(
        ScheduledTaskDescriptor(id="once", name="OneShotJob", scheduled_at=at)
    )
    clock.advance(seconds=11)
    await run_due(scheduler)
    ended_at = clock.now()
    clock.advance(seconds=600)
    await run_due(scheduler)
    assert OneShotJob.ran == ["once"]
    [task] = await scheduler.list_tasks()
    assert (task.id, task.last_outcome, task.ended_at) == ("once", Outcome.SUCCEEDED, ended_at)
    assert task.next_run_time is None
    [row] = await scheduler.bus.get_history("once")
    assert (row.outcome, row.occurrence_at, row.ended_at) == (Outcome.SUCCEEDED, at, ended_at)
    clock.set(ended_at + timedelta(days=7) - timedelta(milliseconds=1))
    assert (await scheduler.bus.get_task("once")).ended_at == ended_at
    clock.advance(seconds=0.001)
    assert await scheduler.list_tasks() == []
    with pytest.raises(TaskNotFoundError):
        await scheduler.bus.get_task("once")


async def test_a_failing_job_is_retried_then_recorded_failed_and_keeps_its_schedule(
    scheduler: BackgroundTaskScheduler, clock: ManualClock
) -> None:
    """Retries with backoff, then 'failed'; the next occurrence still runs."""
    await scheduler.bus.schedule_task(recurrent(mode="fail", max_retries=2, retry_backoff=0.001))
    clock.advance(seconds=60)
    events = await run_due(scheduler)
    assert kinds(events) == ["started", "retried", "retried", "failed"]
    assert events[-1].error == "RuntimeError: boom on attempt 3"
    task = await scheduler.bus.get_task("r")
    assert (task.last_outcome, task.last_error) == (Outcome.FAILED, events[-1].error)
    assert ScriptedJob.attempts["r"] == 3
    clock.advance(seconds=60)
    assert kinds(await run_due(scheduler))[-1] == "failed"
    assert ScriptedJob.attempts["r"] == 6


async def test_a_retry_that_succeeds_records_success(
    scheduler: BackgroundTaskScheduler, clock: ManualClock
) -> None:
    """A transient failure followed by success ends as succeeded."""
    await scheduler.bus.schedule_task(
        recurrent(mode="fail_twice", max_retries=3, retry_backoff=0.001)
    )
    clock.advance(seconds=60)
    assert kinds(await run_due(scheduler)) == ["started", "retried", "retried", "succeeded"]


async def test_a_run_past_its_timeout_is_cancelled_and_recorded_timed_out(
    scheduler: BackgroundTaskScheduler, clock: ManualClock
) -> None:
    """A hanging job is cancelled at its timeout; the schedule goes on."""
    start = clock.now()
    await scheduler.bus.schedule_task(recurrent(mode="hang", timeout=0.05))
    clock.advance(seconds=60)
    assert kinds(await run_due(scheduler)) == ["started", "timed_out"]
    task = await scheduler.bus.get_task("r")
    assert task.last_outcome is Outcome.TIMED_OUT
    assert task.next_run_time == start + timedelta(seconds=120)


async def test_stop_recurrence_ends_the_task(
    scheduler: BackgroundTaskScheduler, clock: ManualClock
) -> None:
    """A job raising StopRecurrence is recorded stopped and its task is removed; its
    history stays readable for history_retention."""
    await scheduler.bus.schedule_task(recurrent(mode="stop"))
    clock.advance(seconds=60)
    assert kinds(await run_due(scheduler)) == ["started", "stopped"]
    assert await scheduler.list_tasks() == []
    [row] = await scheduler.bus.get_history("r")
    assert (row.outcome, row.error_type) == (Outcome.STOPPED, None)
    clock.advance(seconds=600)
    assert await run_due(scheduler) == []


async def test_an_occurrence_due_while_the_previous_run_goes_on_is_skipped(
    store: ScheduleStore, clock: ManualClock
) -> None:
    """With max_instances=1 a second occurrence does not start beside a running one: an
    in-app worker on a ManualClock claims the first run, which holds at its gate, and the
    next occurrence is skipped and counted."""
    GatedJob.reset()
    app = BackgroundTaskScheduler.configure(modules=JOBS, store=store, clock=clock, run_worker=True)
    async with app:
        events: list[TaskEvent] = []
        app.subscribe(events.append)
        skipped, succeeded = _seen(app, EventKind.SKIPPED), _seen(app, EventKind.SUCCEEDED)
        descriptor = RecurrentTaskDescriptor(id="g", name="GatedJob", interval=60)
        first = (await app.bus.schedule_task(descriptor)).next_run_time
        assert first is not None
        clock.advance(seconds=60)  # wakes the dispatcher, which sleeps on the clock
        await asyncio.wait_for(GatedJob.waiting.wait(), 30)
        clock.advance(seconds=60)
        await asyncio.wait_for(skipped.wait(), 30)
        task = await app.bus.get_task("g")
        assert (task.counts, task.running) == ({"skipped": 1}, 1)
        GatedJob.gate.set()
        await asyncio.wait_for(succeeded.wait(), 30)
    skipped = [e.occurrence_at for e in events if e.kind is EventKind.SKIPPED]
    assert skipped == [first + timedelta(seconds=60)]


def _seen(app: BackgroundTaskScheduler, kind: EventKind) -> asyncio.Event:
    """An event set when ``app`` emits a lifecycle event of ``kind``."""
    seen = asyncio.Event()
    app.subscribe(lambda event: seen.set() if event.kind is kind else None)
    return seen


async def test_pause_and_resume(scheduler: BackgroundTaskScheduler, clock: ManualClock) -> None:
    """A paused task does not run; resumed, it continues on its grid from now."""
    start = clock.now()
    await scheduler.bus.schedule_task(recurrent())
    await scheduler.bus.pause_task("r")
    clock.advance(seconds=200)
    assert await run_due(scheduler) == []
    assert (await scheduler.bus.get_task("r")).paused
    await scheduler.bus.resume_task("r")
    task = await scheduler.bus.get_task("r")
    assert task.next_run_time == start + timedelta(seconds=240)
    clock.advance(seconds=40)
    assert kinds(await run_due(scheduler)) == ["started", "succeeded"]


async def test_cancel_removes_the_task(
    scheduler: BackgroundTaskScheduler, clock: ManualClock
) -> None:
    """A cancelled task never runs again; cancelling it twice is an error naming it."""
    await scheduler.bus.schedule_task(recurrent())
    await scheduler.bus.cancel_task("r")
    clock.advance(seconds=600)
    assert await run_due(scheduler) == []
    with pytest.raises(TaskNotFoundError, match="'r'"):
        await scheduler.bus.cancel_task("r")


@pytest.mark.parametrize("where", ["configure", "body"])
async def test_a_cancel_counts_the_run_under_way_and_stops_it_in_this_process(
    scheduler: BackgroundTaskScheduler, clock: ManualClock, where: str
) -> None:
    """A run is under way from its claim: a cancel landing while the job is configured or
    in its body returns 1, and the worker in the same process stops the run at once (the
    body never completes, nothing is recorded)."""
    GatedJob.reset()
    descriptor = RecurrentTaskDescriptor(
        id="g", name="GatedJob", data={"where": where}, interval=60
    )
    await scheduler.bus.schedule_task(descriptor)
    clock.advance(seconds=60)
    running = asyncio.create_task(run_due(scheduler))
    await GatedJob.waiting.wait()
    assert await scheduler.bus.cancel_task("g") == 1
    events = await asyncio.wait_for(running, 30)
    GatedJob.gate.set()
    assert GatedJob.ran == []
    assert not {"succeeded", "failed"} & set(kinds(events))
    assert await scheduler.list_tasks() == []


async def test_scheduling_the_same_task_twice_is_idempotent_and_a_different_one_conflicts(
    scheduler: BackgroundTaskScheduler,
) -> None:
    """Same descriptor: no-op. Different descriptor, same id: TaskExistsError unless replace."""
    await scheduler.bus.schedule_task(recurrent())
    await scheduler.bus.schedule_task(recurrent())
    with pytest.raises(TaskExistsError, match="'r'"):
        await scheduler.bus.schedule_task(recurrent(mode="fail"))
    await scheduler.bus.schedule_task(recurrent(mode="fail"), replace=True)
    [task] = await scheduler.list_tasks()
    assert task.descriptor is not None and task.descriptor.data == {"mode": "fail"}


@pytest.mark.parametrize(
    ("build", "error", "named"),
    [
        (lambda now: recurrent().model_copy(update={"name": "Nope"}), UnknownJobError, "'Nope'"),
        (
            lambda now: recurrent(mode=1).model_copy(update={"data": {"x": 1}}),
            InvalidTaskDataError,
            "'x'",
        ),
        (
            lambda now: RecurrentTaskDescriptor(id="r", name="ScriptedJob", interval=60).model_copy(
                update={"data": {"mode": "ok", "extra": 1}}
            ),
            InvalidTaskDataError,
            "extra",
        ),
        (
            lambda now: ScheduledTaskDescriptor(
                id="s", name="OneShotJob", scheduled_at=now - timedelta(hours=1)
            ),
            InvalidTriggerError,
            "in the past",
        ),
        (
            lambda now: ScheduledTaskDescriptor(id="s", name="ScriptedJob", scheduled_at=now),
            InvalidDescriptorError,
            "recurrent job",
        ),
        (
            lambda now: CronTaskDescriptor(id="c", name="ScriptedJob", cron="0 0 30 2 *"),
            InvalidTriggerError,
            "not a valid cron",
        ),
        (
            lambda now: recurrent().model_copy(update={"data": {"mode": "x" * 70_000}}),
            PayloadTooLargeError,
            "over the limit",
        ),
    ],
    ids=["unknown-job", "unexpected-data", "extra-data", "past-date", "wrong-kind", "never", "big"],
)
async def test_bad_descriptors_are_refused_and_nothing_is_written(
    scheduler: BackgroundTaskScheduler,
    clock: ManualClock,
    build: object,
    error: type[Exception],
    named: str,
) -> None:
    """Each bad input raises its own error, naming the value, and writes nothing."""
    with pytest.raises(error, match=named):
        await scheduler.bus.schedule_task(build(clock.now()))  # type: ignore[operator]
    assert await scheduler.list_tasks() == []


async def test_a_tampered_descriptor_is_parked_and_other_tasks_keep_running(
    scheduler: BackgroundTaskScheduler, store: ScheduleStore, clock: ManualClock
) -> None:
    """A descriptor corrupted in the store is parked with its reason; nothing crashes."""
    from cml_jobs.stores import NewTask

    await scheduler.bus.schedule_task(recurrent("good"))
    due = clock.now() + timedelta(seconds=60)
    for task_id, raw in [("garbage", "\x80not json"), ("shape", json.dumps({"kind": "recurrent"}))]:
        await store.add(NewTask(task_id, raw, due, due), replace=False)
    clock.advance(seconds=60)
    events = await run_due(scheduler)
    assert sorted(e.task_id for e in events if e.kind is EventKind.PARKED) == ["garbage", "shape"]
    assert [e.task_id for e in events if e.kind is EventKind.SUCCEEDED] == ["good"]
    parked = {t.id: t for t in await scheduler.list_tasks()}
    assert "stored descriptor is invalid" in (parked["garbage"].parked_reason or "")
    assert parked["shape"].next_run_time is None


async def test_a_task_whose_job_this_worker_lacks_is_left_to_one_that_has_it_then_parked(
    scheduler: BackgroundTaskScheduler, store: ScheduleStore, clock: ManualClock
) -> None:
    """A worker without the job class leaves the occurrence for a worker that has it
    (a rolling deploy is not a failure), and parks the task only after unknown_job_grace."""
    await scheduler.bus.schedule_task(recurrent())
    due = (await scheduler.bus.get_task("r")).next_run_time
    clock.advance(seconds=60)
    old = BackgroundTaskScheduler.configure(modules=[], store=store, clock=clock, run_worker=False)
    async with old:
        assert await run_due(old) == []
        task = await scheduler.bus.get_task("r")
        assert (task.parked_reason, task.next_run_time, task.counts) == (None, due, {})
        clock.advance(seconds=1)  # the occurrence is left for a second to other workers
        events = await run_due(scheduler)  # a worker that has the job runs it
        assert [(e.kind, e.occurrence_at) for e in events][-1] == (EventKind.SUCCEEDED, due)
        clock.advance(timedelta(minutes=10))
        assert [e.kind for e in await run_due(old)] == [EventKind.PARKED]
    task = await scheduler.bus.get_task("r")
    assert task.parked_reason is not None and "'ScriptedJob'" in task.parked_reason


async def test_stop_honours_the_drain_timeout_it_is_given_and_gives_the_run_back(
    store: ScheduleStore,
) -> None:
    """stop(drain_timeout=0.1) with a job still going does not wait for the configured
    drain timeout (60 s here): the run is interrupted, announced as such, given back to
    the store for a re-run, and its body never completes."""
    GatedJob.reset()
    app = BackgroundTaskScheduler.configure(
        modules=JOBS, store=store, run_worker=True, drain_timeout=60
    )
    events: list[TaskEvent] = []
    async with asyncio.timeout(30):  # far below the configured 60 s
        await app.start()
        app.subscribe(events.append)
        descriptor = ScheduledTaskDescriptor(
            id="long", name="GatedOnceJob", scheduled_at=app.clock.now()
        )
        await app.bus.schedule_task(descriptor)
        await GatedJob.waiting.wait()
        await app.stop(drain_timeout=timedelta(seconds=0.1))
    assert GatedJob.ran == []
    assert [e.kind for e in events][-1] is EventKind.INTERRUPTED
    [state] = await store.list()
    assert state.running == 1  # given back: due for a re-run at once, not after 60 s
