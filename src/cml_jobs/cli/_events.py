"""``cml-jobs events``: the lifecycle events workers publish, past or live."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from cml_jobs._views import event_json, event_line
from cml_jobs.cli._common import Target, connection_options, json_option, run

if TYPE_CHECKING:
    from cml_jobs.events import EventStream, StreamEntry

__all__ = ["events"]


@click.command()
@click.option("--follow", "-f", is_flag=True, help="keep printing events as they happen")
@click.option(
    "--from",
    "after",
    default=None,
    metavar="ID",
    help="start after this event id (printed with --json); default: the oldest kept, "
    "or now with --follow",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="stop after N events (without --follow: the newest N; default 50)",
)
@click.option("--task", "task_id", default=None, help="only this task's events")
@json_option
@connection_options
def events(
    target: Target,
    follow: bool,
    after: str | None,
    limit: int | None,
    task_id: str | None,
    as_json: bool,
) -> None:
    """Print lifecycle events (one JSON object a line with --json; keep its "id" to
    resume with --from after a restart)."""
    run(_events(target, follow, after, limit, task_id, as_json))


async def _events(
    target: Target,
    follow: bool,
    after: str | None,
    limit: int | None,
    task_id: str | None,
    as_json: bool,
) -> int:
    from cml_jobs.events import EventStream
    from cml_jobs.stores.redis import open_redis_store

    def show(entry: StreamEntry) -> None:
        if as_json:
            click.echo(json.dumps(event_json(entry.event, entry.id)))
        else:
            click.echo(f"{entry.id:<20} {event_line(entry.event)}")

    # The store's connection: it checks that Redis answers, and says so if it does not.
    async with open_redis_store(target.redis_url, prefix=target.key_prefix) as store:
        stream = EventStream(store.client, prefix=target.key_prefix)
        if not follow:
            for entry in await _past(stream, after or "0-0", task_id, limit or 50):
                show(entry)
            return 0
        printed = 0
        async for entry in stream.follow(after=after):
            if task_id is None or entry.event.task_id == task_id:
                show(entry)
                printed += 1
                if limit is not None and printed >= limit:
                    break
    return 0


async def _past(
    stream: EventStream, after: str, task_id: str | None, limit: int
) -> list[StreamEntry]:
    """The newest ``limit`` events after ``after`` that are kept in the stream."""
    kept: list[StreamEntry] = []
    position = after
    while batch := await stream.read(position):
        position = batch[-1].id
        kept += [entry for entry in batch if task_id is None or entry.event.task_id == task_id]
        kept = kept[-limit:]
    return kept
