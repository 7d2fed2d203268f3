"""Worker settings from the environment, checked against the README's settings table.

The table in README.md ("Worker settings") is the specification: every variable it lists
is read by ``arq cml_jobs.WorkerSettings`` (built by ``cml_jobs.worker_settings()``), has
the default the table states, and a bad value is refused with an error that names the
variable and the value.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import cml_jobs
from cml_jobs import ConfigurationError, Settings
from tests.fixtures.recording import Container

ROOT = Path(__file__).resolve().parent.parent
_ROW = re.compile(r"^\| `(CML_JOBS_[A-Z_]+)` \| (.+) \| (.+) \|$")


def readme_table() -> dict[str, str]:
    """The README's settings table: variable -> its default, as written."""
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        found = _ROW.match(line)
        if found:
            rows[found[1]] = found[3].strip().strip("`")
    return rows


TABLE = readme_table()

#: The setting each variable sets, and how the README writes its default.
FIELDS: dict[str, str] = {
    "CML_JOBS_REDIS_URL": "redis_url",
    "CML_JOBS_STORE_URL": "store_url",
    "CML_JOBS_MODULES": "modules",
    "CML_JOBS_CONTAINER": "container",
    "CML_JOBS_KEY_PREFIX": "key_prefix",
    "CML_JOBS_QUEUE": "queue_name",
    "CML_JOBS_MAX_JOBS": "max_jobs",
    "CML_JOBS_POLL_INTERVAL": "poll_interval",
    "CML_JOBS_DISPATCH": "dispatch",
    "CML_JOBS_QUEUE_POLL_DELAY": "queue_poll_delay",
    "CML_JOBS_LEASE": "lease",
    "CML_JOBS_BATCH_SIZE": "batch_size",
    "CML_JOBS_UNKNOWN_JOB_GRACE": "unknown_job_grace",
    "CML_JOBS_SIGNING_KEY": "signing_key",
    "CML_JOBS_DRAIN_TIMEOUT": "drain_timeout",
    "CML_JOBS_HISTORY_SIZE": "history_size",
    "CML_JOBS_HISTORY_RETENTION": "history_retention",
}


