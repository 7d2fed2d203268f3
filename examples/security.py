"""Security: a secret stays out of the task (a reference is stored), descriptors are signed,
and the store is reached over TLS as a least-privilege user.

python examples/security.py   (memory://: no Redis needed)
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from typing import Any

from dependency_injector import containers, providers

from cml_jobs import (
    BackgroundTaskScheduler,
    EventKind,
    ScheduledBackgroundJob,
    ScheduledTaskDescriptor,
    ServiceProvider,
    backgroundjob,
)


# --8<-- [start:secret]
class SecretStore:  # your vault or secret manager; here, the environment
    async def get(self, reference: str) -> str:
        scheme, _, name = reference.partition(":")
        assert scheme == "env", f"unknown secret reference {reference!r}"
        return os.environ[name]


class Container(containers.DeclarativeContainer):
    secrets = providers.Singleton(SecretStore)


@backgroundjob(task_type="scheduled")
class ChargeJob(ScheduledBackgroundJob):
    def __init__(self, account_id: str, api_key_ref: str) -> None:  # "env:BILLING_API_KEY"
        self.account_id = account_id
        self.api_key_ref = api_key_ref

    def configure(self, service_provider: ServiceProvider | None = None, **kwargs: Any) -> None:
        assert service_provider is not None
        self.secrets = service_provider.get_required_service(SecretStore)

    async def run_at(self, *args: Any, **kwargs: Any) -> None:
        api_key = await self.secrets.get(self.api_key_ref)  # never written to Redis
        print(f"charged {self.account_id} with a key of {len(api_key)} characters")


# --8<-- [end:secret]


# --8<-- [start:production]
def production_scheduler() -> BackgroundTaskScheduler:
    return BackgroundTaskScheduler.configure(
        Container(),
        modules=[__name__],
        # TLS (hostname checked), an ACL user, its password from the environment
        redis_url=os.environ["CML_JOBS_REDIS_URL"],  # rediss://cml-app:...@redis.internal:6380/0
        signing_key=os.environ["CML_JOBS_SIGNING_KEY"],  # the workers have the same key
    )


# --8<-- [end:production]


async def main() -> None:
    os.environ.setdefault("BILLING_API_KEY", "sk-demo-0123456789")
    scheduler = BackgroundTaskScheduler.configure(
        Container(), modules=[__name__], signing_key="demo-signing-key"
    )
    async with scheduler:
        events = scheduler.events()
        await scheduler.bus.schedule_task(
            ScheduledTaskDescriptor(
                id="charge-acme",
                name="ChargeJob",
                data={"account_id": "acme", "api_key_ref": "env:BILLING_API_KEY"},
                scheduled_at=scheduler.clock.now() + timedelta(milliseconds=50),
            )
        )
        async for event in events:
            assert event.kind is not EventKind.FAILED, event.error
            if event.kind is EventKind.SUCCEEDED:
                break


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(), timeout=30))
