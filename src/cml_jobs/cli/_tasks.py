"""``cml-jobs tasks`` and ``cml-jobs show``: what is scheduled, and one task in full."""

from __future__ import annotations

from typing import Any

import click

from cml_jobs import _views
from cml_jobs._bus import TaskInfo
from cml_jobs._views import ago, counts_text, task_json, task_state, trigger_text
from cml_jobs.cli._common import (
    Target,
    connection_options,
    json_option,
    open_scheduler,
    print_json,
    run,
    table,
)
from cml_jobs.cli._history import history_section, upcoming_section

__all__ = ["show", "tasks"]


@click.command()
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(_views.STATES),
    help="only tasks in this state (repeatable)",
)
@click.option("--job", default=None, help="only tasks of this job (its registered name)")
@click.option("--search", default=None, help="only tasks whose id or job contains this text")
@click.option("--limit", type=click.IntRange(min=0), default=None, help="show at most N tasks")
@json_option
@connection_options
def tasks(
    target: Target,
    states: tuple[str, ...],
    job: str | None,
    search: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """List tasks, ordered by next run (paused and parked ones last)."""
    run(_tasks(target, states, job, search, limit, as_json))


async def _tasks(
    target: Target,
    states: tuple[str, ...],
    job: str | None,
    search: str | None,
    limit: int | None,
    as_json: bool,
) -> int:
    async with open_scheduler(target) as scheduler:
        found = await scheduler.list_tasks()
        now = scheduler.clock.now()
    chosen = sorted(
        _views.filter_tasks(found, states=states, job=job, search=search), key=by_next_run
    )[:limit]
    if as_json:
        print_json([task_json(task) for task in chosen])
        return 0
    rows = [
        [
            task.id,
            task.name or "?",
            trigger_text(task),
            ago(task.next_run_time, now),
            _state_cell(task),
            task.last_outcome.value if task.last_outcome else "-",
            counts_text(task.counts),
        ]
        for task in chosen
    ]
    headers = ["ID", "JOB", "TRIGGER", "NEXT RUN", "STATE", "LAST OUTCOME", "COUNTS"]
    click.echo(table(headers, rows))
    click.echo(f"{len(chosen)} of {len(found)} task(s)", err=True)
    return 0


def _state_cell(task: TaskInfo) -> str:
    """The state, with the start of the operator's note when there is one."""
    if not task.note:
        return task_state(task)
    note = task.note if len(task.note) <= 30 else task.note[:29] + "…"
    return f"{task_state(task)}: {note}"


def by_next_run(task: TaskInfo) -> tuple[int, str, str]:
    """Sort key: tasks with a next run first, soonest first; then the rest by id."""
    if task.next_run_time is None:
        return (1, "", task.id)
    return (0, task.next_run_time.isoformat(), task.id)


@click.command()
@click.argument("task_id")
@click.option("--upcoming", "upcoming", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--history", "history", type=click.IntRange(min=0), default=20, show_default=True)
@json_option
@connection_options
def show(target: Target, task_id: str, upcoming: int, history: int, as_json: bool) -> None:
    """Show one task: its descriptor, next occurrences and recent runs (exit 1 if unknown)."""
    run(_show(target, task_id, upcoming, history, as_json))


async def _show(target: Target, task_id: str, upcoming: int, history: int, as_json: bool) -> int:
    async with open_scheduler(target) as scheduler:
        task = await scheduler.bus.get_task(task_id)
        coming = await upcoming_section(scheduler, task_id, upcoming)
        runs = await history_section(scheduler, task_id, history)
    if as_json:
        print_json({**task_json(task), "upcoming": coming, "history": runs})
        return 0
    click.echo(_describe(task))
    click.echo("\nupcoming:")
    click.echo("\n".join(f"  {at}" for at in coming) or "  none")
    click.echo("\nhistory (newest first):")
    if runs is None:
        click.echo("  not kept by this store")
    else:
        click.echo(_history_table(runs) if runs else "  none recorded")
    return 0


def _describe(task: TaskInfo) -> str:
    info = task_json(task)
    lines = [
        f"task      {task.id}",
        f"job       {task.name or '? (unreadable descriptor)'}",
        f"state     {info['state']}",
        f"trigger   {info['trigger']}",
        f"next run  {info['next_run_time'] or '-'}",
        f"last run  {info['last_run_time'] or '-'} ({info['last_outcome'] or 'never'})",
        f"counts    {counts_text(task.counts)}",
    ]
    if task.parked_reason:
        lines.append(f"parked    {task.parked_reason}")
    if task.note:
        lines.append(f"note      {task.note}")
    if task.ended_at:
        lines.append(f"ended     {info['ended_at']}")
    if task.last_error:
        lines.append(f"error     {task.last_error}")
    if task.descriptor is not None:
        import json

        dumped = json.dumps(info["descriptor"], indent=2, default=str)
        lines += ["descriptor", *(f"  {line}" for line in dumped.splitlines())]
    return "\n".join(lines)


def _history_table(runs: list[dict[str, Any]]) -> str:
    headers = ["OCCURRENCE", "OUTCOME", "LATE", "DURATION", "ERROR"]
    rows = [
        [
            str(run.get("occurrence_at") or "-"),
            str(run.get("outcome") or "-"),
            _seconds(run.get("lateness")),
            _seconds(run.get("duration")),
            str(run.get("error") or ""),
        ]
        for run in runs
    ]
    return "\n".join(f"  {line}" for line in table(headers, rows).splitlines())


def _seconds(value: object) -> str:
    return f"{value:.3f}s" if isinstance(value, (int, float)) else "-"
