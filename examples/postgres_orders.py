"""Scheduling in your own PostgreSQL transaction: an order and its receipt commit together.

The app and cml-jobs share one PostgreSQL database (store_url); the task is written on
the app's connection, inside its transaction. Committed: the order is stored and its
receipt goes out (workers are woken by the commit). Rolled back: neither exists.
"""

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any

import asyncpg

from cml_jobs import (
    BackgroundTaskScheduler,
    ScheduledBackgroundJob,
    ScheduledTaskDescriptor,
    backgroundjob,
)


@backgroundjob(task_type="scheduled")
class SendReceiptJob(ScheduledBackgroundJob):
    def __init__(self, order_id: str):
        self.order_id = order_id

    async def run_at(self, *args: Any, **kwargs: Any) -> None:
        print(f"receipt for order {self.order_id} sent")


async def place_order(
    pool: asyncpg.Pool,
    scheduler: BackgroundTaskScheduler,
    order_id: str,
    charge: Callable[[], Awaitable[None]],
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO orders (id) VALUES ($1)", order_id)
        receipt = ScheduledTaskDescriptor(
            id=f"receipt-{order_id}",
            name="SendReceiptJob",
            data={"order_id": order_id},
            scheduled_at=datetime.now(timezone.utc),
        )
        await scheduler.bus.schedule_task(receipt, connection=conn)
        await charge()  # raises: the order *and* its receipt are rolled back


# --8<-- [start:scheduler]
def make_scheduler(database_url: str) -> BackgroundTaskScheduler:
    return BackgroundTaskScheduler.configure(
        modules=["postgres_orders"],
        store_url=database_url,  # tasks live in the app's database (schema cml_jobs)
        run_worker=True,  # or workers: CML_JOBS_STORE_URL=... arq cml_jobs.WorkerSettings
    )


# --8<-- [end:scheduler]


@asynccontextmanager
async def lifespan(app: Any, database_url: str) -> AsyncIterator[dict[str, Any]]:
    pool = await asyncpg.create_pool(database_url)
    await pool.execute("CREATE TABLE IF NOT EXISTS orders (id text PRIMARY KEY)")
    async with make_scheduler(database_url) as scheduler:
        yield {"pool": pool, "scheduler": scheduler}
    await pool.close()


# app = FastAPI(lifespan=functools.partial(lifespan, database_url="postgresql://..."))
#
# @app.post("/orders/{order_id}")
# async def order(order_id: str, request: Request):
#     await place_order(request.state.pool, request.state.scheduler, order_id, charge_card)
