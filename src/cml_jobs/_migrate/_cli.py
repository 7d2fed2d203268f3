"""What the ``migrate apscheduler`` command runs: option values in, ``MigrateOptions`` to
``run_migrate``, an exit code out. The click command (``cml_jobs.cli._migrate``) only
parses the options."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from cml_jobs._migrate._load import Source
from cml_jobs._migrate._run import EXIT_ERROR, MigrateOptions, parse_mapping, run_migrate

__all__ = ["DESCRIPTION", "run_from_values"]

DESCRIPTION = """\
Read the jobs of an APScheduler 3 job store (through APScheduler's own RedisJobStore or
SQLAlchemyJobStore), convert each to a cml-jobs task descriptor and print them as JSON.
Nothing is written unless --apply is given, and then only if every job converts (or
--skip-unconvertible). Tasks go to the store the workers use: CML_JOBS_REDIS_URL,
CML_JOBS_KEY_PREFIX, and are validated against the jobs in CML_JOBS_MODULES (or
--modules). APScheduler 3 pickles its jobs: reading them unpickles the store's data, so
point this only at a store you trust. The source store is never changed."""


def run_from_values(
    *, maps: Sequence[str], modules: str, apply: bool, skip_unconvertible: bool, **store: Any
) -> int:
    """Run ``migrate apscheduler`` from option values, whichever parser read them.

    Args:
        maps: the ``--map`` values, ``module:callable=JobName``.
        modules: the ``--modules`` value, comma-separated ("" for ``CML_JOBS_MODULES``).
        apply: ``--apply`` was given.
        skip_unconvertible: ``--skip-unconvertible`` was given.
        **store: the job store options, as ``Source`` fields.
    """
    try:
        mapping = parse_mapping(maps)
    except ValueError as exc:
        print(f"cml-jobs: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return run_migrate(
        MigrateOptions(
            source=Source(**store),
            mapping=mapping,
            apply=apply,
            skip_unconvertible=skip_unconvertible,
            modules=tuple(part.strip() for part in modules.split(",") if part.strip()),
        )
    )
