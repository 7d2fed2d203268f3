"""The worker record the monitoring job keeps up to date."""

from __future__ import annotations

import enum
from datetime import datetime, timezone

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

__all__ = ["CMLWorker", "WorkerStatus", "utc_now"]


class WorkerStatus(str, enum.Enum):
    """The lifecycle state of a worker's EC2 instance."""

    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    TERMINATED = "terminated"


# EC2 instance states mapped onto worker states. "shutting-down" is already terminal:
# an instance on its way out never comes back, so monitoring it further is wasted calls.
EC2_STATES: dict[str, WorkerStatus] = {
    "pending": WorkerStatus.PENDING,
    "running": WorkerStatus.RUNNING,
    "stopping": WorkerStatus.STOPPING,
    "stopped": WorkerStatus.STOPPED,
    "shutting-down": WorkerStatus.TERMINATED,
    "terminated": WorkerStatus.TERMINATED,
}


def utc_now() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(timezone.utc)


class CMLWorker(BaseModel):
    """A lab worker running on an EC2 instance.

    Attributes:
        id: the worker's id in the app.
        instance_id: its EC2 instance id.
        region: the AWS region of the instance.
        status: the instance's state, as last seen.
        instance_status: EC2's instance status check (``ok``, ``impaired``...), if known.
        system_status: EC2's system status check, if known.
        last_metrics: the latest CloudWatch values, by metric name.
        updated_at: when the record last changed (aware UTC).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    instance_id: str = Field(min_length=1)
    region: str = Field(min_length=1)
    status: WorkerStatus = WorkerStatus.PENDING
    instance_status: str | None = None
    system_status: str | None = None
    last_metrics: dict[str, float] = Field(default_factory=dict)
    updated_at: AwareDatetime = Field(default_factory=utc_now)

    @property
    def active(self) -> bool:
        """Whether the worker still needs monitoring (it is not terminated)."""
        return self.status is not WorkerStatus.TERMINATED
