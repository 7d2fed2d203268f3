"""Dependency injection: a job takes a shared client, a per-run session and a repository
from a dependency-injector container, three ways.

python examples/dependency_injection.py   (memory://: no Redis needed)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from dependency_injector import containers, providers
from dependency_injector.wiring import Provide, inject

from cml_jobs import (
    BackgroundTaskScheduler,
    EventKind,
    ScheduledBackgroundJob,
    ScheduledTaskDescriptor,
    ServiceProvider,
    backgroundjob,
)


class HttpClient:  # shared by every run: opened when the worker starts, closed when it stops
    async def get(self, url: str) -> str:
        return f"200 OK from {url}"


class Session:  # one per run: a database session, say
    closed = False


class InvoiceRepository:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def number(self, invoice_id: str) -> str:
        return f"{self.prefix}-{invoice_id}"


async def open_client() -> AsyncIterator[HttpClient]:
    yield HttpClient()  # ...and close it after the yield


async def open_session() -> AsyncIterator[Session]:
    session = Session()
    yield session
    session.closed = True  # when the run that opened it ends


class Container(containers.DeclarativeContainer):
    repository = providers.Singleton(InvoiceRepository, prefix="INV")
    client = providers.Resource(open_client)
    session = providers.ContextLocalResource(open_session)  # not Closing[...] on a Resource


@inject  # wired by the scheduler in the modules it scans
async def fetch(url: str, client: HttpClient = Provide[Container.client]) -> str:
    return await client.get(url)


@backgroundjob(task_type="scheduled")
class SendInvoiceJob(ScheduledBackgroundJob):
    def __init__(self, invoice_id: str) -> None:
        self.invoice_id = invoice_id

    async def configure(
        self, service_provider: ServiceProvider | None = None, **kwargs: Any
    ) -> None:
        assert service_provider is not None  # the scheduler was given a container
        self.invoices = service_provider.get_required_service(InvoiceRepository)  # by type
        self.session: Session = await service_provider.session()  # by provider name

    async def run_at(self, *args: Any, **kwargs: Any) -> None:
        answer = await fetch("https://billing.example.com/send")  # through @inject
        print(self.invoices.number(self.invoice_id), answer, "closed:", self.session.closed)


async def main() -> None:
    scheduler = BackgroundTaskScheduler.configure(Container(), modules=[__name__])
    async with scheduler:
        events = scheduler.events()
        await scheduler.bus.schedule_task(
            ScheduledTaskDescriptor(
                id="invoice-7",
                name="SendInvoiceJob",
                data={"invoice_id": "7"},
                scheduled_at=scheduler.clock.now() + timedelta(milliseconds=50),
            )
        )
        async for event in events:
            assert event.kind is not EventKind.FAILED, event.error
            if event.kind is EventKind.SUCCEEDED:
                break


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(), timeout=30))
