"""``cml-jobs check``: the health probe (exit 0 healthy, 1 not)."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import click

from cml_jobs._timing import SystemClock
from cml_jobs._views import iso, worker_json
from cml_jobs.cli._common import Target, connection_options, json_option, print_json, run

if TYPE_CHECKING:
    from cml_jobs.worker._health import HealthReport

__all__ = ["check"]


@click.command(
    help="Health check, fit for a liveness probe: exits 1 when unhealthy. "
    "Defaults come from CML_JOBS_REDIS_URL, CML_JOBS_STORE_URL, CML_JOBS_KEY_PREFIX and "
    "CML_JOBS_QUEUE.",
    short_help="Exit 0 when Redis answers, its data reads, a worker is alive, no task is "
    "overdue or parked",
)
@click.option(
    "--grace",
    type=float,
    default=60.0,
    help="seconds a task without misfire_grace_time may be late (default 60)",
)
@click.option("--no-worker", is_flag=True, help="do not require a live worker")
@click.option(
    "--min-workers",
    type=int,
    default=0,
    help="fail with fewer workers registered (alive) than this (default 0)",
)
@click.option(
    "--liveness",
    is_flag=True,
    help="fail only on what restarting a worker can fix: parked tasks and unreadable keys "
    "are shown, not failed on (for a liveness probe)",
)
@click.option(
    "--store-url",
    envvar="CML_JOBS_STORE_URL",
    default=None,
    help="the PostgreSQL store the tasks are read from (default: the Redis one)",
)
@json_option
@connection_options
def check(
    target: Target,
    grace: float,
    no_worker: bool,
    min_workers: int,
    liveness: bool,
    store_url: str | None,
    as_json: bool,
) -> None:
    run(_check(target, grace, no_worker, min_workers, as_json, store_url or None, liveness))


async def _check(
    target: Target,
    grace: float,
    no_worker: bool,
    min_workers: int,
    as_json: bool,
    store_url: str | None = None,
    liveness: bool = False,
) -> int:
    from cml_jobs.worker._health import check_health

    report = await check_health(
        target.redis_url,
        prefix=target.key_prefix,
        queue=target.queue,
        now=SystemClock().now(),
        default_grace=timedelta(seconds=grace),
        require_worker=not no_worker,
        min_workers=min_workers,
        store_url=store_url,
        liveness=liveness,
    )
    if as_json:
        print_json(_report_json(report))
    else:
        click.echo("\n".join(report.lines()))
    return 0 if report.healthy else 1


def _report_json(report: HealthReport) -> dict[str, Any]:
    return {
        "healthy": report.healthy,
        "redis_error": report.redis_error,
        "redis_refused": report.redis_refused,
        "data_error": report.data_error,
        "unreadable": report.unreadable,
        "worker": report.worker,
        "overdue": [
            {
                "task_id": late.task_id,
                "due_at": iso(late.due_at),
                "late_by": late.late_by.total_seconds(),
                "grace": late.grace.total_seconds(),
            }
            for late in report.overdue
        ],
        "workers": [worker_json(worker) for worker in report.fleet.workers],
        "min_workers": report.fleet.min_workers,
        "parked": [{"task_id": task, "reason": why} for task, why in report.fleet.parked],
    }
