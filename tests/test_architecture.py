"""One concern per module, and the boundary is an import: these tests read every module's
imports (module-level, deferred and TYPE_CHECKING ones alike) and fail on a crossing."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import cml_jobs

PACKAGE = Path(cml_jobs.__file__).parent
SOURCE = PACKAGE.parent  # src/, so that paths read "cml_jobs/worker/_arq.py"


@dataclass(frozen=True)
class Import:
    """One import statement: the module it names, where it is, on which line."""

    module: str
    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line} imports {self.module}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports_of(path: Path) -> Iterator[Import]:
    where = path.relative_to(SOURCE).as_posix()
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path.parent)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, where, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                yield Import(".".join([*base, node.module or ""]).rstrip("."), where, node.lineno)
            else:
                yield Import(node.module or "", where, node.lineno)
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func):
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                yield Import(first.value, where, node.lineno)


def _is_dynamic_import(func: ast.expr) -> bool:
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
    return name in ("__import__", "import_module")


def _all_imports() -> list[Import]:
    return [
        found
        for path in sorted(PACKAGE.rglob("*.py"))
        if "__pycache__" not in path.parts
        for found in _imports_of(path)
    ]


def _top(module: str) -> str:
    return module.split(".")[0]


def _under(folder: str) -> Callable[[str], bool]:
    return lambda path: path.startswith(folder)


def _is(*files: str) -> Callable[[str], bool]:
    return lambda path: path in files


# Third-party package -> where in src it may be imported.
BOUNDARIES: dict[str, Callable[[str], bool]] = {
    "arq": _under("cml_jobs/worker/"),
    # The monitoring subpackage is an app built on cml-jobs: its own container and its
    # own Redis repository are its edges.
    "redis": lambda path: (
        _is("cml_jobs/stores/redis.py")(path)
        or _under("cml_jobs/stores/_redis_")(path)
        or _under("cml_jobs/worker/")(path)
        or _is("cml_jobs/monitoring/_repository.py")(path)
    ),
    "fakeredis": _under("cml_jobs/worker/"),
    "dependency_injector": lambda path: (
        _is("cml_jobs/_di.py")(path) or _is("cml_jobs/monitoring/_container.py")(path)
    ),
    "opentelemetry": _is("cml_jobs/_telemetry.py"),
    "aiobotocore": _under("cml_jobs/monitoring/"),
    "botocore": _under("cml_jobs/monitoring/"),
}
UNSAFE_SERIALIZERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve"}


def test_the_import_walk_sees_the_known_imports() -> None:
    """The walk finds imports the boundary tests rely on (so an empty walk cannot pass)."""
    seen = {(found.path, _top(found.module)) for found in _all_imports()}
    assert ("cml_jobs/_di.py", "dependency_injector") in seen
    assert ("cml_jobs/_telemetry.py", "opentelemetry") in seen
    assert ("cml_jobs/stores/redis.py", "redis") in seen
    assert any(path.startswith("cml_jobs/worker/") and top == "arq" for path, top in seen)
    # Deferred imports inside functions count as well.
    assert ("cml_jobs/_runtime.py", "cml_jobs") in seen


@pytest.mark.parametrize("package", sorted(BOUNDARIES))
def test_third_party_package_is_imported_only_inside_its_boundary(package: str) -> None:
    """Each integration is imported only in the module or package that owns it."""
    allowed = BOUNDARIES[package]
    crossings = [
        str(found)
        for found in _all_imports()
        if _top(found.module) == package and not allowed(found.path)
    ]
    assert crossings == []


def test_no_module_imports_an_unsafe_serializer() -> None:
    """Nothing in cml-jobs imports pickle or its relatives: payloads are JSON only."""
    offenders = [str(found) for found in _all_imports() if _top(found.module) in UNSAFE_SERIALIZERS]
    assert offenders == []


def test_pickle_loads_appears_nowhere_in_the_source() -> None:
    """The text 'pickle.loads' is in no source file (code, comments, scripts) at all."""
    offenders = [
        path.relative_to(SOURCE).as_posix()
        for path in sorted(PACKAGE.rglob("*"))
        if path.is_file()
        and "__pycache__" not in path.parts
        and b"pickle.loads" in path.read_bytes()
    ]
    assert offenders == []


def test_importing_cml_jobs_imports_neither_arq_nor_redis() -> None:
    """``import cml_jobs`` stays light: arq, redis and fakeredis load only when used."""
    probe = (
        "import sys, cml_jobs; "
        "print(*(name in sys.modules for name in ('arq', 'redis', 'fakeredis')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == ["False", "False", "False"], result.stderr
