"""The ``migrate apscheduler`` command line: an argparse sub-command that builds
``MigrateOptions`` and hands them to ``run_migrate``. Nothing else lives here, so another
command-line front end only has to build the same options."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from cml_jobs._migrate._load import Source
from cml_jobs._migrate._run import EXIT_ERROR, MigrateOptions, parse_mapping, run_migrate

__all__ = ["DESCRIPTION", "add_migrate_parser", "run_from_args", "run_from_values"]

DESCRIPTION = """\
Read the jobs of an APScheduler 3 job store (through APScheduler's own RedisJobStore or
SQLAlchemyJobStore), convert each to a cml-jobs task descriptor and print them as JSON.
Nothing is written unless --apply is given, and then only if every job converts (or
--skip-unconvertible). Tasks go to the store the workers use: CML_JOBS_REDIS_URL,
CML_JOBS_KEY_PREFIX, and are validated against the jobs in CML_JOBS_MODULES (or
--modules). APScheduler 3 pickles its jobs: reading them unpickles the store's data, so
point this only at a store you trust. The source store is never changed."""


def add_migrate_parser(commands: Any) -> None:
    """Add ``migrate apscheduler`` to an argparse sub-parsers object."""
    migrate = commands.add_parser("migrate", help="move scheduled jobs from another scheduler")
    sources = migrate.add_subparsers(dest="migrate_from", required=True)
    parser = sources.add_parser(
        "apscheduler", help="from an APScheduler 3 job store", description=DESCRIPTION
    )
    store = parser.add_argument_group("the APScheduler job store (one of)")
    store.add_argument("--redis-url", help="a RedisJobStore's Redis, redis://host:6379/0")
    store.add_argument("--jobs-key", default="apscheduler.jobs", help="its jobs_key")
    store.add_argument("--run-times-key", default="apscheduler.run_times", help="its run_times_key")
    store.add_argument("--sqlalchemy-url", help="an SQLAlchemyJobStore's database URL")
    store.add_argument("--tablename", default="apscheduler_jobs", help="its tablename")
    store.add_argument("--tableschema", default=None, help="its tableschema")
    parser.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="MODULE:CALLABLE=JobName",
        help="the cml-jobs job that replaces an APScheduler callable (repeatable)",
    )
    parser.add_argument("--modules", default="", help="job modules (default CML_JOBS_MODULES)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", dest="apply", action="store_false", help="only show (default)")
    mode.add_argument(
        "--apply", "--no-dry-run", dest="apply", action="store_true", help="schedule the tasks"
    )
    parser.set_defaults(apply=False)  # store_false alone would default --dry-run's dest to True
    parser.add_argument(
        "--skip-unconvertible",
        action="store_true",
        help="schedule the jobs that convert even when others are refused",
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``migrate apscheduler`` as parsed by the parser ``add_migrate_parser`` built."""
    return run_from_values(
        redis_url=args.redis_url,
        jobs_key=args.jobs_key,
        run_times_key=args.run_times_key,
        sqlalchemy_url=args.sqlalchemy_url,
        tablename=args.tablename,
        tableschema=args.tableschema,
        maps=args.map,
        modules=args.modules,
        apply=args.apply,
        skip_unconvertible=args.skip_unconvertible,
    )


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
