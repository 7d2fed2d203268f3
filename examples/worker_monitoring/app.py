"""Monitor two lab workers' EC2 instances, then terminate one and watch its task end.

Run it with one command, no AWS account needed (it starts its own moto server):

    .venv/bin/python examples/worker_monitoring/app.py

With AWS credentials in the standard chain and CML_MONITOR_INSTANCE_IDS=i-a,i-b it
monitors those real instances instead, read-only (it never launches or terminates any).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import boto3  # type: ignore[import-untyped]  # moto's server is set up with the sync SDK
from botocore.exceptions import NoCredentialsError

from cml_jobs import BackgroundTaskScheduler
from cml_jobs.monitoring import (
    CMLWorker,
    InMemoryWorkerRepository,
    MonitoringSettings,
    WorkerMonitoringScheduler,
    WorkerStatus,
    build_monitoring_container,
    monitoring_task_id,
)

INTERVAL = 1.0  # seconds between polls; 300 in production
REGION = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")


@contextmanager
def moto_endpoint() -> Iterator[str]:
    """A moto server of our own, with dummy credentials, for the length of the demo."""
    from moto.server import ThreadedMotoServer

    os.environ.update(AWS_ACCESS_KEY_ID="demo", AWS_SECRET_ACCESS_KEY="demo")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request log lines
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def launch_instances(endpoint: str, count: int) -> list[str]:
    """Start ``count`` instances on moto, with a CloudWatch datapoint each."""
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=endpoint)
    cloudwatch = boto3.client("cloudwatch", region_name=REGION, endpoint_url=endpoint)
    image = ec2.describe_images()["Images"][0]["ImageId"]
    reply = ec2.run_instances(ImageId=image, MinCount=count, MaxCount=count)
    ids = [instance["InstanceId"] for instance in reply["Instances"]]
    for n, instance_id in enumerate(ids):
        cloudwatch.put_metric_data(
            Namespace="AWS/EC2",
            MetricData=[
                {
                    "MetricName": "CPUUtilization",
                    "Dimensions": [{"Name": "InstanceId", "Value": instance_id}],
                    "Timestamp": datetime.now(timezone.utc),
                    "Value": 20.0 * (n + 1),
                    "Unit": "Percent",
                }
            ],
        )
    return ids


def show(workers: list[CMLWorker | None]) -> None:
    """Print one line per worker."""
    for worker in workers:
        if worker is not None:
            print(
                f"  {worker.id}: {worker.instance_id} {worker.status.value:<10} "
                f"checks={worker.instance_status}/{worker.system_status} "
                f"metrics={worker.last_metrics}"
            )


async def wait_until(condition: Callable[[], Awaitable[bool]], seconds: float = 20) -> None:
    """Poll ``condition()`` until it is true; fail after ``seconds``."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"still waiting after {seconds} s")
        await asyncio.sleep(0.2)


async def monitor(endpoint: str | None, instance_ids: list[str], terminate: bool) -> None:
    """Register a worker per instance, monitor them all, optionally terminate the last."""
    repository = InMemoryWorkerRepository()
    settings = MonitoringSettings(
        region=REGION, endpoint_url=endpoint, metrics_window=timedelta(minutes=5)
    )
    container = build_monitoring_container(settings, repository)
    scheduler = BackgroundTaskScheduler.configure(
        container=container, modules=["cml_jobs.monitoring"], run_worker=True
    )
    async with scheduler:
        workers = [f"worker-{n + 1}" for n in range(len(instance_ids))]
        for worker_id, instance_id in zip(workers, instance_ids, strict=True):
            await repository.save_async(
                CMLWorker(id=worker_id, instance_id=instance_id, region=REGION)
            )
        monitoring = WorkerMonitoringScheduler(scheduler.bus, repository, interval=INTERVAL)
        print("discovered and started monitoring:", await monitoring.discover_async())

        async def all_polled() -> bool:
            found = [await repository.get_by_id_async(w) for w in workers]
            return all(w is not None and w.status is not WorkerStatus.PENDING for w in found)

        await wait_until(all_polled)
        show([await repository.get_by_id_async(w) for w in workers])
        if terminate:
            await terminate_last(endpoint, scheduler, repository, workers[-1])


async def terminate_last(
    endpoint: str | None,
    scheduler: BackgroundTaskScheduler,
    repository: InMemoryWorkerRepository,
    worker_id: str,
) -> None:
    """Terminate a worker's instance and wait for its monitoring task to end itself."""
    worker = await repository.get_by_id_async(worker_id)
    assert worker is not None
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=endpoint)
    ec2.terminate_instances(InstanceIds=[worker.instance_id])
    print(f"terminated {worker.instance_id} ({worker_id})")

    async def task_ended() -> bool:
        tasks = {task.id for task in await scheduler.list_tasks()}
        return monitoring_task_id(worker_id) not in tasks

    await wait_until(task_ended)
    print("tasks left:", [task.id for task in await scheduler.list_tasks()])
    show([await repository.get_by_id_async(worker_id)])


def real_instance_ids() -> list[str]:
    """The real instances to monitor, when credentials and CML_MONITOR_INSTANCE_IDS exist."""
    ids = [i for i in os.environ.get("CML_MONITOR_INSTANCE_IDS", "").split(",") if i]
    try:
        has_credentials = boto3.Session().get_credentials() is not None
    except NoCredentialsError:
        has_credentials = False
    return ids if ids and has_credentials else []


def main() -> int:
    """Run against real AWS if configured, else against a moto server of our own."""
    real = real_instance_ids()
    if real:
        asyncio.run(monitor(None, real, terminate=False))
        return 0
    with moto_endpoint() as endpoint:
        asyncio.run(monitor(endpoint, launch_instances(endpoint, 2), terminate=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
