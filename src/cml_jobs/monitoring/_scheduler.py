"""``WorkerMonitoringScheduler``: one monitoring task per active worker."""

from __future__ import annotations

from datetime import timedelta

from cml_jobs import BackgroundTasksBus, RecurrentTaskDescriptor, TaskInfo, TaskNotFoundError
from cml_jobs.monitoring._job import WorkerMetricsCollectionJob
from cml_jobs.monitoring._repository import WorkerRepository

__all__ = ["WorkerMonitoringScheduler", "monitoring_task_id"]

JOB_NAME = WorkerMetricsCollectionJob.__name__


def monitoring_task_id(worker_id: str) -> str:
    """The id of the task that monitors ``worker_id``."""
    return f"monitor-{worker_id}"


class WorkerMonitoringScheduler:
    """Starts and stops the monitoring tasks of workers.

    Args:
        bus: the scheduler's bus (``scheduler.bus``).
        repository: where the workers are.
        interval: the default seconds between two polls of a worker.
    """

    def __init__(
        self, bus: BackgroundTasksBus, repository: WorkerRepository, interval: float = 300
    ) -> None:
        self._bus = bus
        self._repository = repository
        self._interval = interval

    async def start_monitoring_worker_async(
        self, worker_id: str, interval: float | None = None
    ) -> TaskInfo:
        """Make sure ``worker_id`` has a monitoring task; a no-op when it has one.

        Args:
            worker_id: the worker.
            interval: seconds between polls; the scheduler's default when None. A
                different interval replaces the worker's existing task.

        Returns:
            The monitoring task.
        """
        seconds = self._interval if interval is None else interval
        descriptor = RecurrentTaskDescriptor(
            id=monitoring_task_id(worker_id),
            name=JOB_NAME,
            data={"worker_id": worker_id},
            interval=timedelta(seconds=seconds),
        )
        return await self._bus.schedule_task(descriptor, replace=True)

    async def stop_monitoring_worker_async(self, worker_id: str) -> bool:
        """Cancel ``worker_id``'s monitoring task.

        Returns:
            True if there was one.
        """
        try:
            await self._bus.cancel_task(monitoring_task_id(worker_id))
        except TaskNotFoundError:
            return False
        return True

    async def discover_async(self) -> list[str]:
        """Give every active worker in the repository a monitoring task, if it lacks one.

        Idempotent: a second call creates nothing.

        Returns:
            The ids of the workers whose task was created by this call.
        """
        existing = {task.id for task in await self._bus.list_tasks()}
        started: list[str] = []
        for worker in await self._repository.list_active_async():
            if monitoring_task_id(worker.id) not in existing:
                await self.start_monitoring_worker_async(worker.id)
                started.append(worker.id)
        return started