def documented_default(variable: str) -> Any:
    """The README's default for ``variable``, as the value the setting holds."""
    text = TABLE[variable]
    field = FIELDS[variable]
    if text in ("none", "off"):
        return () if field == "modules" else None
    if isinstance(getattr(Settings(), field), timedelta):
        return timedelta(seconds=float(text))
    if isinstance(getattr(Settings(), field), int):
        return int(text)
    return text


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No CML_JOBS_* variable set, as on a fresh host."""
    import os

    for name in list(os.environ):
        if name.startswith("CML_JOBS_"):
            monkeypatch.delenv(name)
    return monkeypatch


def worker() -> Any:
    """What ``arq cml_jobs.WorkerSettings`` gets: settings read from the environment now."""
    return cml_jobs.worker_settings()


def test_the_readme_table_lists_every_variable_the_package_reads() -> None:
    """Every CML_JOBS_* variable named in the source is in the README table, and back."""
    source = "\n".join(path.read_text() for path in (ROOT / "src" / "cml_jobs").rglob("*.py"))
    read = set(re.findall(r"\bCML_JOBS_[A-Z]+(?:_[A-Z]+)*\b", source))
    assert read == set(TABLE) == set(FIELDS)


@pytest.mark.parametrize("variable", sorted(FIELDS))
def test_each_setting_defaults_to_the_value_the_readme_states(
    clean_env: pytest.MonkeyPatch, variable: str
) -> None:
    """With no variable set, a worker's setting is the README's default."""
    settings = worker().cml_jobs_settings
    assert getattr(settings, FIELDS[variable]) == documented_default(variable)


def test_the_arq_side_of_the_defaults_matches_the_readme(clean_env: pytest.MonkeyPatch) -> None:
    """arq itself is given the documented queue, concurrency, poll delay, drain and Redis."""
    settings = worker()
    assert settings.queue_name == TABLE["CML_JOBS_QUEUE"]
    assert settings.max_jobs == int(TABLE["CML_JOBS_MAX_JOBS"])
    assert settings.poll_delay == float(TABLE["CML_JOBS_QUEUE_POLL_DELAY"])
    assert settings.job_completion_wait == float(TABLE["CML_JOBS_DRAIN_TIMEOUT"])
    redis = settings.redis_settings
    assert (redis.host, redis.port, redis.database) == ("localhost", 6379, 0)
    assert TABLE["CML_JOBS_REDIS_URL"] == "redis://localhost:6379/0"


#: variable -> (value in the environment, the setting it must give).
FROM_ENV: dict[str, tuple[str, Any]] = {
    "CML_JOBS_REDIS_URL": ("redis://10.1.2.3:6380/4", "redis://10.1.2.3:6380/4"),
    "CML_JOBS_STORE_URL": ("postgresql://app@db:5432/app", "postgresql://app@db:5432/app"),
    "CML_JOBS_MODULES": ("app.jobs, app.more_jobs ,", ("app.jobs", "app.more_jobs")),
    "CML_JOBS_CONTAINER": ("tests.fixtures.recording:Container", Container),
    "CML_JOBS_KEY_PREFIX": ("app1:", "app1:"),
    "CML_JOBS_QUEUE": ("app1:queue", "app1:queue"),
    "CML_JOBS_MAX_JOBS": ("7", 7),
    "CML_JOBS_POLL_INTERVAL": ("0.25", timedelta(milliseconds=250)),
    "CML_JOBS_DISPATCH": ("queue", "queue"),
    "CML_JOBS_QUEUE_POLL_DELAY": ("0.05", timedelta(milliseconds=50)),
    "CML_JOBS_LEASE": ("12", timedelta(seconds=12)),
    "CML_JOBS_BATCH_SIZE": ("9", 9),
    "CML_JOBS_UNKNOWN_JOB_GRACE": ("45", timedelta(seconds=45)),
    "CML_JOBS_SIGNING_KEY": ("k3y-from-a-secret-store", "k3y-from-a-secret-store"),
    "CML_JOBS_DRAIN_TIMEOUT": ("7.5", timedelta(seconds=7.5)),
    "CML_JOBS_HISTORY_SIZE": ("20", 20),
    "CML_JOBS_HISTORY_RETENTION": ("3600", timedelta(hours=1)),
}


def test_every_variable_in_the_table_has_a_case_below() -> None:
    """A variable added to the README without a test here fails this test."""
    assert set(FROM_ENV) == set(TABLE)


@pytest.mark.parametrize("variable", sorted(FROM_ENV))
def test_each_variable_is_read_from_the_environment(
    clean_env: pytest.MonkeyPatch, variable: str
) -> None:
    """Setting the variable (alone) changes that setting of the worker, and only that one."""
    raw, expected = FROM_ENV[variable]
    clean_env.setenv(variable, raw)
    settings = worker().cml_jobs_settings
    value = getattr(settings, FIELDS[variable])
    if isinstance(expected, type):
        assert value is not expected and hasattr(value, "recorder")  # an instance of it
    else:
        assert value == expected
    for other, field in FIELDS.items():
        if other != variable:
            assert getattr(settings, field) == documented_default(other), other


def test_arq_is_given_the_values_read_from_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    """The queue, concurrency, poll delay, drain and Redis that arq runs with follow the
    variables."""
    for variable in (
        "CML_JOBS_REDIS_URL",
        "CML_JOBS_QUEUE",
        "CML_JOBS_MAX_JOBS",
        "CML_JOBS_QUEUE_POLL_DELAY",
        "CML_JOBS_DRAIN_TIMEOUT",
    ):
        clean_env.setenv(variable, FROM_ENV[variable][0])
    settings = worker()
    assert settings.queue_name == "app1:queue"
    assert settings.max_jobs == 7
    assert settings.poll_delay == 0.05
    assert settings.job_completion_wait == 7  # arq takes whole seconds
    redis = settings.redis_settings
    assert (redis.host, redis.port, redis.database) == ("10.1.2.3", 6380, 4)


def test_a_unix_socket_url_is_accepted_from_the_environment(
    clean_env: pytest.MonkeyPatch,
) -> None:
    """CML_JOBS_REDIS_URL=unix://...?db=N connects arq to that socket and database."""
    clean_env.setenv("CML_JOBS_REDIS_URL", "unix:///run/redis/redis.sock?db=2")
    redis = worker().redis_settings
    assert (redis.unix_socket_path, redis.database) == ("/run/redis/redis.sock", 2)


def test_an_empty_variable_counts_as_unset(clean_env: pytest.MonkeyPatch) -> None:
    """VAR= (empty, as env files often leave them) keeps the default."""
    clean_env.setenv("CML_JOBS_MAX_JOBS", "")
    clean_env.setenv("CML_JOBS_KEY_PREFIX", "")
    settings = worker().cml_jobs_settings
    assert (settings.max_jobs, settings.key_prefix) == (50, "cml:")


