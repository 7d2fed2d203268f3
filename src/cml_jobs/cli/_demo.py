"""``cml-jobs demo``: three tasks of three kinds, run for a few seconds in this process."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta

import click

from cml_jobs._bus import BackgroundTasksBus
from cml_jobs._descriptors import (
    CronTaskDescriptor,
    RecurrentTaskDescriptor,
    ScheduledTaskDescriptor,
)
from cml_jobs._events import EventKind, TaskEvent
from cml_jobs._scheduler import BackgroundTaskScheduler
from cml_jobs._timing import Clock

__all__ = ["demo"]


@click.command(short_help="Run three demo tasks for a few seconds")
@click.option(
    "--redis-url",
    default="memory://",
    show_default=True,
    help="memory:// (no server) or redis://...",
)
@click.option("--seconds", type=float, default=10.0, show_default=True, help="how long to run")
def demo(redis_url: str, seconds: float) -> None:
    """Schedule a recurrent, a cron and a one-time task and print their runs."""
    raise SystemExit(asyncio.run(run_demo(redis_url, seconds)))


_SHOWN = {EventKind.SCHEDULED, EventKind.SUCCEEDED, EventKind.FAILED, EventKind.MISSED}


async def run_demo(redis_url: str, seconds: float) -> int:
    """Schedule a recurrent, a cron and a one-time task; print their runs for a while."""
    prefix = f"cml-demo:{uuid.uuid4().hex[:8]}:"
    scheduler = BackgroundTaskScheduler.configure(
        modules=["cml_jobs._demo"], redis_url=redis_url, run_worker=True, key_prefix=prefix
    )
    counts: Counter[tuple[str, str]] = Counter()
    async with scheduler:
        start = scheduler.clock.now()
        scheduler.subscribe(_printer(scheduler.clock, start, counts))
        await _schedule_demo_tasks(scheduler.bus, start)
        await asyncio.sleep(seconds)
        for task in await scheduler.list_tasks():
            await scheduler.bus.cancel_task(task.id)
    return _summary(counts, seconds)


def _printer(
    clock: Clock, start: datetime, counts: Counter[tuple[str, str]]
) -> Callable[[TaskEvent], None]:
    """An event subscriber that counts every event and prints the ones worth showing."""

    def show(event: TaskEvent) -> None:
        counts[(event.task_id, event.kind.value)] += 1
        if event.kind in _SHOWN:
            at = (clock.now() - start).total_seconds()
            late = ""
            if event.kind is EventKind.SUCCEEDED and event.occurrence_at:
                late = f" (occurrence {event.occurrence_at:%H:%M:%S.%f}"[:-3] + ")"
            click.echo(f"{at:6.2f}s  {event.task_id:<10} {event.kind.value}{late}")

    return show


async def _schedule_demo_tasks(bus: BackgroundTasksBus, start: datetime) -> None:
    await bus.schedule_task(
        RecurrentTaskDescriptor(
            id="heartbeat", name="HeartbeatJob", data={"service": "api"}, interval=2
        )
    )
    await bus.schedule_task(
        CronTaskDescriptor(
            id="cleanup", name="CleanupJob", data={"folder": "/tmp"}, cron="*/3 * * * * *"
        )
    )
    await bus.schedule_task(
        ScheduledTaskDescriptor(
            id="report",
            name="ReportJob",
            data={"recipient": "ops@example.com"},
            scheduled_at=start + timedelta(seconds=4),
        )
    )


def _summary(counts: Counter[tuple[str, str]], seconds: float) -> int:
    click.echo(f"\nsummary after {seconds:.0f} s:")
    ok = True
    for task_id in ("heartbeat", "cleanup", "report"):
        runs = counts[(task_id, "succeeded")]
        failed = counts[(task_id, "failed")]
        click.echo(f"  {task_id:<10} {runs} run(s) succeeded, {failed} failed")
        ok = ok and runs > 0 and failed == 0
    return 0 if ok else 1
