"""Settings and the dependency-injector container the monitoring job takes its
services from: an aiobotocore session, EC2 and CloudWatch clients, the repository.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from dependency_injector import containers, providers
from pydantic import BaseModel, ConfigDict, Field

from cml_jobs.monitoring._events import WorkerEvents
from cml_jobs.monitoring._repository import InMemoryWorkerRepository, WorkerRepository

if TYPE_CHECKING:
    from types_aiobotocore_cloudwatch import CloudWatchClient
    from types_aiobotocore_ec2 import EC2Client

__all__ = ["MonitoringContainer", "MonitoringSettings", "build_monitoring_container"]


class MonitoringSettings(BaseModel):
    """How the monitoring job reaches AWS. Credentials are not settings: they come from
    the standard AWS chain (environment, shared config, SSO, instance/task role).

    Attributes:
        region: the AWS region of the workers' instances.
        endpoint_url: another endpoint for EC2 and CloudWatch (moto, LocalStack); None
            for AWS itself.
        metrics_window: how far back each run reads CloudWatch (match the interval).
        attempts: tries per AWS call when it fails transiently (throttling, 5xx, network).
        backoff: seconds before the first retry; doubles on each further one.
        connect_timeout: seconds to wait for a connection to AWS.
        read_timeout: seconds to wait for a reply.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    region: str = "us-east-1"
    endpoint_url: str | None = None
    metrics_window: timedelta = timedelta(seconds=300)
    attempts: int = Field(default=3, ge=1, le=10)
    backoff: float = Field(default=1.0, ge=0)
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=30.0, gt=0)


def _client_config(settings: MonitoringSettings) -> AioConfig:
    # botocore's own retries are turned off: the job retries (and counts) them itself,
    # so a run's worst-case duration is attempts x timeouts, not attempts x botocore's.
    return AioConfig(
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        retries={"max_attempts": 0, "mode": "standard"},
    )


async def open_ec2_client(
    session: AioSession, settings: MonitoringSettings
) -> AsyncIterator[EC2Client]:
    """An EC2 client, open for the life of the container's resources."""
    async with _client(session, "ec2", settings) as client:
        yield client


async def open_cloudwatch_client(
    session: AioSession, settings: MonitoringSettings
) -> AsyncIterator[CloudWatchClient]:
    """A CloudWatch client, open for the life of the container's resources."""
    async with _client(session, "cloudwatch", settings) as client:
        yield client


def _client(
    session: AioSession, service: Literal["ec2", "cloudwatch"], settings: MonitoringSettings
) -> Any:
    return session.create_client(
        service,
        region_name=settings.region,
        endpoint_url=settings.endpoint_url,
        config=_client_config(settings),
    )


class MonitoringContainer(containers.DeclarativeContainer):
    """The services ``WorkerMetricsCollectionJob`` asks for, by provider name.

    Override ``monitoring_settings`` and ``worker_repository`` (or build it with
    ``build_monitoring_container``). The clients are ``Resource`` providers: opened when
    the scheduler starts, closed when it stops.
    """

    monitoring_settings = providers.Object(MonitoringSettings())
    aws_session = providers.Singleton(get_session)
    ec2_client = providers.Resource(
        open_ec2_client, session=aws_session, settings=monitoring_settings
    )
    cloudwatch_client = providers.Resource(
        open_cloudwatch_client, session=aws_session, settings=monitoring_settings
    )
    worker_repository = providers.Singleton(InMemoryWorkerRepository)
    worker_events = providers.Singleton(WorkerEvents)


def build_monitoring_container(
    settings: MonitoringSettings | None = None,
    repository: WorkerRepository | None = None,
    events: WorkerEvents | None = None,
) -> MonitoringContainer:
    """A ``MonitoringContainer`` with the given settings, repository and event hub.

    Args:
        settings: the AWS settings; the defaults when None.
        repository: where workers are kept; a fresh in-memory one when None.
        events: where worker changes go; a fresh ``WorkerEvents`` when None.

    Returns:
        The container, to pass as ``BackgroundTaskScheduler.configure(container=...)``.
    """
    container = MonitoringContainer()
    container.monitoring_settings.override(providers.Object(settings or MonitoringSettings()))
    container.worker_repository.override(providers.Object(repository or InMemoryWorkerRepository()))
    container.worker_events.override(providers.Object(events or WorkerEvents()))
    return container
