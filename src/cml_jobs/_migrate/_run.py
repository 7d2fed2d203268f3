"""``cml-jobs migrate apscheduler``: load, convert, show, and (with ``apply``) schedule.

One entry point, ``run_migrate(options) -> exit code``, whatever parses the command line.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TextIO

from cml_jobs._config import Settings
from cml_jobs._migrate._convert import Converted, Refused, convert
from cml_jobs._migrate._load import Source
from cml_jobs._registry import JobRegistry
from cml_jobs.exceptions import CmlJobsError, TaskExistsError

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_REFUSED",
    "MigrateOptions",
    "migrate",
    "parse_mapping",
    "run_migrate",
]

EXIT_OK = 0  # every job converted (and, with apply, was scheduled), or the rest were skipped
EXIT_REFUSED = 1  # some jobs cannot be converted: nothing was written
EXIT_ERROR = 2  # the command could not run: bad options, a store that cannot be reached


@dataclass(frozen=True)
class MigrateOptions:
    """What ``cml-jobs migrate apscheduler`` was asked to do.

    Attributes:
        source: the APScheduler job store to read.
        mapping: callables (``module:qualname``) to cml-jobs job names.
        apply: schedule the tasks (False: only show them).
        skip_unconvertible: with refused jobs, still schedule the others.
        modules: job modules to validate against (default: ``CML_JOBS_MODULES``).
        environ: where ``CML_JOBS_*`` settings are read (default: ``os.environ``).
    """

    source: Source
    mapping: Mapping[str, str]
    apply: bool = False
    skip_unconvertible: bool = False
    modules: tuple[str, ...] = ()
    environ: Mapping[str, str] | None = field(default=None, repr=False)


def parse_mapping(pairs: Sequence[str]) -> dict[str, str]:
    """``["pkg.mod:func=JobName", ...]`` as a mapping of callables to job names.

    Raises:
        ValueError: a pair that is not ``module:callable=JobName``.
    """
    mapping: dict[str, str] = {}
    for pair in pairs:
        func_ref, _, name = pair.partition("=")
        module, _, attribute = func_ref.partition(":")
        if not (module and attribute and name):
            raise ValueError(
                f"--map {pair!r} is not module:callable=JobName, e.g. myapp.tasks:send_digest="
                "SendDigestJob (the callable as APScheduler stored it)"
            )
        mapping[func_ref.strip()] = name.strip()
    return mapping


def run_migrate(
    options: MigrateOptions, *, now: datetime | None = None, out: TextIO | None = None
) -> int:
    """Run the migration; print the report as JSON to ``out`` (default stdout).

    Returns:
        ``EXIT_OK``, ``EXIT_REFUSED`` (nothing written) or ``EXIT_ERROR``.
    """
    return asyncio.run(migrate(options, now=now, out=out))


async def migrate(
    options: MigrateOptions, *, now: datetime | None = None, out: TextIO | None = None
) -> int:
    """``run_migrate`` for callers already inside an event loop."""
    out = out or sys.stdout
    try:
        settings = _target_settings(options)
        jobs = await _load(options.source)
        results = _convert_all(jobs, options, settings, now or datetime.now(timezone.utc))
    except (ImportError, ValueError, CmlJobsError) as exc:
        return _fail(exc)
    refused = [r for r in results if isinstance(r, Refused)]
    converted = [r for r in results if isinstance(r, Converted)]
    write = options.apply and (not refused or options.skip_unconvertible)
    if write:
        try:
            await _schedule(settings, converted)
        except (CmlJobsError, OSError) as exc:
            _report(out, converted, refused, options, applied=False, checked=True)
            print("cml-jobs: some tasks may be written; running again is safe", file=sys.stderr)
            return _fail(exc)
    _report(out, converted, refused, options, applied=write, checked=bool(settings.modules))
    return EXIT_REFUSED if refused and not options.skip_unconvertible else EXIT_OK


async def _load(source: Source) -> list[Any]:
    from cml_jobs._migrate._load import load_jobs

    try:
        return await asyncio.to_thread(load_jobs, source)
    except ImportError as exc:  # APScheduler, or the store's driver, is not installed
        raise ImportError(f"{exc}; install the extra: pip install 'cml-jobs[apscheduler]'") from exc
    except ValueError:
        raise
    except Exception as exc:  # the driver's own errors: connection refused, bad password...
        raise ValueError(
            f"cannot read the APScheduler job store ({type(exc).__name__}: {exc}); check "
            "--redis-url / --sqlalchemy-url"
        ) from exc


def _target_settings(options: MigrateOptions) -> Settings:
    """The cml-jobs settings a worker would read, with ``modules`` if given. The app's
    container is left out: validating and writing descriptors needs none of its resources."""
    settings = Settings.from_env(options.environ)
    settings = settings.with_changes(modules=options.modules or settings.modules, container=None)
    if options.apply and settings.embedded:
        raise ValueError(
            "--apply needs the Redis your workers use: set CML_JOBS_REDIS_URL (and "
            "CML_JOBS_KEY_PREFIX if they use one)"
        )
    if options.apply and not settings.modules:
        raise ValueError(
            "--apply validates each task against its job: set CML_JOBS_MODULES or --modules"
        )
    return settings


def _convert_all(
    jobs: list[Any], options: MigrateOptions, settings: Settings, now: datetime
) -> list[Converted | Refused]:
    registry = JobRegistry()
    try:
        registry.scan(settings.modules)
    except ImportError as exc:
        raise ValueError(
            f"cannot import the job modules {list(settings.modules)!r} ({exc}); check "
            "CML_JOBS_MODULES or --modules"
        ) from exc
    results = [
        job if isinstance(job, Refused) else convert(job, options.mapping, now=now) for job in jobs
    ]
    return [_validated(result, registry) for result in results]


def _validated(result: Converted | Refused, registry: JobRegistry) -> Converted | Refused:
    """The conversion, or its refusal when the registry (if any modules) refuses it."""
    if isinstance(result, Refused) or not len(registry):
        return result
    try:
        registry.validate(result.descriptor)
    except CmlJobsError as exc:
        return Refused(result.job_id, result.func_ref, str(exc))
    return result


async def _schedule(settings: Settings, converted: list[Converted]) -> None:
    """Schedule every task, after checking that none would replace a different task."""
    from cml_jobs._scheduler import BackgroundTaskScheduler

    async with BackgroundTaskScheduler(settings, run_worker=False) as scheduler:
        existing = {task.id: task.descriptor for task in await scheduler.list_tasks()}
        clashes = [
            item.job_id
            for item in converted
            if item.job_id in existing and existing[item.job_id] != item.descriptor
        ]
        if clashes:
            raise TaskExistsError(
                f"cml-jobs already has different tasks with the ids {clashes!r}; nothing was "
                "written; cancel those tasks (or rename the APScheduler jobs) and run again"
            )
        for item in converted:
            await scheduler.bus.schedule_task(item.descriptor)
            if item.paused:
                await scheduler.bus.pause_task(item.job_id)


def _report(
    out: TextIO,
    converted: list[Converted],
    refused: list[Refused],
    options: MigrateOptions,
    *,
    applied: bool,
    checked: bool,
) -> None:
    report = {
        "applied": applied,
        "tasks": [_shown(item) for item in converted],
        "refused": [
            {"job_id": r.job_id, "callable": r.func_ref, "reason": r.reason} for r in refused
        ],
    }
    json.dump(report, out, indent=2)
    out.write("\n")
    if refused:
        what = "the others were scheduled" if applied else "nothing was written"
        print(f"cml-jobs: {len(refused)} APScheduler job(s) refused; {what}", file=sys.stderr)
    if not options.apply:
        print("cml-jobs: dry run, nothing written; pass --apply to schedule", file=sys.stderr)
    if not checked:
        print(
            "cml-jobs: no job modules (CML_JOBS_MODULES or --modules), so the descriptors "
            "were not checked against their jobs",
            file=sys.stderr,
        )


def _shown(item: Converted) -> dict[str, Any]:
    next_run = item.next_run_time.isoformat() if item.next_run_time else None
    return {
        "job_id": item.job_id,
        "callable": item.func_ref,
        "apscheduler_next_run_time": next_run,
        "paused": item.paused,
        "descriptor": item.descriptor.model_dump(mode="json"),
    }


def _fail(exc: BaseException) -> int:
    print(f"cml-jobs: {exc}", file=sys.stderr)
    return EXIT_ERROR
