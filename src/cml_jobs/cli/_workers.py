"""``cml-jobs workers``: the workers alive now, as they registered themselves."""

from __future__ import annotations

import click

from cml_jobs._views import ago, worker_json
from cml_jobs.cli._common import (
    Target,
    connection_options,
    json_option,
    open_scheduler,
    print_json,
    run,
    table,
)

__all__ = ["workers"]


@click.command()
@json_option
@connection_options
def workers(target: Target, as_json: bool) -> None:
    """List the live workers: host, pid, version, runs going on, last heartbeat."""
    run(_workers(target, as_json))


async def _workers(target: Target, as_json: bool) -> int:
    async with open_scheduler(target) as scheduler:
        found = await scheduler.bus.list_workers()
        now = scheduler.clock.now()
    if as_json:
        print_json([worker_json(worker) for worker in found])
        return 0
    rows = [
        [
            worker.id,
            worker.version,
            f"{worker.running}/{worker.max_jobs}",
            ago(worker.started_at, now),
            ago(worker.heartbeat_at, now),
        ]
        for worker in found
    ]
    click.echo(table(["ID", "VERSION", "RUNNING", "STARTED", "HEARTBEAT"], rows))
    click.echo(f"{len(found)} worker(s) alive", err=True)
    return 0
