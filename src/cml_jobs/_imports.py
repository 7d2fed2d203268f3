"""Importing what settings name: a module of jobs, or ``package.module:attribute``, with a
message that says where Python looked when it is not found."""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

__all__ = ["import_module", "load_object"]


def load_object(path: str) -> Any:
    """Import ``package.module:attribute`` (or ``package.module.attribute``)."""
    module_name, _, attribute = path.partition(":")
    if not attribute:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise ValueError(f"expected 'package.module:Name', got {path!r}")
    return getattr(import_module(module_name, f"named by {path!r}"), attribute)


def import_module(name: str, origin: str) -> ModuleType:
    """``importlib.import_module``, saying where Python looked when the module itself is
    not found (the usual cause: a worker started from another directory).

    Raises:
        ModuleNotFoundError: ``name`` cannot be found; the message says where Python
            looked, and ``origin`` where the name came from.
    """
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):
            raise  # the module exists, but something it imports does not: the traceback says
        raise ModuleNotFoundError(
            f"cannot import module {name!r} ({origin}): {exc}. Python looks in the current "
            f"directory ({os.getcwd()}) and on PYTHONPATH: start the process from the "
            "directory that holds the module, or add that directory to PYTHONPATH",
            name=exc.name,
        ) from exc
