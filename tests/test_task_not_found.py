"""Asking the bus about a task id that does not exist raises ``TaskNotFoundError``
(docs/guides/scheduling.md), which is also a ``LookupError`` (docs/exceptions.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from cml_jobs import (
    BackgroundTasksBus,
    BackgroundTaskScheduler,
    CmlJobsError,
    RecurrentTaskDescriptor,
    TaskNotFoundError,
)
from cml_jobs.stores import ScheduleStore
from cml_jobs.testing import ManualClock

OPERATIONS: dict[str, Callable[[BackgroundTasksBus, str], Awaitable[Any]]] = {
    "get_task": lambda bus, task_id: bus.get_task(task_id),
    "pause_task": lambda bus, task_id: bus.pause_task(task_id),
    "resume_task": lambda bus, task_id: bus.resume_task(task_id),
    "cancel_task": lambda bus, task_id: bus.cancel_task(task_id),
}


@pytest.fixture
async def bus(store: ScheduleStore) -> AsyncIterator[BackgroundTasksBus]:
    """The bus of a scheduler over each store, holding one task, "known"."""
    scheduler = BackgroundTaskScheduler.configure(
        modules=["tests.fixtures.behaviour_jobs"],
        store=store,
        clock=ManualClock(),
        run_worker=False,
    )
    async with scheduler:
        await scheduler.bus.schedule_task(
            RecurrentTaskDescriptor(id="known", name="ScriptedJob", interval=60)
        )
        yield scheduler.bus


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
async def test_an_unknown_task_id_raises_task_not_found_naming_it(
    bus: BackgroundTasksBus, operation: str
) -> None:
    """get, pause, resume and cancel of an id nobody scheduled raise TaskNotFoundError
    with the id in the message; the task that exists is untouched."""
    known = await bus.list_tasks()
    with pytest.raises(TaskNotFoundError, match="'no-such-task'") as raised:
        await OPERATIONS[operation](bus, "no-such-task")
    assert "list_tasks()" in str(raised.value)  # says where to look
    assert await bus.list_tasks() == known


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
async def test_task_not_found_can_be_caught_as_lookup_error_or_cml_jobs_error(
    bus: BackgroundTasksBus, operation: str
) -> None:
    """Code that catches LookupError (or the package's root error) catches it."""
    with pytest.raises(LookupError):
        await OPERATIONS[operation](bus, "no-such-task")
    with pytest.raises(CmlJobsError):
        await OPERATIONS[operation](bus, "no-such-task")


@pytest.mark.parametrize("operation", ["get_task", "pause_task", "resume_task"])
async def test_a_cancelled_task_is_not_found_any_more(
    bus: BackgroundTasksBus, operation: str
) -> None:
    """After cancel_task, the id is unknown to every other operation too."""
    await bus.cancel_task("known")
    with pytest.raises(TaskNotFoundError, match="'known'"):
        await OPERATIONS[operation](bus, "known")
