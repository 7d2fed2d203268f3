"""``@backgroundjob``, module scanning, and the registry that maps job names to classes."""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import typing
from collections.abc import Callable, Iterable, Mapping
from types import ModuleType
from typing import Any, TypeVar

from pydantic import PydanticUserError, TypeAdapter, ValidationError

from cml_jobs._descriptors import ScheduledTaskDescriptor, TaskDescriptor
from cml_jobs._imports import import_module
from cml_jobs._jobs import BackgroundJob, RecurrentBackgroundJob, ScheduledBackgroundJob, TaskType
from cml_jobs.exceptions import (
    ConfigurationError,
    DuplicateJobError,
    InvalidDescriptorError,
    InvalidTaskDataError,
    UnknownJobError,
)

__all__ = ["JobRegistry", "backgroundjob"]

J = TypeVar("J", bound=type[BackgroundJob])

_MARK = "__cml_jobs_name__"
_BASES: Mapping[str, type[BackgroundJob]] = {
    "recurrent": RecurrentBackgroundJob,
    "scheduled": ScheduledBackgroundJob,
}


def backgroundjob(task_type: TaskType = "recurrent", name: str | None = None) -> Callable[[J], J]:
    """Mark a class as a background job, to be found when its module is scanned.

    Args:
        task_type: ``"recurrent"`` for a ``RecurrentBackgroundJob`` (interval and cron
            tasks), ``"scheduled"`` for a ``ScheduledBackgroundJob`` (one-time tasks).
        name: the name descriptors use; defaults to the class name.

    Raises:
        ConfigurationError: the class does not derive from the base ``task_type`` asks for.
    """
    if task_type not in _BASES:
        raise ConfigurationError(
            f"task_type={task_type!r} is not a job type; use 'recurrent' or 'scheduled'"
        )

    def mark(cls: J) -> J:
        base = _BASES[task_type]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise ConfigurationError(
                f"@backgroundjob(task_type={task_type!r}) needs a subclass of {base.__name__}, "
                f"got {cls!r}"
            )
        setattr(cls, _MARK, name or cls.__name__)
        return cls

    return mark


def job_name(cls: type[BackgroundJob]) -> str | None:
    """The name a class was registered under with ``@backgroundjob``, or None."""
    # Read the class's own __dict__: a subclass of a marked job is not itself marked.
    value = cls.__dict__.get(_MARK)
    return value if isinstance(value, str) else None


class JobRegistry:
    """Job names mapped to job classes, filled by scanning modules."""

    def __init__(self, jobs: Iterable[type[BackgroundJob]] = ()) -> None:
        self._jobs: dict[str, type[BackgroundJob]] = {}
        for cls in jobs:
            self.register(cls)

    def __contains__(self, name: object) -> bool:
        return name in self._jobs

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def names(self) -> list[str]:
        """The registered job names, sorted."""
        return sorted(self._jobs)

    def register(self, cls: type[BackgroundJob]) -> None:
        """Add a class marked with ``@backgroundjob``.

        Raises:
            ConfigurationError: the class is not marked.
            DuplicateJobError: another class is registered under the same name.
        """
        name = job_name(cls)
        if name is None:
            raise ConfigurationError(f"{_qualname(cls)} is not decorated with @backgroundjob")
        existing = self._jobs.get(name)
        if existing is not None and existing is not cls:
            raise DuplicateJobError(
                f"two background jobs are named {name!r}: {_qualname(existing)} and "
                f"{_qualname(cls)}; give one of them @backgroundjob(name=...)"
            )
        self._jobs[name] = cls

    def scan(self, modules: Iterable[str | ModuleType]) -> None:
        """Import modules (packages recursively) and register every ``@backgroundjob``.

        Raises:
            ModuleNotFoundError: a listed module cannot be found (the message says where
                Python looked).
        """
        for module in modules:
            for found in _walk(module):
                for cls in _marked_classes(found):
                    self.register(cls)

    def get(self, name: str) -> type[BackgroundJob]:
        """The class registered under ``name``.

        Raises:
            UnknownJobError: nothing is registered under that name.
        """
        try:
            return self._jobs[name]
        except KeyError:
            known = ", ".join(repr(n) for n in self.names) or "none"
            raise UnknownJobError(
                f"no background job named {name!r} is registered (known: {known}); "
                "add its module to modules=[...]"
            ) from None

    def validate(self, descriptor: TaskDescriptor) -> type[BackgroundJob]:
        """Check that ``descriptor`` names a known job of the right type whose constructor
        takes its ``data``.

        Raises:
            UnknownJobError: the job name is not registered.
            InvalidDescriptorError: the descriptor kind does not fit the job type.
            InvalidTaskDataError: ``data`` is missing an argument, has an unexpected one,
                or has a value of the wrong type.
        """
        cls = self.get(descriptor.name)
        _check_kind(cls, descriptor)
        check_data(cls, descriptor.data)
        return cls


