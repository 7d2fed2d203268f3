"""Cloud worker monitoring: a recurrent job per worker polls its EC2 instance's state and
status checks and its CloudWatch metrics, through aiobotocore, and ends itself when the
instance is terminated. Install with the ``aws`` extra.

The only cml-jobs package that imports aiobotocore and botocore.

Example:
    ```python
    container = build_monitoring_container(MonitoringSettings(region="eu-west-1"))
    scheduler = BackgroundTaskScheduler.configure(
        container=container, modules=["cml_jobs.monitoring"])
    async with scheduler:
        monitor = WorkerMonitoringScheduler(scheduler.bus, container.worker_repository())
        await monitor.discover_async()
    ```
"""

from __future__ import annotations

from cml_jobs.monitoring._aws import InstanceReport, is_transient
from cml_jobs.monitoring._container import (
    MonitoringContainer,
    MonitoringSettings,
    build_monitoring_container,
)
from cml_jobs.monitoring._events import WorkerChange, WorkerEvents
from cml_jobs.monitoring._job import WorkerMetricsCollectionJob
from cml_jobs.monitoring._models import CMLWorker, WorkerStatus
from cml_jobs.monitoring._repository import (
    InMemoryWorkerRepository,
    RedisWorkerRepository,
    WorkerRepository,
)
from cml_jobs.monitoring._scheduler import WorkerMonitoringScheduler, monitoring_task_id

__all__ = [
    "CMLWorker",
    "InMemoryWorkerRepository",
    "InstanceReport",
    "MonitoringContainer",
    "MonitoringSettings",
    "RedisWorkerRepository",
    "WorkerChange",
    "WorkerEvents",
    "WorkerMetricsCollectionJob",
    "WorkerMonitoringScheduler",
    "WorkerRepository",
    "WorkerStatus",
    "build_monitoring_container",
    "is_transient",
    "monitoring_task_id",
]
