"""The AWS calls of the monitoring job, and which of their errors are worth retrying.

With ``cml_jobs.monitoring._container`` this is the only module that imports botocore.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotocoreConnectionError

if TYPE_CHECKING:
    from types_aiobotocore_cloudwatch import CloudWatchClient
    from types_aiobotocore_cloudwatch.type_defs import MetricDataQueryTypeDef
    from types_aiobotocore_ec2 import EC2Client

__all__ = [
    "METRICS",
    "InstanceReport",
    "describe_instance",
    "fetch_metrics",
    "is_instance_gone",
    "is_transient",
    "with_retries",
]

logger = logging.getLogger("cml_jobs.monitoring")
T = TypeVar("T")

#: CloudWatch metrics collected: name -> statistic.
METRICS: dict[str, str] = {"CPUUtilization": "Average", "NetworkIn": "Sum", "NetworkOut": "Sum"}

# Error codes AWS documents as throttling or server-side trouble: a later try may succeed.
_TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "TooManyRequestsException",
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "ServiceUnavailable",
        "Unavailable",
    }
)


@dataclass(frozen=True)
class InstanceReport:
    """What EC2 says about one instance.

    Attributes:
        state: the instance state name (``running``, ``terminated``...).
        instance_status: the instance status check, or None when EC2 reports none.
        system_status: the system status check, or None.
    """

    state: str
    instance_status: str | None = None
    system_status: str | None = None


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a ``ClientError``, or None for any other exception."""
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Code")
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is throttling, a 5xx or a network failure: worth another try."""
    # Connection refused or timed out, reads timed out, connections reset.
    if isinstance(exc, (BotocoreConnectionError, HTTPClientError)):
        return True
    return error_code(exc) in _TRANSIENT_CODES


def is_instance_gone(exc: BaseException) -> bool:
    """Whether ``exc`` says EC2 does not know the instance (any more)."""
    return error_code(exc) in {"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"}


async def with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    backoff: float,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Await ``call()``; on a transient error try again, up to ``attempts`` in all.

    The delay starts at ``backoff`` seconds and doubles. A non-transient error, or the
    last transient one, is raised as is.
    """
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            delay = backoff * 2 ** (attempt - 1)
            logger.warning("AWS call failed (%s); retry %d in %.2fs", exc, attempt, delay)
            await sleep(delay)
    raise AssertionError("unreachable: attempts must be at least 1")


async def describe_instance(ec2: EC2Client, instance_id: str) -> InstanceReport:
    """The state and status checks of ``instance_id``.

    Raises:
        botocore.exceptions.ClientError: e.g. ``InvalidInstanceID.NotFound``.
    """
    reply = await ec2.describe_instance_status(InstanceIds=[instance_id], IncludeAllInstances=True)
    statuses = reply.get("InstanceStatuses", [])
    if not statuses:
        # Not every EC2 reports every instance here; describe_instances always does.
        return await _describe_state(ec2, instance_id)
    status = statuses[0]
    return InstanceReport(
        state=status.get("InstanceState", {}).get("Name", "unknown"),
        instance_status=status.get("InstanceStatus", {}).get("Status"),
        system_status=status.get("SystemStatus", {}).get("Status"),
    )


async def _describe_state(ec2: EC2Client, instance_id: str) -> InstanceReport:
    reply = await ec2.describe_instances(InstanceIds=[instance_id])
    for reservation in reply.get("Reservations", []):
        for instance in reservation.get("Instances", []):
            return InstanceReport(state=instance.get("State", {}).get("Name", "unknown"))
    raise ClientError(
        {"Error": {"Code": "InvalidInstanceID.NotFound", "Message": instance_id}},
        "DescribeInstances",
    )


async def fetch_metrics(
    cloudwatch: CloudWatchClient, instance_id: str, end: datetime, window: timedelta
) -> dict[str, float]:
    """The latest value of each of ``METRICS`` for the instance in ``[end - window, end]``.

    A metric with no datapoint in the window is left out.
    """
    period = max(60, int(window.total_seconds()) // 60 * 60)  # CloudWatch wants k x 60 s
    reply = await cloudwatch.get_metric_data(
        MetricDataQueries=_queries(instance_id, period),
        StartTime=end - window,
        EndTime=end,
        ScanBy="TimestampDescending",
    )
    names = {f"m{i}": name for i, name in enumerate(METRICS)}
    return {
        names[result["Id"]]: float(result["Values"][0])
        for result in reply.get("MetricDataResults", [])
        if result.get("Id") in names and result.get("Values")
    }


def _queries(instance_id: str, period: int) -> list[MetricDataQueryTypeDef]:
    return [
        {
            "Id": f"m{i}",
            "MetricStat": {
                "Metric": {
                    "Namespace": "AWS/EC2",
                    "MetricName": name,
                    "Dimensions": [{"Name": "InstanceId", "Value": instance_id}],
                },
                "Period": period,
                "Stat": stat,
            },
            "ReturnData": True,
        }
        for i, (name, stat) in enumerate(METRICS.items())
    ]
