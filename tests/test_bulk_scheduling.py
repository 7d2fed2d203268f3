"""Scheduling and cancelling many tasks per call, through the bus, on every store:
everything is checked first, a batch holding a refused descriptor writes nothing, and
the refusal names every bad descriptor with its error. PostgreSQL, which lacks the
bulk capability, gets the same results one store call per task."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from cml_jobs import (
    BackgroundTaskScheduler,
    EventKind,
    RecurrentTaskDescriptor,
    TaskEvent,
    TasksRefusedError,
)
from cml_jobs.exceptions import (
    ConfigurationError,
    InvalidDescriptorError,
    InvalidTaskDataError,
    TaskExistsError,
    UnknownJobError,
)
from cml_jobs.stores import ScheduleStore
from cml_jobs.testing import ManualClock

JOBS = ["tests.fixtures.behaviour_jobs"]


@pytest.fixture
async def app(store: ScheduleStore) -> AsyncIterator[BackgroundTaskScheduler]:
    """A scheduler over each store, its time still; no worker runs anything."""
    scheduler = BackgroundTaskScheduler.configure(
        modules=JOBS, store=store, clock=ManualClock(), run_worker=False
    )
    async with scheduler:
        yield scheduler


def task(task_id: str, mode: str = "ok", name: str = "ScriptedJob") -> RecurrentTaskDescriptor:
    return RecurrentTaskDescriptor(id=task_id, name=name, data={"mode": mode}, interval=60)


async def ids(app: BackgroundTaskScheduler) -> list[str]:
    return [info.id for info in await app.list_tasks()]


async def test_schedule_tasks_schedules_every_descriptor_and_announces_each(
    app: BackgroundTaskScheduler,
) -> None:
    """All tasks are stored, due one interval from now, with one SCHEDULED event each."""
    events: list[TaskEvent] = []
    app.subscribe(events.append)
    wanted = [task(f"t{i:03d}") for i in range(250)]
    result = await app.bus.schedule_tasks(wanted, batch_size=100)
    assert result.scheduled == [d.id for d in wanted]
    assert result.unchanged == [] and result.refused == {} and result.held_back == []
    assert await ids(app) == [d.id for d in wanted]
    info = await app.bus.get_task("t007")
    assert info.next_run_time == app.clock.now() + wanted[7].interval
    assert [e.task_id for e in events if e.kind is EventKind.SCHEDULED] == result.scheduled


async def test_a_batch_with_one_invalid_descriptor_writes_nothing_from_that_batch(
    app: BackgroundTaskScheduler,
) -> None:
    """The refused descriptor's batch is held back whole; the other batches are written,
    and the error names the bad descriptor, its error, and the held-back ones."""
    wanted = [task(f"t{i}") for i in range(6)]
    wanted[4] = task("t4", name="NoSuchJob")
    with pytest.raises(TasksRefusedError) as refused:
        await app.bus.schedule_tasks(wanted, batch_size=3)
    result = refused.value.result
    assert list(result.refused) == ["t4"]
    assert isinstance(result.refused["t4"], UnknownJobError)
    assert result.held_back == ["t3", "t5"]
    assert result.scheduled == ["t0", "t1", "t2"]
    assert await ids(app) == ["t0", "t1", "t2"]
    message = str(refused.value)
    assert "'t4'" in message and "NoSuchJob" in message and "UnknownJobError" in message


async def test_every_refused_descriptor_is_named_with_its_own_error(
    app: BackgroundTaskScheduler,
) -> None:
    """Data that does not fit the job and an id given twice are both reported; nothing of
    their batch is written."""
    bad_data = RecurrentTaskDescriptor(
        id="bad-data", name="ScriptedJob", data={"nope": 1}, interval=60
    )
    with pytest.raises(TasksRefusedError) as refused:
        await app.bus.schedule_tasks([task("ok"), bad_data, task("ok", mode="other")])
    errors = refused.value.result.refused
    assert isinstance(errors["bad-data"], InvalidTaskDataError)
    assert isinstance(errors["ok"], InvalidDescriptorError)
    assert "more than once" in str(errors["ok"])
    assert await ids(app) == []


async def test_scheduling_the_same_tasks_again_changes_nothing(
    app: BackgroundTaskScheduler,
) -> None:
    """Bulk scheduling is idempotent, as schedule_task is."""
    wanted = [task(f"t{i}") for i in range(3)]
    await app.bus.schedule_tasks(wanted)
    again = await app.bus.schedule_tasks(wanted)
    assert again.scheduled == [] and again.unchanged == ["t0", "t1", "t2"]


async def test_an_id_held_by_a_different_task_is_refused_alone_unless_replacing(
    app: BackgroundTaskScheduler,
) -> None:
    """Without replace the taken id is refused (TaskExistsError) and the rest written;
    with replace it is replaced."""
    await app.bus.schedule_task(task("taken"))
    with pytest.raises(TasksRefusedError) as refused:
        await app.bus.schedule_tasks([task("taken", mode="v2"), task("fresh")])
    assert isinstance(refused.value.result.refused["taken"], TaskExistsError)
    assert refused.value.result.scheduled == ["fresh"]
    replaced = await app.bus.schedule_tasks([task("taken", mode="v2")], replace=True)
    assert replaced.scheduled == ["taken"]
    info = await app.bus.get_task("taken")
    assert info.descriptor is not None and info.descriptor.data == {"mode": "v2"}


async def test_cancel_tasks_removes_each_task_and_reports_unknown_ids(
    app: BackgroundTaskScheduler,
) -> None:
    """Per id: the runs under way (0 here), or None when there was no such task; one
    CANCELLED event per task removed."""
    events: list[TaskEvent] = []
    app.subscribe(events.append)
    await app.bus.schedule_tasks([task(f"t{i}") for i in range(5)])
    removed = await app.bus.cancel_tasks(["t0", "t3", "ghost", "t4"], batch_size=2)
    assert removed == {"t0": 0, "t3": 0, "ghost": None, "t4": 0}
    assert await ids(app) == ["t1", "t2"]
    cancelled = [e.task_id for e in events if e.kind is EventKind.CANCELLED]
    assert cancelled == ["t0", "t3", "t4"]


async def test_a_batch_size_below_one_is_refused(app: BackgroundTaskScheduler) -> None:
    """A clear error rather than an endless loop."""
    with pytest.raises(ConfigurationError, match="batch_size=0"):
        await app.bus.schedule_tasks([task("t")], batch_size=0)
