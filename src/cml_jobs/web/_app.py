"""The dashboard as an ASGI app: its settings, its routes, and the checks every request
passes (the ``authorize`` hook, read-only mode, CSRF on every POST)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from cml_jobs._bus import BackgroundTasksBus
from cml_jobs._events import EventHub
from cml_jobs._scheduler import BackgroundTaskScheduler
from cml_jobs.web._csrf import COOKIE, FIELD, CsrfTokens
from cml_jobs.web._source import Source

__all__ = ["ACTIONS", "Authorize", "Dashboard", "dashboard"]

#: What ``authorize(request, action)`` is asked about: "view" for every page and feed,
#: the action's name for every POST.
ACTIONS = ("view", "pause", "resume", "trigger", "cancel", "unpark")

Authorize = Callable[[Request, str], "bool | Awaitable[bool]"]

_TEMPLATES = Path(__file__).parent / "templates"


@dataclass
class Dashboard:
    """What every page and action of one dashboard shares."""

    source: Source
    templates: Jinja2Templates
    csrf: CsrfTokens
    read_only: bool
    authorize: Authorize | None

    async def allowed(self, request: Request, action: str) -> bool:
        """Whether the ``authorize`` hook lets this request do ``action``."""
        if self.authorize is None:
            return True
        verdict = self.authorize(request, action)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        return bool(verdict)

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        """A page, with the CSRF token its forms carry (and the cookie that matches it)."""
        token = request.cookies.get(COOKIE)
        fresh = not self.csrf.valid(token)
        if fresh:
            token = self.csrf.new()
        context.update(csrf_field=FIELD, csrf_token=token, read_only=self.read_only)
        response = self.templates.TemplateResponse(request, name, context, status_code=status)
        if fresh:
            path = request.scope.get("root_path") or "/"
            response.set_cookie(
                COOKIE, token or "", httponly=True, samesite="strict", path=path or "/"
            )
        return response

    async def refuse(self, request: Request, action: str) -> Response | None:
        """The response refusing this request, or None when it may go ahead."""
        if not await self.allowed(request, action):
            return PlainTextResponse("forbidden: not authorized", status_code=403)
        if action == "view":
            return None
        if self.read_only:
            return PlainTextResponse("forbidden: this dashboard is read-only", status_code=403)
        form = await request.form()
        submitted = form.get(FIELD)
        if not self.csrf.accepts(
            request.cookies.get(COOKIE), submitted if isinstance(submitted, str) else None
        ):
            return PlainTextResponse(
                "forbidden: missing or invalid CSRF token; reload the page and try again",
                status_code=403,
            )
        return None


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        autoescape=True,  # task ids and data are user input: everything is escaped
        undefined=jinja2.StrictUndefined,
    )
    env.filters["q"] = lambda value: quote(str(value), safe="")
    return env


def dashboard(
    scheduler_or_bus: BackgroundTaskScheduler | BackgroundTasksBus,
    *,
    read_only: bool = False,
    authorize: Authorize | None = None,
    secret: str | bytes | None = None,
    hub: EventHub | None = None,
) -> Starlette:
    """The web dashboard of cml-jobs, as an ASGI app to mount or serve.

    Example:
        ```python
        app = FastAPI(lifespan=lifespan)  # the lifespan starts the scheduler
        app.mount("/jobs", dashboard(scheduler, authorize=is_admin))
        ```

    Args:
        scheduler_or_bus: what to show and act on. A scheduler may still be unstarted:
            its bus is looked up on each request.
        read_only: hide every action, and refuse every POST with 403.
        authorize: ``authorize(request, action) -> bool`` (or an awaitable of it), asked
            for every request: ``action`` is "view" for pages and the live feed, else
            the action's name (see ``ACTIONS``). False answers 403.
        secret: the key CSRF tokens are signed with; by default a random one per
            dashboard, so forms of a previous process are refused. Give one shared by
            all replicas behind a load balancer.
        hub: live events of a bus given alone in the embedded mode (a scheduler brings
            its own; with Redis they come from the event stream).

    Returns:
        A Starlette app.
    """
    source, csrf = Source(scheduler_or_bus, hub=hub), CsrfTokens(secret)
    templates = Jinja2Templates(env=_environment())
    return _app(Dashboard(source, templates, csrf, read_only, authorize))


def _app(board: Dashboard) -> Starlette:
    from cml_jobs.web import _pages

    routes = [
        Route(path, _bind(board, handler), methods=methods, name=name)
        for path, handler, methods, name in _pages.ROUTES
    ]
    return Starlette(routes=routes)


def _bind(
    board: Dashboard, handler: Callable[[Dashboard, Request], Awaitable[Response]]
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await handler(board, request)

    return endpoint
