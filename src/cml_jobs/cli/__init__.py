"""The ``cml-jobs`` command (also ``python -m cml_jobs``): look at and operate the tasks
your workers run, from a terminal or a script.

Every command reads where the store is from the same ``CML_JOBS_*`` variables as the
workers (``CML_JOBS_REDIS_URL``, ``CML_JOBS_KEY_PREFIX``, ``CML_JOBS_QUEUE``,
``CML_JOBS_SIGNING_KEY``), and options override them. Read commands take ``--json``.
Exit codes: 0 ok, 1 a check failed or a task was not found, 2 bad usage.

``main`` is a click group: a tool built on cml-jobs adds its own commands to it with
``main.add_command(command)``.
"""

from __future__ import annotations

import click

from cml_jobs.cli._actions import backfill, cancel, pause, resume, trigger, unpark
from cml_jobs.cli._check import check
from cml_jobs.cli._demo import demo
from cml_jobs.cli._events import events
from cml_jobs.cli._migrate import migrate_group
from cml_jobs.cli._tasks import show, tasks
from cml_jobs.cli._web import web
from cml_jobs.cli._workers import workers

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="cml-jobs", prog_name="cml-jobs", message="%(prog)s %(version)s")
def main() -> None:
    """cml-jobs: typed background jobs for asyncio apps.

    Look at and operate the scheduled tasks (also as: python -m cml_jobs). Workers run as:
    arq cml_jobs.WorkerSettings.
    """


_COMMANDS = (demo, check, tasks, show, workers, events, web, migrate_group)
_ACTIONS = (pause, resume, trigger, cancel, unpark, backfill)
for _command in (*_COMMANDS, *_ACTIONS):
    main.add_command(_command)
