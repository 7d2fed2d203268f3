"""``cml-jobs web``: the dashboard on its own, served by uvicorn (the ``web`` extra)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import click

from cml_jobs._scheduler import BackgroundTaskScheduler
from cml_jobs.cli._common import Target, connection_options

__all__ = ["standalone_app", "web"]


def standalone_app(target: Target, *, read_only: bool) -> Any:
    """The dashboard on ``target``, with a lifespan that starts and stops its scheduler."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from cml_jobs.web import dashboard

    scheduler = BackgroundTaskScheduler(target.settings, run_worker=False)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with scheduler:
            yield

    board = dashboard(scheduler, read_only=read_only)
    return Starlette(routes=[Mount("/", app=board)], lifespan=lifespan)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--read-only", is_flag=True, help="show tasks, refuse every action")
@connection_options
def web(target: Target, host: str, port: int, read_only: bool) -> None:
    """Serve the web dashboard (needs: pip install "cml-jobs[web]")."""
    if target.redis_url.startswith("memory://"):
        raise click.UsageError("memory:// lives inside one process; give the workers' Redis URL")
    try:
        import uvicorn
    except ImportError as exc:
        raise click.UsageError(
            f"the dashboard needs the web extra ({exc}); pip install 'cml-jobs[web]'"
        ) from exc
    uvicorn.run(standalone_app(target, read_only=read_only), host=host, port=port)