def check_data(cls: type[BackgroundJob], data: Mapping[str, Any]) -> None:
    """Raise ``InvalidTaskDataError`` when ``cls(**data)`` would not bind, or when a value
    does not have the type its constructor argument is annotated with.

    Values are checked strictly (``"5"`` is not an ``int``), because the job receives
    them as they are: JSON values, unconverted.
    """
    params = _params(cls)
    if cls.__init__ is object.__init__:
        problem = None if not data else f"unexpected {sorted(data)!r}"
    else:
        try:
            _signature(cls.__init__).bind(None, **data)
            problem = _type_problems(cls, data)
        except TypeError as exc:
            problem = str(exc)
    if problem is not None:
        expected = ", ".join(p.name for p in params) or "no arguments"
        raise InvalidTaskDataError(
            f"data {dict(data)!r:.200} does not fit {cls.__name__}({expected}): {problem}; "
            "data holds exactly the job's constructor arguments, as JSON values"
        )


_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


@functools.lru_cache(maxsize=1024)
def _signature(init: Any) -> inspect.Signature:
    """A constructor's signature, computed once: every claim checks data against it."""
    return inspect.signature(init)


def _params(cls: type[BackgroundJob]) -> list[inspect.Parameter]:
    return [] if cls.__init__ is object.__init__ else _init_params(cls.__init__)


def _init_params(init: Any) -> list[inspect.Parameter]:
    parameters = list(_signature(init).parameters.values())[1:]
    return [p for p in parameters if p.kind not in _VARIADIC]


def _type_problems(cls: type[BackgroundJob], data: Mapping[str, Any]) -> str | None:
    problems = []
    for name, value in data.items():
        adapter = _adapters(cls.__init__).get(name)
        if adapter is None:
            continue
        try:
            adapter.validate_python(value, strict=True)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in (name, *error["loc"]))
            problems.append(f"{where}: {error['msg']} (got {error['input']!r:.80})")
    return "; ".join(problems) or None


@functools.lru_cache(maxsize=1024)
def _adapters(init: Any) -> dict[str, TypeAdapter[Any]]:
    """A validator per annotated constructor argument, built once per job class.

    An annotation that cannot be resolved or that pydantic cannot check (a name imported
    only under TYPE_CHECKING, an arbitrary class) leaves its argument checked by name only.
    """
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # NameError, TypeError: an annotation that does not evaluate here
        return {}
    adapters: dict[str, TypeAdapter[Any]] = {}
    for param in _init_params(init):
        if param.name in hints:
            try:
                adapters[param.name] = TypeAdapter(hints[param.name])
            except PydanticUserError:  # includes PydanticSchemaGenerationError
                continue
    return adapters


def _check_kind(cls: type[BackgroundJob], descriptor: TaskDescriptor) -> None:
    one_time = isinstance(descriptor, ScheduledTaskDescriptor)
    if one_time and not issubclass(cls, ScheduledBackgroundJob):
        raise InvalidDescriptorError(
            f"job {descriptor.name!r} is a recurrent job (run_every); schedule it with "
            "RecurrentTaskDescriptor or CronTaskDescriptor, not ScheduledTaskDescriptor"
        )
    if not one_time and not issubclass(cls, RecurrentBackgroundJob):
        raise InvalidDescriptorError(
            f"job {descriptor.name!r} is a scheduled job (run_at); schedule it with "
            f"ScheduledTaskDescriptor, not {type(descriptor).__name__}"
        )


def _walk(module: str | ModuleType) -> Iterable[ModuleType]:
    root = (
        import_module(module, "listed in modules=[...] or CML_JOBS_MODULES")
        if isinstance(module, str)
        else module
    )
    yield root
    if hasattr(root, "__path__"):
        for info in pkgutil.walk_packages(root.__path__, prefix=root.__name__ + "."):
            yield importlib.import_module(info.name)


def _marked_classes(module: ModuleType) -> Iterable[type[BackgroundJob]]:
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and issubclass(value, BackgroundJob)
            and value.__module__ == module.__name__
            and job_name(value) is not None
        ):
            yield value


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
