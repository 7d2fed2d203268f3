"""Dependency injection: resolving by type, per-run and shared resources, and jobs that use
the container through ``get_required_service`` and ``@inject``/``Provide[...]``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from dependency_injector import containers, providers

from cml_jobs import (
    BackgroundTaskScheduler,
    EventKind,
    RecurrentTaskDescriptor,
    ServiceNotFoundError,
    ServiceProvider,
)
from cml_jobs._di import close_run_resources, init_resources, shutdown_resources
from cml_jobs.testing import ManualClock, run_due
from tests.fixtures.di_jobs import Connection, Container, Greeter, Ledger, Session


class Base:
    """A service type with a subclass."""


class Derived(Base):
    """A subclass of a service type."""


class Unprovided:
    """A type no provider provides."""


async def make_connection() -> AsyncIterator[Connection]:
    """An async-generator resource, annotated with what it yields."""
    yield Connection()


def make_greeter() -> Iterator[Greeter]:
    """A sync-generator resource, annotated with what it yields."""
    yield Greeter("?")


def untyped_factory():  # type: ignore[no-untyped-def]
    """A factory without a return annotation: its type cannot be known."""
    return Unprovided()


class Services(containers.DeclarativeContainer):
    """One provider of each kind."""

    ledger = providers.Singleton(Ledger)
    greeter = providers.Factory(Greeter, punctuation=".")
    derived = providers.Factory(Derived)
    connection = providers.Resource(make_connection)
    untyped = providers.Factory(untyped_factory)


class Inner(containers.DeclarativeContainer):
    """A nested container's providers are searched too."""

    greeter = providers.Factory(Greeter, punctuation="~")


class Outer(containers.DeclarativeContainer):
    """A container holding another."""

    ledger = providers.Singleton(Ledger)
    inner = providers.Container(Inner)


class TwoGreeters(containers.DeclarativeContainer):
    """Two providers of one type: resolving by type is ambiguous."""

    greeter = providers.Factory(Greeter, punctuation="!")
    loud_greeter = providers.Factory(Greeter, punctuation="!!!")
    sync_greeter = providers.Resource(make_greeter)


# --- get_required_service -----------------------------------------------------------------


def test_get_required_service_resolves_a_factory_by_type() -> None:
    """A Factory is found by the class it builds, and builds a fresh instance each time."""
    services = ServiceProvider(Services())
    first = services.get_required_service(Greeter)
    assert isinstance(first, Greeter) and first.greet("x") == "hello x."
    assert services.get_required_service(Greeter) is not first


def test_get_required_service_resolves_a_singleton_by_type() -> None:
    """A Singleton is found by its class and is the same instance every time."""
    services = ServiceProvider(Services())
    assert services.get_required_service(Ledger) is services.get_required_service(Ledger)


def test_get_required_service_matches_a_provider_of_a_subclass() -> None:
    """Asking for a base class finds the one provider of a subclass."""
    assert isinstance(ServiceProvider(Services()).get_required_service(Base), Derived)


async def test_get_required_service_resolves_an_async_resource_by_its_yield_type() -> None:
    """An async-generator Resource is found by the type its annotation yields; await it."""
    container = Services()
    resolved = ServiceProvider(container).get_required_service(Connection)
    assert isinstance(await resolved, Connection)  # type: ignore[misc]
    await shutdown_resources(container)


def test_get_required_service_looks_inside_nested_containers() -> None:
    """Providers of a nested container are found by type as well."""
    greeter = ServiceProvider(Outer()).get_required_service(Greeter)
    assert greeter.greet("x") == "hello x~"


def test_get_required_service_raises_when_nothing_provides_the_type() -> None:
    """A type nothing is known to provide raises ServiceNotFoundError naming it and the fix."""
    with pytest.raises(ServiceNotFoundError) as caught:
        ServiceProvider(Services()).get_required_service(Unprovided)
    message = str(caught.value)
    assert "no provider in the container provides Unprovided" in message
    assert "providers.Singleton(Unprovided" in message
    assert isinstance(caught.value, LookupError)


def test_get_required_service_raises_when_several_provide_the_type() -> None:
    """Several providers for a type raise ServiceNotFoundError naming each of them."""
    container = TwoGreeters()
    with pytest.raises(ServiceNotFoundError) as caught:
        ServiceProvider(container).get_required_service(Greeter)
    assert "several providers provide Greeter: greeter, loud_greeter, sync_greeter" in str(
        caught.value
    )
    container.shutdown_resources()


# --- attribute access ---------------------------------------------------------------------


