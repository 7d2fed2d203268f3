"""The ``cml-jobs`` command (also ``python -m cml_jobs``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from cml_jobs._bus import BackgroundTasksBus
from cml_jobs._config import Settings
from cml_jobs._descriptors import (
    CronTaskDescriptor,
    RecurrentTaskDescriptor,
    ScheduledTaskDescriptor,
)
from cml_jobs._events import EventKind, TaskEvent
from cml_jobs._migrate._cli import add_migrate_parser, run_from_args
from cml_jobs._scheduler import BackgroundTaskScheduler
from cml_jobs._timing import Clock, SystemClock

__all__ = ["main"]

_SHOWN = {EventKind.SCHEDULED, EventKind.SUCCEEDED, EventKind.FAILED, EventKind.MISSED}


async def demo(redis_url: str, seconds: float) -> int:
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
            print(f"{at:6.2f}s  {event.task_id:<10} {event.kind.value}{late}", flush=True)

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
    print(f"\nsummary after {seconds:.0f} s:")
    ok = True
    for task_id in ("heartbeat", "cleanup", "report"):
        runs = counts[(task_id, "succeeded")]
        failed = counts[(task_id, "failed")]
        print(f"  {task_id:<10} {runs} run(s) succeeded, {failed} failed")
        ok = ok and runs > 0 and failed == 0
    return 0 if ok else 1


async def check(args: argparse.Namespace) -> int:
    """Print the health report; 0 when healthy, 1 when not."""
    from cml_jobs.exceptions import ConfigurationError

    try:
        report = await _check_health(args)
    except ConfigurationError as exc:  # a URL that cml-jobs refuses (the message is safe)
        print(f"redis: URL REFUSED ({exc})\nUNHEALTHY", flush=True)
        return 1
    print("\n".join(report.lines()), flush=True)
    return 0 if report.healthy else 1


async def _check_health(args: argparse.Namespace) -> Any:
    from cml_jobs.worker._health import check_health

    return await check_health(
        args.redis_url,
        prefix=args.key_prefix,
        queue=args.queue,
        now=SystemClock().now(),
        default_grace=timedelta(seconds=args.grace),
        require_worker=not args.no_worker,
        liveness=args.liveness,
    )


def _add_check(commands: Any) -> None:
    defaults = Settings()
    env = os.environ.get
    run_check = commands.add_parser(
        "check",
        help="exit 0 when Redis answers, its data is readable, a worker is alive and no "
        "task is parked or overdue",
        description="Health check, fit for a liveness probe: exits 1 when unhealthy, and "
        "names the unreadable keys, parked tasks and overdue tasks. Defaults come from "
        "CML_JOBS_REDIS_URL, CML_JOBS_KEY_PREFIX and CML_JOBS_QUEUE.",
    )
    run_check.add_argument(
        "--redis-url", default=env("CML_JOBS_REDIS_URL") or "redis://localhost:6379/0"
    )
    run_check.add_argument(
        "--key-prefix", default=env("CML_JOBS_KEY_PREFIX") or defaults.key_prefix
    )
    run_check.add_argument("--queue", default=env("CML_JOBS_QUEUE") or defaults.queue_name)
    run_check.add_argument(
        "--grace",
        type=float,
        default=60.0,
        help="seconds a task without misfire_grace_time may be late (default 60)",
    )
    run_check.add_argument("--no-worker", action="store_true", help="do not require a live worker")
    run_check.add_argument(
        "--liveness",
        action="store_true",
        help="fail only on what restarting a worker can fix: parked tasks and unreadable "
        "keys are reported, not failed on (for a liveness probe)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cml-jobs`` command."""
    from cml_jobs import __version__

    parser = argparse.ArgumentParser(
        prog="cml-jobs",
        description="cml-jobs: typed background jobs for asyncio apps. This command runs "
        "the demo, the health check and migrations (also as: python -m cml_jobs); "
        "workers run as: arq cml_jobs.WorkerSettings.",
    )
    parser.add_argument("--version", action="version", version=f"cml-jobs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run_demo = commands.add_parser("demo", help="run three demo tasks for a few seconds")
    run_demo.add_argument(
        "--redis-url", default="memory://", help="memory:// (default, no server) or redis://..."
    )
    run_demo.add_argument("--seconds", type=float, default=10.0, help="how long to run")
    _add_check(commands)
    add_migrate_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "check":
        return asyncio.run(check(args))
    if args.command == "migrate":
        return run_from_args(args)
    return asyncio.run(demo(args.redis_url, args.seconds))


if __name__ == "__main__":
    sys.exit(main())
