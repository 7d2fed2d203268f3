"""WorkerMetricsCollectionJob and WorkerMonitoringScheduler against moto's HTTP server."""

from __future__ import annotations

import json
import socket
from datetime import timedelta

import pytest
import redis.asyncio
from botocore.exceptions import HTTPClientError

from cml_jobs import BackgroundTaskScheduler, Outcome, TaskEvent
from cml_jobs.monitoring import (
    CMLWorker,
    InMemoryWorkerRepository,
    MonitoringSettings,
    WorkerStatus,
    build_monitoring_container,
    monitoring_task_id,
)
from cml_jobs.stores.redis import RedisScheduleStore
from cml_jobs.testing import run_due
from tests.monitoring.conftest import (
    INTERVAL,
    REGION,
    Aws,
    Monitoring,
    open_monitoring,
    settings_for,
)

pytestmark = pytest.mark.usefixtures("moto_server")


def kinds(events: list[TaskEvent]) -> list[str]:
    return [event.kind.value for event in events]


async def next_run(monitoring: Monitoring) -> list[str]:
    """Move one interval on and run what is due; the kinds of the events emitted."""
    monitoring.clock.advance(seconds=INTERVAL)
    return kinds(await run_due(monitoring.scheduler))


async def test_a_running_instance_gets_its_status_and_metrics_recorded_on_every_run(
    monitoring: Monitoring, aws: Aws
) -> None:
    """Each run stores the instance state, its status checks and the latest CloudWatch values."""
    instance_id = aws.run_instance()
    await monitoring.add_worker("w1", instance_id)
    await monitoring.monitor.start_monitoring_worker_async("w1")
    for cpu in (12.5, 40.0, 7.0):
        at = monitoring.clock.now() + timedelta(seconds=INTERVAL - 10)
        aws.put_metrics(instance_id, at, cpu)
        assert await next_run(monitoring) == ["started", "succeeded"]
        worker = await monitoring.repository.get_by_id_async("w1")
        assert worker is not None
        assert worker.last_metrics == {
            "CPUUtilization": cpu,
            "NetworkIn": cpu * 1000,
            "NetworkOut": cpu * 2000,
        }
    assert (worker.status, worker.instance_status, worker.system_status) == (
        WorkerStatus.RUNNING,
        "ok",
        "ok",
    )
    assert [change.changed for change in monitoring.changes][1:] == [("last_metrics",)] * 2


async def test_terminating_the_instance_ends_the_task_within_one_run(
    monitoring: Monitoring, aws: Aws
) -> None:
    """A terminated instance marks the worker TERMINATED and the task is gone."""
    instance_id = aws.run_instance()
    await monitoring.add_worker("w1", instance_id)
    await monitoring.monitor.start_monitoring_worker_async("w1")
    assert await next_run(monitoring) == ["started", "succeeded"]
    aws.ec2.terminate_instances(InstanceIds=[instance_id])
    assert await next_run(monitoring) == ["started", "stopped"]
    assert await monitoring.scheduler.list_tasks() == []
    worker = await monitoring.repository.get_by_id_async("w1")
    assert worker is not None and worker.status is WorkerStatus.TERMINATED
    assert monitoring.changes[-1].changed == ("status",)
    assert await next_run(monitoring) == []


async def test_an_instance_unknown_to_ec2_ends_the_task(monitoring: Monitoring, aws: Aws) -> None:
    """InvalidInstanceID.NotFound is terminal: the worker is TERMINATED, the task ends."""
    await monitoring.add_worker("w1", "i-0123456789abcdef0")
    await monitoring.monitor.start_monitoring_worker_async("w1")
    assert await next_run(monitoring) == ["started", "stopped"]
    assert await monitoring.scheduler.list_tasks() == []
    worker = await monitoring.repository.get_by_id_async("w1")
    assert worker is not None and worker.status is WorkerStatus.TERMINATED


async def test_a_worker_gone_from_the_repository_ends_its_task(monitoring: Monitoring) -> None:
    """No worker record: nothing to monitor, and no AWS call is made."""
    await monitoring.monitor.start_monitoring_worker_async("ghost")
    assert await next_run(monitoring) == ["started", "stopped"]
    assert await monitoring.scheduler.list_tasks() == []


def closed_port_url() -> str:
    """The URL of a local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_an_aws_error_fails_the_run_and_the_next_occurrence_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Unreachable AWS: retried inside the run, then a failed run; the schedule goes on."""
    async with open_monitoring(settings_for(closed_port_url(), attempts=2)) as monitoring:
        await monitoring.add_worker("w1", "i-0123456789abcdef0")
        start = monitoring.clock.now()
        await monitoring.monitor.start_monitoring_worker_async("w1")
        monitoring.clock.advance(seconds=INTERVAL)
        events = await run_due(monitoring.scheduler)
        assert kinds(events) == ["started", "failed"]
        assert events[-1].error is not None and "EndpointConnectionError" in events[-1].error
        assert [r.message for r in caplog.records if "retry 1" in r.message] != []
        assert await next_run(monitoring) == ["started", "failed"]
        task = await monitoring.scheduler.bus.get_task(monitoring_task_id("w1"))
        assert task.last_outcome is Outcome.FAILED and task.counts == {"failed": 2}
        assert task.next_run_time == start + timedelta(seconds=3 * INTERVAL)  # still on its grid
        worker = await monitoring.repository.get_by_id_async("w1")
        assert worker is not None and worker.status is WorkerStatus.RUNNING


