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
    """One import statement: the module it names, where it is, on which line, and the
    names it takes from the module (``from module import a, b``; none for ``import x``)."""

    module: str
    path: str
    line: int
    names: tuple[str, ...] = ()

    def __str__(self) -> str:
        taken = f" ({', '.join(self.names)})" if self.names else ""
        return f"{self.path}:{self.line} imports {self.module}{taken}"


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
            names = tuple(alias.name for alias in node.names)
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module or ""]).rstrip(".")
                yield Import(module, where, node.lineno, names)
            else:
                yield Import(node.module or "", where, node.lineno, names)
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
    # The PostgreSQL driver: the PostgreSQL store and its private helpers only.
    "asyncpg": lambda path: (
        _is("cml_jobs/stores/postgres.py")(path) or _under("cml_jobs/stores/_pg_")(path)
    ),
    "dependency_injector": lambda path: (
        _is("cml_jobs/_di.py")(path) or _is("cml_jobs/monitoring/_container.py")(path)
    ),
    "opentelemetry": _is("cml_jobs/_telemetry.py"),
    "aiobotocore": _under("cml_jobs/monitoring/"),
    # `cml-jobs migrate apscheduler` reads APScheduler 3 job stores through APScheduler's
    # own classes, which unpickle the jobs of the store they are pointed at: they, and the
    # SQL driver they use, stay inside the migration package (docs/guides/migrating-...).
    "apscheduler": _under("cml_jobs/_migrate/"),
    "sqlalchemy": _under("cml_jobs/_migrate/"),
    # The command line and the dashboard (the web extra) are edges of their own.
    "click": _under("cml_jobs/cli/"),
    "starlette": lambda path: _under("cml_jobs/web/")(path) or _is("cml_jobs/cli/_web.py")(path),
    "jinja2": _under("cml_jobs/web/"),
    "uvicorn": _is("cml_jobs/cli/_web.py"),
    "botocore": _under("cml_jobs/monitoring/"),
}
UNSAFE_SERIALIZERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve"}


def test_the_import_walk_sees_the_known_imports() -> None:
    """The walk finds imports the boundary tests rely on (so an empty walk cannot pass)."""
    seen = {(found.path, _top(found.module)) for found in _all_imports()}
    assert ("cml_jobs/_di.py", "dependency_injector") in seen
    assert ("cml_jobs/_telemetry.py", "opentelemetry") in seen
    assert ("cml_jobs/stores/redis.py", "redis") in seen
    assert ("cml_jobs/stores/postgres.py", "asyncpg") in seen
    assert ("cml_jobs/_migrate/_load.py", "apscheduler") in seen
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
    """``import cml_jobs`` stays light: arq, redis, fakeredis, asyncpg, click and the
    dashboard's web stack load only when used."""
    loaded = ("arq", "redis", "fakeredis", "asyncpg", "click", "starlette", "jinja2")
    probe = f"import sys, cml_jobs; print(*(name in sys.modules for name in {loaded!r}))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == ["False"] * len(loaded), result.stderr


