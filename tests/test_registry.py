"""``@backgroundjob``, module scanning, and the registry's checks of a descriptor."""

from __future__ import annotations

import importlib
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from cml_jobs import (
    ConfigurationError,
    CronTaskDescriptor,
    DuplicateJobError,
    InvalidDescriptorError,
    InvalidTaskDataError,
    JobRegistry,
    RecurrentBackgroundJob,
    RecurrentTaskDescriptor,
    ScheduledBackgroundJob,
    ScheduledTaskDescriptor,
    UnknownJobError,
    backgroundjob,
)
from cml_jobs._config import Settings
from cml_jobs._registry import job_name
from tests.fixtures.jobs_pkg import RootJob
from tests.fixtures.jobs_pkg.alpha import NamedJob, OneTimeJob
from tests.fixtures.jobs_pkg.sub.beta import DeepJob

PACKAGE = "tests.fixtures.jobs_pkg"
PACKAGE_JOBS = {
    "DeepJob": DeepJob,
    "OneTimeJob": OneTimeJob,
    "RootJob": RootJob,
    "custom-name": NamedJob,
}
T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def registry() -> JobRegistry:
    """A registry filled by scanning the fixture package."""
    registry = JobRegistry()
    registry.scan([PACKAGE])
    return registry


def every(name: str, data: dict[str, Any] | None = None) -> RecurrentTaskDescriptor:
    """An interval task for job ``name``."""
    return RecurrentTaskDescriptor(id="t", name=name, data=data or {}, interval=60)


def once(name: str, data: dict[str, Any] | None = None) -> ScheduledTaskDescriptor:
    """A one-time task for job ``name``."""
    return ScheduledTaskDescriptor(id="t", name=name, data=data or {}, scheduled_at=T0)


# --- @backgroundjob -----------------------------------------------------------------------


def test_backgroundjob_marks_the_class_with_its_name_and_returns_it() -> None:
    """The decorator returns the class itself, named after it unless a name is given."""

    class Plain(RecurrentBackgroundJob):
        """A job."""

    class Custom(ScheduledBackgroundJob):
        """A job."""

    assert backgroundjob()(Plain) is Plain
    assert job_name(Plain) == "Plain"
    assert backgroundjob(task_type="scheduled", name="nightly")(Custom) is Custom
    assert job_name(Custom) == "nightly"


def test_subclass_of_a_marked_job_is_not_marked_itself() -> None:
    """Marking is not inherited: a subclass needs its own @backgroundjob."""

    class Child(NamedJob):
        """Inherits a marked job."""

    assert job_name(NamedJob) == "custom-name"
    assert job_name(Child) is None


@pytest.mark.parametrize(
    ("task_type", "base", "expected_base"),
    [
        ("scheduled", RecurrentBackgroundJob, "ScheduledBackgroundJob"),
        ("recurrent", ScheduledBackgroundJob, "RecurrentBackgroundJob"),
        ("recurrent", object, "RecurrentBackgroundJob"),
    ],
    ids=["recurrent-class-as-scheduled", "scheduled-class-as-recurrent", "not-a-job"],
)
def test_backgroundjob_refuses_a_class_of_the_wrong_base(
    task_type: Any, base: type, expected_base: str
) -> None:
    """A class that does not derive from the base its task_type asks for is refused."""
    wrong = type("WrongJob", (base,), {})
    with pytest.raises(ConfigurationError) as caught:
        backgroundjob(task_type=task_type)(wrong)
    assert expected_base in str(caught.value)
    assert repr(task_type) in str(caught.value)
    assert "WrongJob" in str(caught.value)


def test_backgroundjob_refuses_an_unknown_task_type() -> None:
    """An unknown task_type is refused at once, naming it and the valid ones."""
    with pytest.raises(ConfigurationError, match="'weekly'") as caught:
        backgroundjob(task_type="weekly")  # type: ignore[arg-type]
    assert "'recurrent'" in str(caught.value) and "'scheduled'" in str(caught.value)


# --- scanning -----------------------------------------------------------------------------


def test_scan_finds_marked_jobs_in_a_package_recursively(registry: JobRegistry) -> None:
    """Scanning a package registers the jobs of its __init__, submodules and subpackages."""
    assert registry.names == sorted(PACKAGE_JOBS)
    assert {name: registry.get(name) for name in registry.names} == PACKAGE_JOBS
    assert len(registry) == 4


