"""cml-jobs in a Starlette or FastAPI app: start and stop with the app's lifespan."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from cml_jobs import BackgroundTaskScheduler

scheduler = BackgroundTaskScheduler.configure(
    modules=["myapp.jobs"],
    redis_url="redis://localhost:6379/0",  # or "memory://" with the worker in this process
)


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
    async with scheduler:  # connect, scan, recover ... drain running jobs on the way out
        yield {"scheduler": scheduler}


# app = FastAPI(lifespan=lifespan)    or    app = Starlette(lifespan=lifespan)
#
# @app.get("/tasks")
# async def tasks():
#     return [{"id": t.id, "next_run_time": t.next_run_time} for t in await scheduler.list_tasks()]
