"""Commands that change a task: pause, resume, trigger, cancel, unpark, backfill. Each
exits 1 when the task is not found (or cannot take the action, e.g. a parked one)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

import click

from cml_jobs._bus import BackgroundTasksBus
from cml_jobs._views import iso
from cml_jobs.cli._common import (
    Target,
    connection_options,
    json_option,
    open_scheduler,
    print_json,
    run,
)

__all__ = ["backfill", "cancel", "pause", "resume", "trigger", "unpark"]

Action = Callable[[BackgroundTasksBus], Awaitable[Any]]


async def _act(target: Target, name: str, task_id: str, action: Action, as_json: bool) -> int:
    async with open_scheduler(target) as scheduler:
        result = await action(scheduler.bus)
    if isinstance(result, datetime):
        result = iso(result)
    elif isinstance(result, list):
        result = [iso(at) for at in result]
    elif result is not None and not isinstance(result, int):
        result = None  # a TaskInfo: `show` prints it
    if as_json:
        print_json({"id": task_id, "action": name, "result": result})
    else:
        click.echo(f"{task_id}: {name} done" + (f" ({result})" if result is not None else ""))
    return 0


def _task_command(name: str, help: str) -> Callable[[Callable[..., Any]], click.Command]:
    """A command named ``name`` that takes a TASK_ID, ``--json`` and the connection."""

    def decorate(function: Callable[..., Any]) -> click.Command:
        wrapped = connection_options(json_option(function))
        wrapped = click.argument("task_id")(wrapped)
        return click.command(name, help=help)(wrapped)

    return decorate


@click.option("--note", default=None, help="why, shown to other operators until resumed")
@_task_command("pause", "Pause a task: its occurrences are not run until it is resumed.")
def pause(target: Target, task_id: str, note: str | None, as_json: bool) -> None:
    run(_act(target, "pause", task_id, lambda bus: bus.pause_task(task_id, note=note), as_json))


@_task_command("resume", "Resume a paused task from its next occurrence after now.")
def resume(target: Target, task_id: str, as_json: bool) -> None:
    run(_act(target, "resume", task_id, lambda bus: bus.resume_task(task_id), as_json))


@_task_command("trigger", "Run a task once more, now, outside its schedule.")
def trigger(target: Target, task_id: str, as_json: bool) -> None:
    run(_act(target, "trigger", task_id, lambda bus: bus.trigger_task(task_id), as_json))


@_task_command("cancel", "Remove a task; once this returns, no run of it starts.")
def cancel(target: Target, task_id: str, as_json: bool) -> None:
    run(_act(target, "cancel", task_id, lambda bus: bus.cancel_task(task_id), as_json))


@_task_command("unpark", "Take a parked task back into the schedule (after the fix).")
def unpark(target: Target, task_id: str, as_json: bool) -> None:
    run(_act(target, "unpark", task_id, lambda bus: bus.unpark_task(task_id), as_json))


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


@click.option("--end", type=click.DateTime(), required=True, help="window end (UTC if naive)")
@click.option("--start", type=click.DateTime(), required=True, help="window start (UTC if naive)")
@_task_command("backfill", "Run each occurrence of a task's trigger in a past window once.")
def backfill(target: Target, task_id: str, start: datetime, end: datetime, as_json: bool) -> None:
    window = (_aware(start), _aware(end))
    run(_act(target, "backfill", task_id, lambda bus: bus.backfill(task_id, *window), as_json))