async def test_discovery_creates_one_task_per_active_worker_and_is_idempotent(
    monitoring: Monitoring,
) -> None:
    """Active workers each get one task; terminated ones none; a second discovery adds none."""
    for worker_id, status in [("a", "running"), ("b", "pending"), ("c", "terminated")]:
        worker = CMLWorker(
            id=worker_id, instance_id=f"i-{worker_id}", region=REGION, status=WorkerStatus(status)
        )
        await monitoring.repository.save_async(worker)
    assert sorted(await monitoring.monitor.discover_async()) == ["a", "b"]
    assert await monitoring.monitor.discover_async() == []
    tasks = await monitoring.scheduler.list_tasks()
    assert sorted(task.id for task in tasks) == ["monitor-a", "monitor-b"]


async def test_stop_monitoring_cancels_the_task(monitoring: Monitoring) -> None:
    """Stopping removes the task; stopping again reports there was none."""
    await monitoring.monitor.start_monitoring_worker_async("w1")
    assert await monitoring.monitor.stop_monitoring_worker_async("w1") is True
    assert await monitoring.monitor.stop_monitoring_worker_async("w1") is False
    assert await monitoring.scheduler.list_tasks() == []


async def test_the_stored_descriptor_holds_only_the_worker_id(monitoring: Monitoring) -> None:
    """Nothing but the worker id is serialized for a monitoring task."""
    await monitoring.monitor.start_monitoring_worker_async("w1")
    state = await monitoring.scheduler.runtime.store.get("monitor-w1")
    assert state is not None
    descriptor = json.loads(state.descriptor_json)
    assert descriptor["data"] == {"worker_id": "w1"}
    assert descriptor["name"] == "WorkerMetricsCollectionJob"


@pytest.mark.redis
async def test_the_raw_redis_descriptor_holds_only_the_worker_id(
    redis_client: redis.asyncio.Redis, key_prefix: str, endpoint: str, aws: Aws
) -> None:
    """Read from the Redis hash itself: the task's data is the worker id, nothing else."""
    store = RedisScheduleStore(redis_client, prefix=key_prefix)
    async with open_monitoring(settings_for(endpoint), store) as monitoring:
        await monitoring.add_worker("w1", aws.run_instance())
        await monitoring.monitor.start_monitoring_worker_async("w1")
        raw = await redis_client.hget(f"{key_prefix}task:monitor-w1", "descriptor")
        assert raw is not None
        assert json.loads(raw)["data"] == {"worker_id": "w1"}
        assert await next_run(monitoring) == ["started", "succeeded"]


def put_in_state(instance_id: str, name: str, code: int) -> None:
    """Put a moto instance in an EC2 state moto never shows by itself (it terminates at
    once): the server runs in this process, so its backend is at hand."""
    from moto.backends import get_backend
    from moto.core import DEFAULT_ACCOUNT_ID

    instance = get_backend("ec2")[DEFAULT_ACCOUNT_ID][REGION].get_instance(instance_id)
    instance._state.name, instance._state.code = name, code


async def test_an_instance_shutting_down_ends_the_task_as_terminated(
    monitoring: Monitoring, aws: Aws
) -> None:
    """EC2 state 'shutting-down' is already terminal: the worker is marked TERMINATED and
    its task ends in that run."""
    instance_id = aws.run_instance()
    await monitoring.add_worker("w1", instance_id)
    await monitoring.monitor.start_monitoring_worker_async("w1")
    assert await next_run(monitoring) == ["started", "succeeded"]
    put_in_state(instance_id, "shutting-down", 32)
    [status] = aws.ec2.describe_instance_status(
        InstanceIds=[instance_id], IncludeAllInstances=True
    )["InstanceStatuses"]
    assert status["InstanceState"]["Name"] == "shutting-down"
    assert await next_run(monitoring) == ["started", "stopped"]
    assert await monitoring.scheduler.list_tasks() == []
    worker = await monitoring.repository.get_by_id_async("w1")
    assert worker is not None and worker.status is WorkerStatus.TERMINATED
    assert monitoring.changes[-1].changed == ("status",)


async def test_the_aws_clients_are_opened_at_start_and_closed_at_stop(
    settings: MonitoringSettings, aws: Aws
) -> None:
    """The container's EC2 and CloudWatch clients are open (and usable) while the
    scheduler runs, before any run needs them, and closed when it stops."""
    container = build_monitoring_container(settings, InMemoryWorkerRepository())
    scheduler = BackgroundTaskScheduler.configure(
        container=container, modules=["cml_jobs.monitoring"], run_worker=False
    )
    async with scheduler:
        assert container.ec2_client.initialized and container.cloudwatch_client.initialized
        ec2, cloudwatch = await container.ec2_client(), await container.cloudwatch_client()
        assert "Reservations" in await ec2.describe_instances()
        assert "Metrics" in await cloudwatch.list_metrics()
    assert not container.ec2_client.initialized
    assert not container.cloudwatch_client.initialized
    with pytest.raises(HTTPClientError):  # its HTTP session is closed
        await ec2.describe_instances()
    with pytest.raises(HTTPClientError):
        await cloudwatch.list_metrics()
