"""``WorkerMetricsCollectionJob``: one run polls EC2 and CloudWatch for one worker."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from cml_jobs import (
    ConfigurationError,
    RecurrentBackgroundJob,
    ServiceProvider,
    StopRecurrence,
    backgroundjob,
)
from cml_jobs.monitoring._aws import (
    InstanceReport,
    describe_instance,
    fetch_metrics,
    is_instance_gone,
    with_retries,
)
from cml_jobs.monitoring._container import MonitoringSettings
from cml_jobs.monitoring._events import WorkerChange, WorkerEvents
from cml_jobs.monitoring._models import EC2_STATES, CMLWorker, WorkerStatus, utc_now
from cml_jobs.monitoring._repository import WorkerRepository

if TYPE_CHECKING:
    from types_aiobotocore_cloudwatch import CloudWatchClient
    from types_aiobotocore_ec2 import EC2Client

__all__ = ["WorkerMetricsCollectionJob"]

T = TypeVar("T")

#: The container providers the job reads, by name (see ``MonitoringContainer``).
SERVICES = ("monitoring_settings", "worker_repository", "ec2_client", "cloudwatch_client")


@backgroundjob()
class WorkerMetricsCollectionJob(RecurrentBackgroundJob):
    """Keeps one worker's record in step with its EC2 instance, every occurrence.

    Ends its recurrence when the worker is gone from the repository, is TERMINATED, or
    its instance is terminated or unknown to EC2. Transient AWS errors are retried
    inside the run; when they persist the run fails and the next occurrence tries again.

    Args:
        worker_id: the worker to monitor: the only thing stored in the task.
    """

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id

    async def configure(
        self, service_provider: ServiceProvider | None = None, **kwargs: Any
    ) -> None:
        """Take the settings, repository, clients and event hub from the container.

        Raises:
            ConfigurationError: no container, or one without the monitoring providers.
        """
        if service_provider is None:
            raise ConfigurationError(
                "WorkerMetricsCollectionJob needs a container; pass "
                "container=build_monitoring_container(...) to BackgroundTaskScheduler.configure"
            )
        self.settings: MonitoringSettings = await _service(service_provider, SERVICES[0])
        self.repository: WorkerRepository = await _service(service_provider, SERVICES[1])
        self.ec2: EC2Client = await _service(service_provider, SERVICES[2])
        self.cloudwatch: CloudWatchClient = await _service(service_provider, SERVICES[3])
        self.events: WorkerEvents | None = None
        if hasattr(service_provider.container, "worker_events"):
            self.events = await _service(service_provider, "worker_events")

    async def run_every(self, *args: Any, **kwargs: Any) -> None:
        """Poll the instance, record its state and metrics, and stop when it is gone.

        Raises:
            StopRecurrence: the worker or its instance is gone, or terminated.
        """
        worker = await self.repository.get_by_id_async(self.worker_id)
        if worker is None or not worker.active:
            raise StopRecurrence(f"worker {self.worker_id!r} is gone or terminated")
        report = await self._describe(worker.instance_id)
        status = WorkerStatus.TERMINATED if report is None else EC2_STATES.get(report.state)
        if status is WorkerStatus.TERMINATED:
            await self._record(worker, {"status": status})
            raise StopRecurrence(f"instance {worker.instance_id!r} of {worker.id!r} ended")
        assert report is not None
        metrics = await self._retry(
            lambda: fetch_metrics(
                self.cloudwatch,
                worker.instance_id,
                self.context.occurrence_at,
                self.settings.metrics_window,
            )
        )
        await self._record(worker, _observed(worker, report, status, metrics))

    async def _describe(self, instance_id: str) -> InstanceReport | None:
        """The instance's report, or None when EC2 does not know it."""
        try:
            return await self._retry(lambda: describe_instance(self.ec2, instance_id))
        except Exception as exc:
            if is_instance_gone(exc):
                return None
            raise

    async def _retry(self, call: Callable[[], Awaitable[T]]) -> T:
        return await with_retries(
            call, attempts=self.settings.attempts, backoff=self.settings.backoff
        )

    async def _record(self, worker: CMLWorker, changes: dict[str, Any]) -> None:
        # Validated, unlike model_copy(update=...), so a bad value fails here, not on read.
        updated = CMLWorker.model_validate(
            {**worker.model_dump(), **changes, "updated_at": utc_now()}
        )
        await self.repository.save_async(updated)
        if self.events is not None:
            self.events.emit(WorkerChange.between(worker, updated))


def _observed(
    worker: CMLWorker,
    report: InstanceReport,
    status: WorkerStatus | None,
    metrics: dict[str, float],
) -> dict[str, Any]:
    # An EC2 state we do not map (a new one) keeps the last known status.
    return {
        "status": status or worker.status,
        "instance_status": report.instance_status,
        "system_status": report.system_status,
        # Keep the last value of a metric CloudWatch has no datapoint for this time.
        "last_metrics": {**worker.last_metrics, **metrics},
    }


async def _service(service_provider: ServiceProvider, name: str) -> Any:
    provider = getattr(service_provider.container, name, None)
    if provider is None:
        raise ConfigurationError(
            f"the container has no provider named {name!r}; WorkerMetricsCollectionJob needs "
            f"{', '.join(SERVICES)}: use MonitoringContainer or build_monitoring_container()"
        )
    value = provider()
    return await value if inspect.isawaitable(value) else value
