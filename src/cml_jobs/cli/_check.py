"""``cml-jobs check``: the health probe (exit 0 healthy, 1 not)."""

from __future__ import annotations

from datetime import timedelta

import click

from cml_jobs._timing import SystemClock
from cml_jobs.cli._common import Target, connection_options, run

__all__ = ["check"]


@click.command(
    help="Health check, fit for a liveness probe: exits 1 when unhealthy. "
    "Defaults come from CML_JOBS_REDIS_URL, CML_JOBS_KEY_PREFIX and CML_JOBS_QUEUE.",
    short_help="Exit 0 when Redis answers, a worker is alive, no task is overdue or parked",
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
@connection_options
def check(target: Target, grace: float, no_worker: bool, min_workers: int) -> None:
    run(_check(target, grace, no_worker, min_workers))


async def _check(target: Target, grace: float, no_worker: bool, min_workers: int) -> int:
    from cml_jobs.worker._health import check_health

    report = await check_health(
        target.redis_url,
        prefix=target.key_prefix,
        queue=target.queue,
        now=SystemClock().now(),
        default_grace=timedelta(seconds=grace),
        require_worker=not no_worker,
        min_workers=min_workers,
    )
    click.echo("\n".join(report.lines()))
    return 0 if report.healthy else 1
