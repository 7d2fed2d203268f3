"""The PostgreSQL store's tables, and the migrations that create and upgrade them.

Every table lives in one schema of its own (``cml_jobs`` by default), so several apps, or
tests, share a database without meeting. The schema's version is kept in its ``meta``
table; ``migrate`` brings an older one up to ``SCHEMA_VERSION`` under an advisory lock
(processes starting together migrate once), and refuses a newer one: code older than its
database must not write rows it does not understand.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from cml_jobs.exceptions import ConfigurationError

__all__ = ["SCHEMA_VERSION", "Conn", "channel", "check_schema_name", "migrate"]

#: A connection of the store's pool, or an app's own.
Conn: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"

#: The version this code writes and reads. Add a step to ``_MIGRATIONS`` to raise it.
SCHEMA_VERSION = 2

# Each step takes the schema from the previous version to the next; {s} is the quoted schema.
#
#   tasks   one row per task; ids compare byte by byte (COLLATE "C"), as in Python.
#           ready_at is NULL when the task has no next occurrence; counts holds
#           occurrences per outcome ({"succeeded": 3, ...}).
#   runs    one row per run under way (claimed, not finished), keyed by its fence; a
#           task's runs go with it (ON DELETE CASCADE), so a fence of a removed or
#           replaced task never matches again. Fences come from one sequence: unique and
#           increasing across tasks and replacements.
#   meta    name -> value: schema_version, generation (written once with the schema).
#
# Version 2 (run history, ended tasks, extra runs, the worker registry):
#   tasks   + note; ended_at and expires_at once a task ended (kept until expires_at).
#   runs    + extra (trigger_task, backfill); waiting holds the max_instances of an extra
#           run not handed out yet (attempt 0), NULL for every other run.
#   history one row per recorded run (RunRecord JSON), newest = highest seq; trimmed to
#           history_size per task. Not tied to tasks: a task's history outlives it
#           (expires_at set) until its retention is over.
#   workers one row per registered worker (WorkerInfo JSON), until expires_at.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE {s}.tasks (
        id text COLLATE "C" PRIMARY KEY,
        descriptor text NOT NULL,
        due_at timestamptz,
        ready_at timestamptz,
        paused boolean NOT NULL DEFAULT false,
        parked text,
        last_run_at timestamptz,
        last_outcome text,
        last_error text,
        counts jsonb NOT NULL DEFAULT '{{}}',
        trace text
    );
    CREATE INDEX tasks_ready ON {s}.tasks (ready_at, id)
        WHERE NOT paused AND parked IS NULL AND ready_at IS NOT NULL;
    CREATE SEQUENCE {s}.fences;
    CREATE TABLE {s}.runs (
        fence bigint PRIMARY KEY,
        task_id text COLLATE "C" NOT NULL REFERENCES {s}.tasks (id) ON DELETE CASCADE,
        occurrence_at timestamptz NOT NULL,
        attempt integer NOT NULL,
        lease_until timestamptz NOT NULL
    );
    CREATE INDEX runs_lease ON {s}.runs (lease_until, fence);
    CREATE INDEX runs_task ON {s}.runs (task_id);
    """,
    """
    ALTER TABLE {s}.tasks ADD COLUMN note text, ADD COLUMN ended_at timestamptz,
        ADD COLUMN expires_at timestamptz;
    CREATE INDEX tasks_expiry ON {s}.tasks (expires_at) WHERE expires_at IS NOT NULL;
    ALTER TABLE {s}.runs ADD COLUMN extra boolean NOT NULL DEFAULT false,
        ADD COLUMN waiting integer;
    CREATE TABLE {s}.history (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        task_id text COLLATE "C" NOT NULL,
        body text NOT NULL,
        expires_at timestamptz
    );
    CREATE INDEX history_task ON {s}.history (task_id, seq);
    CREATE INDEX history_expiry ON {s}.history (expires_at) WHERE expires_at IS NOT NULL;
    CREATE TABLE {s}.workers (
        id text COLLATE "C" PRIMARY KEY,
        body text NOT NULL,
        expires_at timestamptz NOT NULL
    );
    """,
)

_NAME = re.compile(r"[a-z_][a-z0-9_]{0,47}")


def check_schema_name(name: str) -> str:
    """``name`` if it can name the store's schema (and its notification channel).

    Raises:
        ConfigurationError: it cannot.
    """
    if not _NAME.fullmatch(name):
        raise ConfigurationError(
            f"schema={name!r} cannot name the store's PostgreSQL schema; use lower-case "
            "letters, digits and '_' (up to 48, not starting with a digit), e.g. 'cml_jobs'"
        )
    return name


def channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel on which the store announces scheduled tasks."""
    return f"{schema}_wakeup"


async def migrate(conn: Conn, schema: str) -> int:
    """Create the schema, or upgrade it to ``SCHEMA_VERSION``; returns the version found
    (0 for none).

    Raises:
        ConfigurationError: the database holds a newer schema than this code knows.
    """
    s = f'"{check_schema_name(schema)}"'
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"cml_jobs:{schema}")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {s}.meta (name text PRIMARY KEY, value text NOT NULL)"
        )
        found = await conn.fetchval(f"SELECT value FROM {s}.meta WHERE name = 'schema_version'")
        version = int(found or 0)
        if version > SCHEMA_VERSION:
            raise ConfigurationError(
                f"the PostgreSQL schema {schema!r} is at version {version}, newer than this "
                f"cml-jobs knows ({SCHEMA_VERSION}); upgrade cml-jobs in this process (a "
                "newer version migrated the database), or point it at another schema"
            )
        for step in _MIGRATIONS[version:]:
            await conn.execute(step.format(s=s))
        await conn.execute(
            f"INSERT INTO {s}.meta (name, value) VALUES ('schema_version', $1), "
            "('generation', $2) ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value "
            "WHERE EXCLUDED.name = 'schema_version'",
            str(SCHEMA_VERSION),
            uuid.uuid4().hex,
        )
    return version
