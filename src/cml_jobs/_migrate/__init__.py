"""Migrating from APScheduler 3: ``cml-jobs migrate apscheduler``.

The pure core (``convert``) turns one APScheduler job into a cml-jobs task descriptor or
refuses it with the reason; the loader (``load_jobs``) reads an APScheduler job store
through APScheduler's own classes; ``run_migrate`` is the command. The loader needs the
``apscheduler`` extra and is imported only when used.
"""

from __future__ import annotations

from cml_jobs._migrate._convert import END_AT_SUPPORTED, Converted, Refused, convert
from cml_jobs._migrate._load import Source
from cml_jobs._migrate._run import MigrateOptions, parse_mapping, run_migrate

__all__ = [
    "END_AT_SUPPORTED",
    "Converted",
    "MigrateOptions",
    "Refused",
    "Source",
    "convert",
    "parse_mapping",
    "run_migrate",
]
