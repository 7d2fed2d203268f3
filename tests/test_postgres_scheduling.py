"""Scheduling in the app's own PostgreSQL transaction, through the front door: the
``examples/postgres_orders.py`` app schedules, and a second scheduler with its worker
inside (``run_worker``) runs the tasks, as a worker process would.

The worker's poll interval is a minute, so a task that runs within seconds of its commit
was woken by the commit (LISTEN/NOTIFY), not found by a poll.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from cml_jobs import (
    BackgroundTaskScheduler,
    ConfigurationError,
    EventKind,
    Outcome,
    ScheduledTaskDescriptor,
    TaskEvent,
    TaskNotFoundError,
)

pytestmark = pytest.mark.postgres

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class CardDeclined(Exception):
    pass


async def charge_ok() -> None:
    return None


async def charge_declined() -> None:
    raise CardDeclined("card declined")


@pytest.fixture
def orders(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The example module, imported from examples/."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import postgres_orders

    return postgres_orders


@pytest.fixture
async def app_pool(postgres_url: str) -> AsyncIterator[asyncpg.Pool]:
    """The app's own pool, working in the test's schema (where its orders table is)."""
    dsn, schema = postgres_url.split("?schema=")
    pool = await asyncpg.create_pool(dsn, min_size=1, server_settings={"search_path": schema})
    assert pool is not None
    await pool.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    await pool.execute("CREATE TABLE orders (id text PRIMARY KEY)")
    yield pool
    await pool.close()


async def test_a_rolled_back_task_is_never_stored_nor_run_and_a_committed_one_runs_once(
    orders: Any, app_pool: asyncpg.Pool, postgres_url: str
) -> None:
    """The order whose charge fails leaves no order and no task, and no receipt is sent;
    the next order's receipt is sent once, seconds after its commit woke the worker."""
    scheduler: BackgroundTaskScheduler = orders.make_scheduler(postgres_url)
    scheduler.run_worker = False  # the app only schedules; `worker` runs
    settings = scheduler.settings.with_changes(poll_interval=timedelta(minutes=1))
    worker = BackgroundTaskScheduler(settings, run_worker=True)
    finished: list[TaskEvent] = []
    done = asyncio.Event()

    def seen(event: TaskEvent) -> None:
        if event.kind in (EventKind.SUCCEEDED, EventKind.FAILED, EventKind.STARTED):
            finished.append(event)
        if event.kind is EventKind.SUCCEEDED and event.task_id == "receipt-o-2":
            done.set()

    async with worker, scheduler:
        worker.subscribe(seen)
        with pytest.raises(CardDeclined):
            await orders.place_order(app_pool, scheduler, "o-1", charge_declined)
        with pytest.raises(TaskNotFoundError):
            await scheduler.bus.get_task("receipt-o-1")
        await orders.place_order(app_pool, scheduler, "o-2", charge_ok)
        await asyncio.wait_for(done.wait(), 20)  # a poll would take a minute
        # A one-time task ends with its run, and stays listed, ended, with its outcome.
        [task] = await scheduler.list_tasks()
        assert (task.id, task.last_outcome) == ("receipt-o-2", Outcome.SUCCEEDED)
        assert task.ended_at is not None
    assert [row["id"] for row in await app_pool.fetch("SELECT id FROM orders")] == ["o-2"]
    assert [(e.kind, e.task_id) for e in finished] == [
        (EventKind.STARTED, "receipt-o-2"),
        (EventKind.SUCCEEDED, "receipt-o-2"),
    ]


async def test_schedule_task_with_a_connection_needs_a_transactional_store() -> None:
    """On a store that cannot write in the app's transaction (memory, Redis), passing a
    connection is refused with what to do, and nothing is written."""
    scheduler = BackgroundTaskScheduler.configure(modules=["tests.fixtures.behaviour_jobs"])
    async with scheduler:
        descriptor = ScheduledTaskDescriptor(
            id="once", name="OneShotJob", scheduled_at=scheduler.clock.now()
        )
        with pytest.raises(ConfigurationError, match="InMemoryScheduleStore cannot"):
            await scheduler.bus.schedule_task(descriptor, connection=object())
        assert await scheduler.list_tasks() == []
