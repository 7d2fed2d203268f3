"""AWS worker monitoring in your app: one recurrent task per active lab worker.

Workers run with CML_JOBS_MODULES=cml_jobs.monitoring and
CML_JOBS_CONTAINER=myapp.monitoring:container, a module holding these same lines.
"""

from __future__ import annotations

from cml_jobs import BackgroundTaskScheduler
from cml_jobs.monitoring import (
    MonitoringSettings,
    RedisWorkerRepository,
    WorkerMonitoringScheduler,
    build_monitoring_container,
)
from cml_jobs.stores.redis import redis_client

REDIS_URL = "redis://localhost:6379/0"

repository = RedisWorkerRepository(redis_client(REDIS_URL, patient=True), prefix="cml:")
container = build_monitoring_container(MonitoringSettings(region="eu-west-1"), repository)


async def start_monitoring() -> None:
    scheduler = BackgroundTaskScheduler.configure(
        container, modules=["cml_jobs.monitoring"], redis_url=REDIS_URL
    )
    async with scheduler:
        monitoring = WorkerMonitoringScheduler(scheduler.bus, repository, interval=300)
        await monitoring.discover_async()  # a task for every active worker that has none
        await monitoring.start_monitoring_worker_async("worker-456")  # or one at a time
        ...  # the app runs; leaving the block stops the scheduler