def test_the_command_line_loads_no_web_stack() -> None:
    """``cml-jobs tasks`` and friends work without the web extra: importing the command
    line imports neither starlette nor jinja2 nor uvicorn."""
    probe = (
        "import sys, cml_jobs.cli; "
        "print(*(name in sys.modules for name in ('starlette', 'jinja2', 'uvicorn')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == ["False", "False", "False"], result.stderr


def test_a_worker_on_redis_does_not_load_the_postgresql_driver() -> None:
    """asyncpg is loaded only by a process that keeps its tasks in PostgreSQL."""
    probe = "import sys, cml_jobs.worker, cml_jobs.stores; print('asyncpg' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == ["False"], result.stderr


def test_importing_cml_jobs_events_imports_no_redis() -> None:
    """``cml_jobs.events`` gives ``TaskEvent`` without redis; the stream reader loads it."""
    probe = (
        "import sys, cml_jobs.events as events; before = 'redis' in sys.modules; "
        "events.EventStream; print(before, 'redis' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == ["False", "True"], result.stderr


# Layers inside cml_jobs. "Private" is any dotted part, or imported name, that starts with
# an underscore: cml_jobs._bus, cml_jobs.stores._base, `from cml_jobs import _bus`.
PUBLIC_STORE_MODULES = {
    "cml_jobs.stores",
    "cml_jobs.stores.redis",
    "cml_jobs.stores.memory",
    "cml_jobs.stores.postgres",
}


def _is_private(found: Import) -> bool:
    parts = found.module.split(".")[1:]
    return any(part.startswith("_") for part in [*parts, *found.names])


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(f"{package}.")


def _monitoring_reaches_inside(found: Import) -> bool:
    """monitoring/ is an app built on cml-jobs: it uses the public API, as users do."""
    return (
        found.path.startswith("cml_jobs/monitoring/")
        and _inside(found.module, "cml_jobs")
        and not _inside(found.module, "cml_jobs.monitoring")
        and _is_private(found)
    )


def _worker_reaches_into_stores(found: Import) -> bool:
    """The worker uses the stores through their public modules only."""
    return (
        found.path.startswith("cml_jobs/worker/")
        and _inside(found.module, "cml_jobs.stores")
        and (found.module not in PUBLIC_STORE_MODULES or _is_private(found))
    )


def _stores_import_the_worker(found: Import) -> bool:
    """The stores know nothing of the worker that uses them."""
    return found.path.startswith("cml_jobs/stores/") and (
        _inside(found.module, "cml_jobs.worker")
        or (found.module == "cml_jobs" and "worker" in found.names)
    )


def _telemetry_reads_store_records(found: Import) -> bool:
    """Telemetry knows runs and their outcomes, not how a store keeps them."""
    return found.path == "cml_jobs/_telemetry.py" and _inside(found.module, "cml_jobs.stores")


LAYER_RULES: dict[str, Callable[[Import], bool]] = {
    "monitoring imports only the public API": _monitoring_reaches_inside,
    "worker imports only public stores modules": _worker_reaches_into_stores,
    "stores import nothing from the worker": _stores_import_the_worker,
    "telemetry imports nothing from the stores": _telemetry_reads_store_records,
}


@pytest.mark.parametrize("rule", sorted(LAYER_RULES))
def test_layers_import_each_other_only_through_public_modules(rule: str) -> None:
    """No import in cml_jobs crosses a layer through a private module or name."""
    crossings = [str(found) for found in _all_imports() if LAYER_RULES[rule](found)]
    assert crossings == []


@pytest.mark.parametrize(
    ("found", "broken"),
    [
        (Import("cml_jobs._bus", "cml_jobs/monitoring/_scheduler.py", 1), True),
        (Import("cml_jobs", "cml_jobs/monitoring/_job.py", 1, ("_registry",)), True),
        (Import("cml_jobs.stores._base", "cml_jobs/monitoring/_job.py", 1), True),
        (Import("cml_jobs.stores", "cml_jobs/monitoring/_job.py", 1, ("_base",)), True),
        (Import("cml_jobs", "cml_jobs/monitoring/_job.py", 1, ("backgroundjob",)), False),
        (Import("cml_jobs.events", "cml_jobs/monitoring/_job.py", 1, ("TaskEvent",)), False),
        (Import("cml_jobs.monitoring._aws", "cml_jobs/monitoring/_job.py", 1), False),
        (Import("cml_jobs.stores._base", "cml_jobs/worker/_arq.py", 1), True),
        (Import("cml_jobs.stores._redis_events", "cml_jobs/worker/__init__.py", 1), True),
        (Import("cml_jobs.stores.redis", "cml_jobs/worker/_arq.py", 1, ("_EPOCH",)), True),
        (Import("cml_jobs.stores.signed", "cml_jobs/worker/_arq.py", 1), True),
        (Import("cml_jobs.stores.redis", "cml_jobs/worker/_arq.py", 1, ("redis_client",)), False),
        (Import("cml_jobs.stores", "cml_jobs/worker/_arq.py", 1, ("Run",)), False),
        (Import("cml_jobs.stores._pg_sql", "cml_jobs/worker/__init__.py", 1), True),
        (Import("cml_jobs.stores.postgres", "cml_jobs/worker/_arq.py", 1), False),
        (Import("cml_jobs.worker", "cml_jobs/stores/redis.py", 1), True),
        (Import("cml_jobs.worker._arq", "cml_jobs/stores/_redis_events.py", 1), True),
        (Import("cml_jobs", "cml_jobs/stores/redis.py", 1, ("worker",)), True),
        (Import("cml_jobs._events", "cml_jobs/stores/_redis_events.py", 1), False),
        (Import("cml_jobs.stores._base", "cml_jobs/_telemetry.py", 1, ("TaskState",)), True),
        (Import("cml_jobs._outcome", "cml_jobs/_telemetry.py", 1, ("Outcome",)), False),
    ],
    ids=str,
)
def test_the_layer_rules_catch_a_crossing(found: Import, broken: bool) -> None:
    """Each kind of crossing the layer rules exist for is caught, and public imports pass."""
    assert any(rule(found) for rule in LAYER_RULES.values()) is broken


def test_a_worker_without_a_container_does_not_load_dependency_injector() -> None:
    """dependency-injector (and what it pulls in) is loaded only by apps that give a
    container: a worker process without one stays that much smaller."""
    probe = "import sys, cml_jobs.worker; print('dependency_injector' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == ["False"]


MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 40


def _too_long(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text()
        name = path.relative_to(root.parent).as_posix()
        if len(source.splitlines()) > MAX_MODULE_LINES:
            found.append(f"{name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{name}:{node.lineno} {node.name}(): {length} lines")
    return found


def test_modules_and_functions_stay_small() -> None:
    """Every module of the package is at most 300 lines and every function at most 40
    (STYLE.md): past that, split along the data flow."""
    assert _too_long(PACKAGE) == []


def test_the_size_rule_catches_a_long_function(tmp_path: Path) -> None:
    """A function of 41 lines is reported, with its module and line."""
    package = tmp_path / "pkg"
    package.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(40))
    (package / "m.py").write_text(f"def long():\n{body}\n")
    assert _too_long(package) == ["pkg/m.py:1 long(): 41 lines"]
