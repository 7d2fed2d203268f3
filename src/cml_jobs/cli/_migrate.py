"""``cml-jobs migrate apscheduler``: move the jobs of an APScheduler 3 job store over
(docs/guides/migrating-from-apscheduler.md)."""

from __future__ import annotations

import click

from cml_jobs._migrate._cli import DESCRIPTION, run_from_values

__all__ = ["apscheduler_command", "migrate_group"]


@click.group("migrate", help="Move scheduled jobs from another scheduler.")
def migrate_group() -> None:
    """``cml-jobs migrate``."""


@migrate_group.command("apscheduler", help=DESCRIPTION)
@click.option("--redis-url", help="A RedisJobStore's Redis, redis://host:6379/0.")
@click.option("--jobs-key", default="apscheduler.jobs", show_default=True)
@click.option("--run-times-key", default="apscheduler.run_times", show_default=True)
@click.option("--sqlalchemy-url", help="An SQLAlchemyJobStore's database URL.")
@click.option("--tablename", default="apscheduler_jobs", show_default=True)
@click.option("--tableschema", default=None)
@click.option(
    "--map",
    "maps",
    multiple=True,
    metavar="MODULE:CALLABLE=JobName",
    help="The cml-jobs job that replaces an APScheduler callable (repeatable).",
)
@click.option("--modules", default="", help="Job modules (default CML_JOBS_MODULES).")
@click.option("--apply/--dry-run", default=False, help="Schedule the tasks (default: only show).")
@click.option("--no-dry-run", is_flag=True, hidden=True, help="Same as --apply.")
@click.option("--skip-unconvertible", is_flag=True, help="Schedule what converts anyway.")
@click.pass_context
def apscheduler_command(
    context: click.Context, /, apply: bool, no_dry_run: bool, **values: object
) -> None:
    """``cml-jobs migrate apscheduler``; exits with ``run_migrate``'s status."""
    context.exit(run_from_values(apply=apply or no_dry_run, **values))  # type: ignore[arg-type]
