"""A task's data is checked against its job constructor's annotations when it is scheduled,
and descriptors are typed for users' own type checkers (no pydantic plugin)."""

from __future__ import annotations

import re
import typing
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

import pytest

from cml_jobs import (
    BackgroundTaskScheduler,
    CronTaskDescriptor,
    InvalidTaskDataError,
    RecurrentBackgroundJob,
    RecurrentTaskDescriptor,
    ScheduledTaskDescriptor,
    backgroundjob,
)
from cml_jobs._descriptor_types import CronArgs, RecurrentArgs, ScheduledArgs
from cml_jobs.testing import ManualClock

if TYPE_CHECKING:
    from decimal import Decimal  # not importable when the annotation is evaluated


@backgroundjob(task_type="recurrent")
class EchoJob(RecurrentBackgroundJob):
    def __init__(
        self,
        text: str,
        count: int = 1,
        ratio: float = 1.0,
        tags: list[str] | None = None,
        mode: Literal["fast", "slow"] = "fast",
    ) -> None:
        self.text = text

    async def run_every(self, *args: Any, **kwargs: Any) -> None:
        pass


@backgroundjob(task_type="recurrent")
class LooselyTypedJob(RecurrentBackgroundJob):
    def __init__(self, amount: Decimal, note: object = None, **extra: Any) -> None:
        self.amount = amount

    async def run_every(self, *args: Any, **kwargs: Any) -> None:
        pass


@pytest.fixture
async def scheduler() -> AsyncIterator[BackgroundTaskScheduler]:
    """A scheduler in memory that knows this module's jobs and runs nothing by itself."""
    scheduler = BackgroundTaskScheduler.configure(
        modules=[__name__], clock=ManualClock(), run_worker=False
    )
    async with scheduler:
        yield scheduler


def echo(**data: Any) -> RecurrentTaskDescriptor:
    """An interval task of EchoJob with ``data``."""
    return RecurrentTaskDescriptor(id="echo", name="EchoJob", data=data, interval=60)


async def test_a_value_of_the_wrong_type_is_refused_naming_the_field(
    scheduler: BackgroundTaskScheduler,
) -> None:
    """data={"text": 123} for `text: str` raises InvalidTaskDataError naming text; nothing
    is stored."""
    with pytest.raises(InvalidTaskDataError) as caught:
        await scheduler.bus.schedule_task(echo(text=123))
    message = str(caught.value)
    assert "text: Input should be a valid string (got 123)" in message
    assert "EchoJob(text, count, ratio, tags, mode)" in message
    assert await scheduler.list_tasks() == []


@pytest.mark.parametrize(
    ("data", "field"),
    [
        pytest.param({"text": "a", "count": "5"}, "count", id="digits-are-not-an-int"),
        pytest.param({"text": "a", "count": True}, "count", id="a-bool-is-not-an-int"),
        pytest.param({"text": "a", "tags": ["x", 1]}, "tags.1", id="list-item"),
        pytest.param({"text": "a", "mode": "medium"}, "mode", id="not-a-literal"),
        pytest.param({"text": None}, "text", id="none-for-a-str"),
    ],
)
async def test_values_are_checked_strictly_since_the_job_gets_them_unconverted(
    scheduler: BackgroundTaskScheduler, data: dict[str, Any], field: str
) -> None:
    """The job receives data as stored, so "5" is not accepted for an int; every bad value
    is named by its place in the data."""
    with pytest.raises(InvalidTaskDataError, match=rf"{re.escape(field)}: "):
        await scheduler.bus.schedule_task(echo(**data))


async def test_values_of_the_annotated_types_are_accepted(
    scheduler: BackgroundTaskScheduler,
) -> None:
    """Ints for floats, None for optional lists, literal values: the task is scheduled."""
    await scheduler.bus.schedule_task(
        echo(text="a", count=2, ratio=3, tags=None, mode="slow"), replace=True
    )
    await scheduler.bus.schedule_task(echo(text="a", tags=["x", "y"]), replace=True)
    assert [task.id for task in await scheduler.list_tasks()] == ["echo"]


async def test_annotations_that_cannot_be_evaluated_leave_names_checked_only(
    scheduler: BackgroundTaskScheduler,
) -> None:
    """A constructor whose annotations cannot be evaluated here still schedules, and its
    argument names are still checked."""
    task = RecurrentTaskDescriptor(
        id="loose", name="LooselyTypedJob", data={"amount": "1.5", "more": 1}, interval=60
    )
    await scheduler.bus.schedule_task(task)
    with pytest.raises(InvalidTaskDataError, match="amount"):
        await scheduler.bus.schedule_task(
            RecurrentTaskDescriptor(id="loose2", name="LooselyTypedJob", data={}, interval=60)
        )


@pytest.mark.parametrize(
    ("model", "arguments"),
    [
        (RecurrentTaskDescriptor, RecurrentArgs),
        (ScheduledTaskDescriptor, ScheduledArgs),
        (CronTaskDescriptor, CronArgs),
    ],
)
def test_the_typed_constructor_of_each_descriptor_lists_exactly_its_fields(
    model: type[Any], arguments: type[Any]
) -> None:
    """Type checkers see the same arguments pydantic takes, required where pydantic
    requires them (the typed __init__ is written by hand beside the model)."""
    fields = {name: info for name, info in model.model_fields.items() if name != "kind"}
    assert set(typing.get_type_hints(arguments)) == set(fields)
    required = {name for name, info in fields.items() if info.is_required()}
    assert arguments.__required_keys__ == required


def test_durations_given_as_seconds_read_back_as_timedelta() -> None:
    """interval=300 and jitter=1.5 (what users' mypy now accepts) are timedelta once read."""
    task = RecurrentTaskDescriptor(id="t", name="EchoJob", interval=300, jitter=1.5)
    assert (task.interval, task.jitter) == (timedelta(seconds=300), timedelta(seconds=1.5))
