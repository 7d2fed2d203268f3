"""Dependency injection: the only module that imports ``dependency_injector``.

A job's ``configure(service_provider)`` receives a ``ServiceProvider``: the app's
dependency-injector container, plus ``get_required_service(Type)`` for code written
against the seed's service-provider API.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import AsyncIterator, Iterable, Iterator
from types import ModuleType
from typing import Any, TypeVar, cast

from dependency_injector import containers, providers

from cml_jobs.exceptions import ServiceNotFoundError

__all__ = ["ServiceProvider"]

T = TypeVar("T")


class ServiceProvider:
    """The container handed to ``configure``.

    Attribute access goes to the container (``service_provider.repository()``), so
    idiomatic dependency-injector code works unchanged.

    Args:
        container: a dependency-injector container instance.
    """

    def __init__(self, container: containers.Container) -> None:
        self._container = container

    @property
    def container(self) -> containers.Container:
        """The wrapped dependency-injector container."""
        return self._container

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)

    def get_required_service(self, service_type: type[T]) -> T:
        """The instance of the one provider in the container that provides ``service_type``.

        A provider matches when the type it provides is ``service_type`` or a subclass.
        For an async provider (one that depends on an async resource) the result is an
        awaitable: ``await`` it, in an ``async def configure``.

        Raises:
            ServiceNotFoundError: no provider, or more than one, provides the type.
        """
        matches = [
            (name, provider)
            for name, provider, provided in _typed_providers(self._container)
            if isinstance(provided, type) and issubclass(provided, service_type)
        ]
        if len(matches) != 1:
            raise ServiceNotFoundError(_not_found(service_type, [name for name, _ in matches]))
        return cast(T, matches[0][1]())

    def __repr__(self) -> str:
        return f"ServiceProvider({type(self._container).__name__})"


def _not_found(service_type: type, names: list[str]) -> str:
    wanted = service_type.__name__
    if names:
        return (
            f"several providers provide {wanted}: {', '.join(sorted(names))}; "
            "call the one you mean by name, e.g. service_provider.<name>()"
        )
    return (
        f"no provider in the container provides {wanted}; add one "
        f"(e.g. providers.Singleton({wanted}, ...)) or check the type asked for"
    )


def _typed_providers(container: containers.Container) -> Iterator[tuple[str, Any, Any]]:
    for name, provider in container.providers.items():
        if isinstance(provider, providers.Container):
            yield from _typed_providers(provider())
            continue
        yield name, provider, _provided_type(provider)


def _provided_type(provider: Any) -> Any:
    provides = getattr(provider, "provides", None)
    if isinstance(provides, type):
        return provides
    if not callable(provides):
        return None
    try:
        returned = typing.get_type_hints(provides).get("return")
    except Exception:  # annotations that cannot be resolved give no type, not an error
        return None
    # An async or sync generator resource yields its value: AsyncIterator[T] -> T.
    origin = typing.get_origin(returned)
    if origin is not None and issubclass(origin, (AsyncIterator, Iterator)):
        return typing.get_args(returned)[0]
    return returned


def wire(container: containers.Container, modules: Iterable[ModuleType]) -> None:
    """Make ``@inject`` and ``Provide[...]`` work in the scanned job modules."""
    # As packages: the scan reaches their submodules, and so must the wiring.
    container.wire(packages=list(modules))


async def init_resources(container: containers.Container) -> None:
    """Initialise the container's shared resources, at worker start.

    Only ``Resource`` providers: initialising ``ContextLocalResource`` here would give
    every run the same instance instead of its own.
    """
    await _maybe_await(container.init_resources(resource_type=providers.Resource))


async def shutdown_resources(container: containers.Container) -> None:
    """Close the container's resources, at worker stop."""
    await _maybe_await(container.shutdown_resources())


async def close_run_resources(container: containers.Container) -> None:
    """Close the per-run (``ContextLocalResource``) resources this run opened."""
    for provider in container.traverse(types=[providers.ContextLocalResource]):
        await _maybe_await(provider.shutdown())


async def _maybe_await(value: object) -> None:
    if inspect.isawaitable(value):
        await value
