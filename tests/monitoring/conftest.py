"""A moto server shared by the monitoring tests, reset before each test, and the
scheduler-with-monitoring setup the tests drive by hand."""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from cml_jobs import BackgroundTaskScheduler
from cml_jobs.monitoring import (
    CMLWorker,
    InMemoryWorkerRepository,
    MonitoringSettings,
    WorkerChange,
    WorkerEvents,
    WorkerMonitoringScheduler,
    WorkerStatus,
    build_monitoring_container,
)
from cml_jobs.stores import ScheduleStore
from cml_jobs.testing import ManualClock

REGION = "us-east-1"
INTERVAL = 60
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's HTTP server on a free port, with dummy credentials; yields its URL."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in AWS_ENV.items():
            env.setenv(name, value)
        # Never read a developer's real profile or config by accident.
        env.setenv("AWS_CONFIG_FILE", "/dev/null")
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture
def endpoint(moto_server: str) -> str:
    """The moto server, emptied of every resource a previous test made."""
    request = urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=5) as reply:
        assert reply.status == 200
    return moto_server


@dataclass
class Aws:
    """Synchronous boto3 clients of the moto server, for arranging and checking."""

    ec2: Any
    cloudwatch: Any

    def run_instance(self) -> str:
        """Start one instance; its id."""
        image = self.ec2.describe_images()["Images"][0]["ImageId"]
        reply = self.ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)
        return str(reply["Instances"][0]["InstanceId"])

    def put_metrics(self, instance_id: str, at: Any, cpu: float) -> None:
        """Record CPU and network datapoints for the instance at ``at``."""
        data = [
            ("CPUUtilization", cpu, "Percent"),
            ("NetworkIn", cpu * 1000, "Bytes"),
            ("NetworkOut", cpu * 2000, "Bytes"),
        ]
        self.cloudwatch.put_metric_data(
            Namespace="AWS/EC2",
            MetricData=[
                {
                    "MetricName": name,
                    "Dimensions": [{"Name": "InstanceId", "Value": instance_id}],
                    "Timestamp": at,
                    "Value": value,
                    "Unit": unit,
                }
                for name, value, unit in data
            ],
        )


@pytest.fixture
def aws(endpoint: str) -> Aws:
    """boto3 clients of the reset moto server."""
    kwargs = {"region_name": REGION, "endpoint_url": endpoint}
    return Aws(boto3.client("ec2", **kwargs), boto3.client("cloudwatch", **kwargs))


@dataclass
class Monitoring:
    """A started scheduler with the monitoring container, and what the tests look at."""

    scheduler: BackgroundTaskScheduler
    clock: ManualClock
    repository: InMemoryWorkerRepository
    monitor: WorkerMonitoringScheduler
    changes: list[WorkerChange]

    async def add_worker(self, worker_id: str, instance_id: str) -> CMLWorker:
        """Register a running worker."""
        worker = CMLWorker(
            id=worker_id, instance_id=instance_id, region=REGION, status=WorkerStatus.RUNNING
        )
        await self.repository.save_async(worker)
        return worker


def settings_for(endpoint: str, **changes: Any) -> MonitoringSettings:
    """Monitoring settings for tests: fast retries, the window matching INTERVAL."""
    values: dict[str, Any] = {
        "region": REGION,
        "endpoint_url": endpoint,
        "metrics_window": timedelta(seconds=INTERVAL),
        "backoff": 0.001,
        "connect_timeout": 2,
        "read_timeout": 5,
    }
    return MonitoringSettings(**{**values, **changes})


@pytest.fixture
def settings(endpoint: str) -> MonitoringSettings:
    """Settings pointing at the reset moto server."""
    return settings_for(endpoint)


@asynccontextmanager
async def open_monitoring(
    settings: MonitoringSettings, store: ScheduleStore | None = None
) -> AsyncIterator[Monitoring]:
    """A scheduler without a worker loop: tests run due occurrences with ``run_due``."""
    repository = InMemoryWorkerRepository()
    events = WorkerEvents()
    clock = ManualClock()
    scheduler = BackgroundTaskScheduler.configure(
        container=build_monitoring_container(settings, repository, events),
        modules=["cml_jobs.monitoring"],
        store=store,
        clock=clock,
        run_worker=False,
    )
    async with scheduler:
        monitor = WorkerMonitoringScheduler(scheduler.bus, repository, interval=INTERVAL)
        changes: list[WorkerChange] = []
        events.subscribe(changes.append)
        yield Monitoring(scheduler, clock, repository, monitor, changes)


@pytest.fixture
async def monitoring(settings: MonitoringSettings) -> AsyncIterator[Monitoring]:
    """Monitoring over the in-memory schedule store and the reset moto server."""
    async with open_monitoring(settings) as monitoring:
        yield monitoring
