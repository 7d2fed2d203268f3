"""The package root is the API: ``__all__`` is exactly what it exposes, sorted, documented."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

import cml_jobs

# Imported by cml_jobs/__init__.py for its own use, not part of the API.
NOT_API = {"annotations", "TYPE_CHECKING", "Any"}
# Built on first access by the module's __getattr__, so absent from vars() until then.
LAZY = {"ServiceProvider", "WorkerSettings", "worker_settings"}
# Built at run time by type() from the environment; documented in cml_jobs/__init__.py.
DOCUMENTED_IN_SOURCE_ONLY = {"WorkerSettings"}
PUBLIC_MODULES = [
    "cml_jobs",
    "cml_jobs.cli",
    "cml_jobs.events",
    "cml_jobs.exceptions",
    "cml_jobs.stores",
    "cml_jobs.testing",
    "cml_jobs.web",
]


@pytest.fixture
def worker_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A Redis URL in the environment, so that ``cml_jobs.WorkerSettings`` can be built;
    the built class is dropped afterwards so no other test sees this environment's."""
    monkeypatch.setenv("CML_JOBS_REDIS_URL", "redis://127.0.0.1:6379/15")
    namespace = vars(cml_jobs)
    saved = namespace.pop("WorkerSettings", None)
    yield
    namespace.pop("WorkerSettings", None)
    if saved is not None:
        namespace["WorkerSettings"] = saved


def ruff_sort_key(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 keeps ``__all__`` in: CONSTANTS, then Classes, then functions."""
    if name.isupper():
        return 0, name
    return (1 if name[:1].isupper() else 2), name


def test_all_equals_the_public_names_of_the_package() -> None:
    """Every public name the package root defines is in __all__, and nothing else is."""
    exposed = {
        name
        for name, value in vars(cml_jobs).items()
        if not name.startswith("_") and not isinstance(value, ModuleType) and name not in NOT_API
    }
    assert set(cml_jobs.__all__) == exposed | LAZY
    assert len(cml_jobs.__all__) == len(set(cml_jobs.__all__))


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_all_is_sorted(module_name: str) -> None:
    """__all__ is sorted (constants, classes, functions), so diffs and reviews stay simple."""
    names = importlib.import_module(module_name).__all__
    assert names == sorted(names, key=ruff_sort_key)


@pytest.mark.usefixtures("worker_environment")
@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_name_in_all_is_importable(module_name: str) -> None:
    """``from <module> import <name>`` works for every name in __all__, lazy ones included."""
    module = importlib.import_module(module_name)
    for name in module.__all__:
        namespace: dict[str, Any] = {}
        exec(f"from {module_name} import {name}", namespace)
        assert namespace[name] is getattr(module, name)


@pytest.mark.usefixtures("worker_environment")
@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_class_and_function_has_a_docstring(module_name: str) -> None:
    """Each class and function in __all__ has its own docstring, for the reference docs."""
    module = importlib.import_module(module_name)
    undocumented = [
        name
        for name in module.__all__
        if _is_class_or_function(getattr(module, name))
        and name not in DOCUMENTED_IN_SOURCE_ONLY
        and not (getattr(module, name).__doc__ or "").strip()
    ]
    assert undocumented == []


def test_every_public_method_of_the_root_classes_has_a_docstring() -> None:
    """Public methods and properties of the classes at the package root are documented."""
    undocumented = []
    for name in cml_jobs.__all__:
        value = getattr(cml_jobs, name) if name not in LAZY else None
        if not inspect.isclass(value) or not value.__module__.startswith("cml_jobs"):
            continue
        for attribute, member in vars(value).items():
            function = _underlying_function(member)
            if attribute.startswith("_") or function is None:
                continue
            if not (inspect.getdoc(getattr(value, attribute)) or "").strip():
                undocumented.append(f"{name}.{attribute}")
    assert undocumented == []


def test_the_event_stream_is_still_importable_from_its_old_place() -> None:
    """``cml_jobs.worker.EventStream`` (and ``StreamEntry``) are ``cml_jobs.events``' own."""
    import cml_jobs.events
    import cml_jobs.worker

    assert cml_jobs.worker.EventStream is cml_jobs.events.EventStream
    assert cml_jobs.worker.StreamEntry is cml_jobs.events.StreamEntry
    assert cml_jobs.events.TaskEvent is cml_jobs.TaskEvent


def test_version_matches_the_installed_distribution() -> None:
    """cml_jobs.__version__ is the version the package was installed as."""
    assert cml_jobs.__version__ == importlib.metadata.version("cml-jobs")


def _is_class_or_function(value: object) -> bool:
    return inspect.isclass(value) or inspect.isfunction(value)


def _underlying_function(member: object) -> object | None:
    if isinstance(member, (classmethod, staticmethod)):
        return member.__func__
    if isinstance(member, property):
        return member.fget
    return member if inspect.isfunction(member) else None