def test_scan_ignores_unmarked_and_imported_classes(registry: JobRegistry) -> None:
    """Unmarked job classes, unmarked subclasses and re-imported jobs are not registered twice."""
    assert "NotMarkedJob" not in registry
    assert "SubclassOfMarkedJob" not in registry
    assert "NamedJob" not in registry  # registered under its given name only


def test_scan_accepts_module_objects_and_single_modules() -> None:
    """A module object can be scanned, and a plain module yields only its own jobs."""
    registry = JobRegistry()
    registry.scan([importlib.import_module(f"{PACKAGE}.sub.beta")])
    assert registry.names == ["DeepJob"]


def test_scanning_twice_is_harmless(registry: JobRegistry) -> None:
    """Registering the same class again under its name is not a duplicate."""
    registry.scan([PACKAGE, f"{PACKAGE}.alpha"])
    assert registry.names == sorted(PACKAGE_JOBS)


def test_scan_of_a_missing_module_raises_import_error() -> None:
    """A module name that does not exist fails loudly rather than registering nothing."""
    with pytest.raises(ImportError):
        JobRegistry().scan(["tests.fixtures.no_such_module"])


def test_a_missing_module_says_where_python_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker started outside the module's directory is told about the current directory
    and PYTHONPATH, for modules=[...] and for CML_JOBS_CONTAINER alike."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModuleNotFoundError) as caught:
        JobRegistry().scan(["quickstart_elsewhere"])
    message = str(caught.value)
    assert "cannot import module 'quickstart_elsewhere'" in message
    assert f"current directory ({tmp_path})" in message and "PYTHONPATH" in message
    assert caught.value.name == "quickstart_elsewhere"
    with pytest.raises(ConfigurationError, match=r"CML_JOBS_CONTAINER=.*PYTHONPATH"):
        Settings.from_env({"CML_JOBS_CONTAINER": "quickstart_elsewhere:Container"})


def test_a_module_whose_own_import_fails_raises_that_error_as_is(tmp_path: Path) -> None:
    """When the listed module exists but imports something missing, the error names what
    is missing, not the listed module."""
    (tmp_path / "jobs_with_a_typo.py").write_text("import no_such_dependency_xyz\n")
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(ModuleNotFoundError) as caught:
            JobRegistry().scan(["jobs_with_a_typo"])
    finally:
        sys.path.remove(str(tmp_path))
    assert caught.value.name == "no_such_dependency_xyz"
    assert "cannot import module" not in str(caught.value)


def test_duplicate_names_raise_naming_both_classes() -> None:
    """Two classes under one name are refused, and the message names both of them."""
    registry = JobRegistry()
    with pytest.raises(DuplicateJobError) as caught:
        registry.scan([PACKAGE, "tests.fixtures.duplicate_jobs"])
    message = str(caught.value)
    assert "'custom-name'" in message
    assert "tests.fixtures.jobs_pkg.alpha.NamedJob" in message
    assert "tests.fixtures.duplicate_jobs.ClashingJob" in message
    assert "@backgroundjob(name=...)" in message


def test_duplicate_is_a_configuration_error() -> None:
    """DuplicateJobError belongs to the you-used-it-wrong family."""
    from tests.fixtures.duplicate_jobs import ClashingJob

    with pytest.raises(ConfigurationError):
        JobRegistry([NamedJob, ClashingJob])


def test_registering_an_unmarked_class_is_refused() -> None:
    """Only classes marked with @backgroundjob can be registered."""
    from tests.fixtures.jobs_pkg.alpha import NotMarkedJob

    with pytest.raises(ConfigurationError, match="NotMarkedJob is not decorated"):
        JobRegistry([NotMarkedJob])


# --- lookup -------------------------------------------------------------------------------


def test_unknown_job_error_lists_the_known_names(registry: JobRegistry) -> None:
    """Looking up an unknown name says which names are known and how to add one."""
    with pytest.raises(UnknownJobError) as caught:
        registry.get("send_digest")
    message = str(caught.value)
    assert "'send_digest'" in message
    assert "known: 'DeepJob', 'OneTimeJob', 'RootJob', 'custom-name'" in message
    assert "modules=[...]" in message
    assert isinstance(caught.value, LookupError)


