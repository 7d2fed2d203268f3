"""The pure parts of monitoring: error classification, retries, and the repositories."""

from __future__ import annotations

import json

import pytest
import redis.asyncio
from botocore.exceptions import ClientError, EndpointConnectionError

from cml_jobs.monitoring import (
    CMLWorker,
    InMemoryWorkerRepository,
    RedisWorkerRepository,
    WorkerRepository,
    WorkerStatus,
    is_transient,
)
from cml_jobs.monitoring._aws import is_instance_gone, with_retries


def client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}}, "DescribeInstanceStatus")


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (client_error("RequestLimitExceeded"), True),
        (client_error("Throttling"), True),
        (client_error("InternalError"), True),
        (client_error("ServiceUnavailable"), True),
        (EndpointConnectionError(endpoint_url="http://x"), True),
        (client_error("InvalidInstanceID.NotFound"), False),
        (client_error("UnauthorizedOperation"), False),
        (ValueError("x"), False),
    ],
)
def test_throttling_server_and_network_errors_are_transient(
    error: Exception, transient: bool
) -> None:
    """Only throttling, 5xx-style codes and connection failures are worth a retry."""
    assert is_transient(error) is transient


def test_an_unknown_instance_is_recognised_as_gone() -> None:
    """InvalidInstanceID.NotFound means EC2 no longer knows the instance."""
    assert is_instance_gone(client_error("InvalidInstanceID.NotFound"))
    assert not is_instance_gone(client_error("Throttling"))


class Flaky:
    """Fails with the given errors in turn, then returns 'ok'."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


async def no_sleep(delays: list[float], seconds: float) -> None:
    delays.append(seconds)


async def test_transient_errors_are_retried_with_doubling_backoff() -> None:
    """Two throttles then success: three calls, delays 0.5 then 1.0."""
    call, delays = Flaky(client_error("Throttling"), client_error("Throttling")), []
    sleep = lambda s: no_sleep(delays, s)  # noqa: E731
    assert await with_retries(call, attempts=3, backoff=0.5, sleep=sleep) == "ok"
    assert (call.calls, delays) == (3, [0.5, 1.0])


async def test_retries_are_bounded_and_the_last_error_is_raised() -> None:
    """A throttle that persists is raised after the last attempt."""
    call = Flaky(*[client_error("Throttling")] * 5)
    with pytest.raises(ClientError, match="Throttling"):
        await with_retries(call, attempts=3, backoff=0, sleep=lambda s: no_sleep([], s))
    assert call.calls == 3


async def test_a_permanent_error_is_not_retried() -> None:
    """An access-denied error is raised at once."""
    call = Flaky(client_error("UnauthorizedOperation"))
    with pytest.raises(ClientError):
        await with_retries(call, attempts=3, backoff=0, sleep=lambda s: no_sleep([], s))
    assert call.calls == 1


async def check_repository(repository: WorkerRepository) -> None:
    running = CMLWorker(id="a", instance_id="i-a", region="us-east-1", status="running")
    gone = CMLWorker(id="b", instance_id="i-b", region="us-east-1", status="terminated")
    assert await repository.get_by_id_async("a") is None
    assert await repository.list_active_async() == []
    await repository.save_async(running)
    await repository.save_async(gone)
    assert await repository.get_by_id_async("a") == running
    assert await repository.list_active_async() == [running]
    updated = running.model_copy(update={"last_metrics": {"CPUUtilization": 3.5}})
    await repository.save_async(updated)
    assert await repository.get_by_id_async("a") == updated


async def test_the_in_memory_repository_keeps_workers_and_lists_active_ones() -> None:
    """save / get / list_active, terminated workers excluded."""
    await check_repository(InMemoryWorkerRepository())


@pytest.mark.redis
async def test_the_redis_repository_keeps_workers_as_json_documents(
    redis_client: redis.asyncio.Redis, key_prefix: str
) -> None:
    """The same contract over Redis; the stored value is plain JSON, not pickle."""
    await check_repository(RedisWorkerRepository(redis_client, prefix=key_prefix))
    raw = await redis_client.get(f"{key_prefix}worker:a")
    assert json.loads(raw)["status"] == WorkerStatus.RUNNING.value
