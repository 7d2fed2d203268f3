"""Commands that change a task: pause, resume, cancel (and, with the bus's operator
calls, trigger, unpark and backfill). Each exits 1 when the task is not found."""

from __future__ import annotations

import click

from cml_jobs.cli._common import Target, connection_options, json_option, print_json, run

__all__ = ["cancel", "pause", "resume"]


async def _act(target: Target, action: str, task_id: str, as_json: bool, **options: object) -> int:
    from cml_jobs.cli._common import open_scheduler

    async with open_scheduler(target) as scheduler:
        bus = scheduler.bus
        result: object = None
        if action == "pause":
            await bus.pause_task(task_id)
        elif action == "resume":
            await bus.resume_task(task_id)
        elif action == "cancel":
            result = await bus.cancel_task(task_id)
    if as_json:
        print_json({"id": task_id, "action": action, "result": result})
    elif action == "cancel":
        click.echo(f"{task_id}: cancelled ({result} run(s) were under way and are stopped)")
    else:
        click.echo(f"{task_id}: {action}d")
    return 0


@click.command()
@click.argument("task_id")
@click.option("--note", default=None, help="why, for whoever looks next")
@json_option
@connection_options
def pause(target: Target, task_id: str, note: str | None, as_json: bool) -> None:
    """Pause a task: its occurrences are not run until it is resumed."""
    run(_act(target, "pause", task_id, as_json, note=note))


@click.command()
@click.argument("task_id")
@json_option
@connection_options
def resume(target: Target, task_id: str, as_json: bool) -> None:
    """Resume a paused task from its next occurrence after now."""
    run(_act(target, "resume", task_id, as_json))


@click.command()
@click.argument("task_id")
@json_option
@connection_options
def cancel(target: Target, task_id: str, as_json: bool) -> None:
    """Remove a task; once this returns, no run of it starts."""
    run(_act(target, "cancel", task_id, as_json))
