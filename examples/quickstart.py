"""cml-jobs with a real Redis: schedule from the app, run in `arq cml_jobs.WorkerSettings`."""

import asyncio
import sys
from typing import Any

from dependency_injector import containers, providers

from cml_jobs import (
    BackgroundTaskScheduler,
    RecurrentBackgroundJob,
    RecurrentTaskDescriptor,
    ServiceProvider,
    backgroundjob,
)


class WorkerRepository:  # your app's own service; the container builds it
    async def get_by_id_async(self, worker_id: str) -> dict[str, str]:
        return {"id": worker_id, "status": "running"}


class Container(containers.DeclarativeContainer):
    repository = providers.Singleton(WorkerRepository)


@backgroundjob(task_type="recurrent")
class WorkerMetricsCollectionJob(RecurrentBackgroundJob):
    def __init__(self, worker_id: str) -> None:  # only IDs and configuration are stored
        self.worker_id = worker_id

    def configure(self, service_provider: ServiceProvider | None = None, **kwargs: Any) -> None:
        assert service_provider is not None  # runs before every run_every
        self.repository = service_provider.get_required_service(WorkerRepository)

    async def run_every(self, *args: Any, **kwargs: Any) -> None:
        worker = await self.repository.get_by_id_async(self.worker_id)
        print(f"{self.context.occurrence_at:%H:%M:%S} {worker['id']} is {worker['status']}")


async def main(redis_url: str) -> None:
    scheduler = BackgroundTaskScheduler.configure(
        container=Container(), modules=["quickstart"], redis_url=redis_url
    )
    async with scheduler:
        await scheduler.bus.schedule_task(
            RecurrentTaskDescriptor(
                id="metrics-worker-456",
                name="WorkerMetricsCollectionJob",
                data={"worker_id": "worker-456"},
                interval=5,
            ),
            replace=True,
        )
        for task in await scheduler.list_tasks():
            print(task.id, "next run at", task.next_run_time)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "redis://localhost:6379/0"))
