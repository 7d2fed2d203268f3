"""The cml-jobs dashboard inside a FastAPI app, behind the app's own auth.

Run it: CML_JOBS_REDIS_URL=redis://localhost:6379/0 uvicorn examples.operations.dashboard_app:app
then open http://127.0.0.1:8000/jobs/ (header ``X-Role: ops`` to act; anyone may look).
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from cml_jobs import BackgroundTaskScheduler, RecurrentBackgroundJob, backgroundjob
from cml_jobs.web import dashboard


@backgroundjob(task_type="recurrent")
class SyncInvoicesJob(RecurrentBackgroundJob):
    def __init__(self, account_id: str) -> None:
        self.account_id = account_id

    async def run_every(self, *args: object, **kwargs: object) -> None:
        """Fetch this account's new invoices."""


scheduler = BackgroundTaskScheduler.configure(
    modules=[__name__],
    redis_url=os.environ.get("CML_JOBS_REDIS_URL", "memory://"),
)


def authorize(request: Request, action: str) -> bool:
    """Anyone signed in may look; only the ops role may pause, trigger, cancel..."""
    if action == "view":
        return True
    return request.headers.get("x-role") == "ops"  # use your session or token check here


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with scheduler:
        yield


app = FastAPI(lifespan=lifespan)
app.mount("/jobs", dashboard(scheduler, authorize=authorize))
app.mount("/jobs-readonly", dashboard(scheduler, read_only=True))
