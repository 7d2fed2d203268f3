"""cml-jobs in a Starlette or FastAPI app: the scheduler starts and stops with the app.

    app = FastAPI(lifespan=lifespan)    or    app = Starlette(lifespan=lifespan)

`python examples/lifespan.py` runs the lifespan as a server would, without one.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from cml_jobs import (
    BackgroundTaskScheduler,
    RecurrentBackgroundJob,
    RecurrentTaskDescriptor,
    backgroundjob,
)


@backgroundjob(task_type="recurrent")
class PurgeSessionsJob(RecurrentBackgroundJob):
    async def run_every(self, *args: Any, **kwargs: Any) -> None: ...


scheduler = BackgroundTaskScheduler.configure(
    modules=[__name__],
    # memory:// runs the worker inside the app; with redis://, run workers beside it
    redis_url=os.environ.get("CML_JOBS_REDIS_URL", "memory://"),
)


@asynccontextmanager
async def lifespan(app: object) -> AsyncIterator[dict[str, BackgroundTaskScheduler]]:
    async with scheduler:  # connect, scan, recover ... drain running jobs on the way out
        await scheduler.bus.schedule_task(
            RecurrentTaskDescriptor(id="purge-sessions", name="PurgeSessionsJob", interval=3600),
            replace=True,  # the same task on every start, not a new one
        )
        yield {"scheduler": scheduler}  # request.state.scheduler in your handlers


async def list_tasks() -> list[dict[str, str]]:  # @app.get("/tasks")
    return [
        {"id": t.id, "next_run_time": str(t.next_run_time)} for t in await scheduler.list_tasks()
    ]


async def serve_once() -> None:  # what the server does: start, handle a request, stop
    async with lifespan(app=None):
        print(await list_tasks())


if __name__ == "__main__":
    asyncio.run(serve_once())