def test_attribute_access_passes_through_to_the_container() -> None:
    """Providers are reachable as attributes, so idiomatic dependency-injector code works."""
    container = Services()
    services = ServiceProvider(container)
    assert services.container is container
    assert services.greeter is container.greeter
    assert services.ledger() is container.ledger()
    assert repr(services) == "ServiceProvider(DynamicContainer)"
    with pytest.raises(AttributeError):
        services.no_such_provider  # noqa: B018


# --- resources ----------------------------------------------------------------------------


async def test_per_run_resources_are_opened_and_closed_once_per_concurrent_run() -> None:
    """Three concurrent runs each get their own ContextLocalResource, closed by their own run."""
    container = Container()
    ledger = container.ledger()
    all_open = asyncio.Event()

    async def run() -> Session:
        session: Session = await container.session()
        assert await container.session() is session  # one per run, however often asked
        if len(ledger.values("session opened")) == 3:
            all_open.set()
        await all_open.wait()  # the three are open at the same time
        assert not session.closed
        await close_run_resources(container)
        assert session.closed
        return session

    runs = [asyncio.create_task(run()) for _ in range(3)]
    sessions = await asyncio.wait_for(asyncio.gather(*runs), timeout=5)

    assert len({id(session) for session in sessions}) == 3
    assert ledger.values("session opened") == list(sessions)
    assert sorted(map(id, ledger.values("session closed"))) == sorted(map(id, sessions))
    assert ledger.values("connection opened") == []  # the shared resource was never touched


async def test_shared_resource_is_opened_once_by_init_and_closed_by_shutdown() -> None:
    """init_resources opens a shared Resource once (not per-run ones); shutdown closes it."""
    container = Container()
    ledger = container.ledger()

    await init_resources(container)
    connections = await asyncio.gather(*(container.connection() for _ in range(3)))
    assert ledger.values("connection opened") == [connections[0]]
    assert all(connection is connections[0] for connection in connections)
    assert ledger.values("session opened") == []

    await close_run_resources(container)
    assert ledger.values("connection closed") == []  # a run ending leaves it open

    await shutdown_resources(container)
    assert ledger.values("connection closed") == [connections[0]]


# --- through the scheduler ----------------------------------------------------------------


async def _run_one(
    container: Container, module: str, job: str, data: dict[str, object] | None = None
) -> list[EventKind]:
    """Schedule one interval task of ``job``, run its first occurrence, and stop."""
    clock = ManualClock()
    scheduler = BackgroundTaskScheduler.configure(
        container=container, modules=[module], clock=clock, run_worker=False
    )
    async with scheduler:
        await scheduler.bus.schedule_task(
            RecurrentTaskDescriptor(id="task-1", name=job, data=data or {}, interval=60)
        )
        clock.advance(seconds=60)
        events = await run_due(scheduler)
    return [event.kind for event in events]


async def test_configure_receives_the_container_and_resolves_services_by_type() -> None:
    """A job's configure(service_provider=...) gets the container; get_required_service works."""
    container = Container()
    kinds = await _run_one(
        container, "tests.fixtures.di_jobs", "ServiceProviderJob", {"who": "bob"}
    )
    assert kinds == [EventKind.STARTED, EventKind.SUCCEEDED]
    ledger = container.ledger()
    [provider] = ledger.values("service_provider")
    assert isinstance(provider, ServiceProvider)
    assert provider.container is container
    assert ledger.values("greeting") == ["hello bob!"]


async def test_inject_and_provide_work_in_a_scanned_job_module() -> None:
    """The scheduler wires the scanned modules, so @inject/Provide[...] resolve in jobs."""
    container = Container()
    kinds = await _run_one(container, "tests.fixtures.di_jobs", "InjectedJob")
    assert kinds == [EventKind.STARTED, EventKind.SUCCEEDED]
    assert container.ledger().values("injected greeting") == ["hello wired!"]


async def test_inject_works_in_a_submodule_of_a_scanned_package() -> None:
    """Wiring reaches every module the scan reaches, not only the package named."""
    container = Container()
    kinds = await _run_one(container, "tests.fixtures.di_pkg", "NestedInjectedJob")
    assert kinds == [EventKind.STARTED, EventKind.SUCCEEDED]
    assert container.ledger().values("nested greeting") == ["hello nested!"]


async def test_a_run_gets_its_own_session_and_the_process_one_connection() -> None:
    """Per-run resources open and close around each run; shared ones span the scheduler."""
    container = Container()
    kinds = await _run_one(container, "tests.fixtures.di_jobs", "SessionJob")
    assert kinds == [EventKind.STARTED, EventKind.SUCCEEDED]
    entries = [what for what, _ in container.ledger().entries]
    assert entries == [
        "connection opened",
        "session opened",
        "session used",
        "session closed",
        "connection closed",
    ]
    [(session, closed_while_used)] = container.ledger().values("session used")
    assert closed_while_used is False and session.closed