@pytest.mark.parametrize(
    ("variable", "bad"),
    [
        ("CML_JOBS_MAX_JOBS", "lots"),
        ("CML_JOBS_MAX_JOBS", "0"),
        ("CML_JOBS_MAX_JOBS", "-3"),
        ("CML_JOBS_MAX_JOBS", "2.5"),
        ("CML_JOBS_BATCH_SIZE", "0"),
        ("CML_JOBS_BATCH_SIZE", "many"),
        ("CML_JOBS_POLL_INTERVAL", "soon"),
        ("CML_JOBS_POLL_INTERVAL", "0"),
        ("CML_JOBS_POLL_INTERVAL", "inf"),
        ("CML_JOBS_POLL_INTERVAL", "nan"),
        ("CML_JOBS_QUEUE_POLL_DELAY", "-0.5"),
        ("CML_JOBS_LEASE", "30s"),
        ("CML_JOBS_LEASE", "1e400"),
        ("CML_JOBS_UNKNOWN_JOB_GRACE", "-5"),
        ("CML_JOBS_DRAIN_TIMEOUT", "forever"),
        ("CML_JOBS_DISPATCH", "carrier-pigeon"),
        ("CML_JOBS_CONTAINER", "no_such_module_for_cml_jobs:Container"),
        ("CML_JOBS_CONTAINER", "tests.fixtures.recording:NoSuchContainer"),
        ("CML_JOBS_CONTAINER", "Container"),
        ("CML_JOBS_REDIS_URL", "localhost:6379"),
        ("CML_JOBS_REDIS_URL", "http://localhost:6379/0"),
        ("CML_JOBS_REDIS_URL", "postgresql://localhost:5432/app"),
        ("CML_JOBS_STORE_URL", "mysql://localhost:3306/app"),
        ("CML_JOBS_STORE_URL", "localhost:5432"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable_and_the_value(variable: str, bad: str) -> None:
    """Settings.from_env raises ConfigurationError with the variable and the value in it."""
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env({variable: bad})
    assert variable in str(raised.value)
    assert repr(bad) in str(raised.value)


def test_a_bad_redis_url_is_refused_without_showing_its_password() -> None:
    """The error names the variable and the URL, with the password hidden."""
    with pytest.raises(ConfigurationError, match="CML_JOBS_REDIS_URL") as raised:
        Settings.from_env({"CML_JOBS_REDIS_URL": "https://app:s3cr3t@redis.internal:6379/0"})
    assert "s3cr3t" not in str(raised.value)
    assert "app:***@redis.internal" in str(raised.value)


def test_the_worker_refuses_a_bad_environment_at_start(clean_env: pytest.MonkeyPatch) -> None:
    """``arq cml_jobs.WorkerSettings`` fails at once on a bad variable, naming it."""
    clean_env.setenv("CML_JOBS_LEASE", "a while")
    with pytest.raises(ConfigurationError, match="CML_JOBS_LEASE='a while'"):
        worker()


@pytest.mark.parametrize(
    ("changes", "kind"),
    [
        ({}, "memory"),
        ({"redis_url": "redis://cache:6379/0"}, "redis"),
        ({"redis_url": "unix:///run/redis.sock"}, "redis"),
        ({"store_url": "postgresql://app@db:5432/app"}, "postgresql"),
        ({"redis_url": "redis://r:6379/0", "store_url": "postgres://db/app"}, "postgresql"),
    ],
)
def test_the_store_is_store_url_else_redis_url(changes: dict[str, str], kind: str) -> None:
    """store_url names the store when set; otherwise redis_url does (memory:// embedded)."""
    settings = Settings().with_changes(**changes)
    assert settings.store_kind == kind
    assert settings.embedded is (kind == "memory")
    assert settings.store_location == changes.get("store_url", settings.redis_url)


def test_a_worker_on_postgresql_still_needs_a_redis_for_arq(clean_env: pytest.MonkeyPatch) -> None:
    """Tasks kept in PostgreSQL do not spare arq its Redis: memory:// is refused, with why."""
    with pytest.raises(ConfigurationError, match="for arq, even with its tasks in PostgreSQL"):
        cml_jobs.worker_settings(redis_url="memory://", store_url="postgresql://app@db:5432/app")


def test_the_store_url_password_is_never_shown() -> None:
    """repr(Settings) hides the password of store_url, as of redis_url."""
    shown = repr(Settings(store_url="postgresql://app:s3cr3t@db:5432/app"))
    assert "s3cr3t" not in shown and "app:***@db" in shown


def test_a_worker_refuses_tasks_kept_in_memory_beside_a_real_redis(
    clean_env: pytest.MonkeyPatch,
) -> None:
    """store_url="memory://" cannot be shared by a worker process: refused, saying why."""
    with pytest.raises(ConfigurationError, match="cannot share"):
        cml_jobs.worker_settings(redis_url="redis://localhost:6379/0", store_url="memory://")