def test_unknown_job_error_on_an_empty_registry_says_none_is_known() -> None:
    """With nothing registered, the message says so."""
    with pytest.raises(UnknownJobError, match=r"known: none"):
        JobRegistry().get("anything")


# --- validate -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("descriptor", "job"),
    [
        (every("custom-name", {"user_id": "u1"}), NamedJob),
        (every("custom-name", {"user_id": "u1", "limit": 5}), NamedJob),
        (
            CronTaskDescriptor(
                id="t", name="custom-name", data={"user_id": "u1"}, cron="* * * * *"
            ),
            NamedJob,
        ),
        (once("OneTimeJob", {"report_id": 7}), OneTimeJob),
        (every("RootJob"), RootJob),
        (every("DeepJob", {"anything": [1, 2], "goes": None}), DeepJob),
    ],
    ids=["required", "with-optional", "cron", "one-time", "no-constructor", "var-keyword"],
)
def test_validate_accepts_data_that_fits_the_constructor(
    registry: JobRegistry, descriptor: Any, job: type
) -> None:
    """A descriptor whose kind and data fit its job validates and returns the job class."""
    assert registry.validate(descriptor) is job


@pytest.mark.parametrize(
    ("descriptor", "shown"),
    [
        pytest.param(every("custom-name"), ["'user_id'", "missing"], id="missing-argument"),
        pytest.param(
            every("custom-name", {"user_id": "u1", "colour": "red"}),
            ["'colour'", "unexpected"],
            id="unexpected-argument",
        ),
        pytest.param(
            once("OneTimeJob", {"report": 7}), ["'report'", "OneTimeJob(report_id)"], id="typo"
        ),
        pytest.param(
            every("RootJob", {"worker_id": "w1"}),
            ["['worker_id']", "RootJob(no arguments)"],
            id="job-without-constructor",
        ),
    ],
)
def test_validate_refuses_data_that_does_not_fit_naming_the_fields(
    registry: JobRegistry, descriptor: Any, shown: list[str]
) -> None:
    """Missing or unexpected constructor arguments raise InvalidTaskDataError naming them."""
    with pytest.raises(InvalidTaskDataError) as caught:
        registry.validate(descriptor)
    for text in shown:
        assert text in str(caught.value)


def test_validate_shows_the_expected_arguments(registry: JobRegistry) -> None:
    """The data error lists the arguments the job's constructor takes."""
    with pytest.raises(InvalidTaskDataError, match=r"NamedJob\(user_id, limit\)"):
        registry.validate(every("custom-name", {}))


@pytest.mark.parametrize(
    ("descriptor", "shown"),
    [
        pytest.param(
            once("custom-name", {"user_id": "u1"}),
            ["'custom-name'", "recurrent job", "ScheduledTaskDescriptor"],
            id="one-time-task-for-a-recurrent-job",
        ),
        pytest.param(
            every("OneTimeJob", {"report_id": 1}),
            ["'OneTimeJob'", "scheduled job", "RecurrentTaskDescriptor"],
            id="interval-task-for-a-one-time-job",
        ),
        pytest.param(
            CronTaskDescriptor(id="t", name="OneTimeJob", data={"report_id": 1}, cron="* * * * *"),
            ["'OneTimeJob'", "CronTaskDescriptor"],
            id="cron-task-for-a-one-time-job",
        ),
    ],
)
def test_validate_refuses_a_descriptor_kind_that_does_not_fit_the_job(
    registry: JobRegistry, descriptor: Any, shown: list[str]
) -> None:
    """A one-time descriptor for a recurrent job (or the reverse) is refused, saying which fits."""
    with pytest.raises(InvalidDescriptorError) as caught:
        registry.validate(descriptor)
    assert type(caught.value) is InvalidDescriptorError
    for text in shown:
        assert text in str(caught.value)


def test_validate_refuses_an_unknown_job(registry: JobRegistry) -> None:
    """A descriptor naming no registered job raises UnknownJobError."""
    with pytest.raises(UnknownJobError, match="'Missing'"):
        registry.validate(every("Missing"))
