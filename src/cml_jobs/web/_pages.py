"""The dashboard's pages, its live feed and its actions."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse

from cml_jobs import _views
from cml_jobs._bus import BackgroundTasksBus, TaskInfo
from cml_jobs.exceptions import CmlJobsError, ConfigurationError, TaskNotFoundError
from cml_jobs.web._app import Dashboard
from cml_jobs.web._charts import RunPoint, runs_chart

__all__ = ["ROUTES"]

PAGE_SIZE = 50
_SORTS = {
    "next": lambda task: _by_next(task),
    "id": lambda task: (task.id,),
    "job": lambda task: (task.name, task.id),
}


def _by_next(task: TaskInfo) -> tuple[int, str, str]:
    if task.next_run_time is None:
        return (1, "", task.id)
    return (0, task.next_run_time.isoformat(), task.id)


def _row(task: TaskInfo, now: datetime) -> dict[str, Any]:
    return {
        "id": task.id,
        "job": task.name or "?",
        "state": _views.task_state(task),
        "trigger": _views.trigger_text(task),
        "next": _views.ago(task.next_run_time, now),
        "next_at": _views.iso(task.next_run_time) or "",
        "outcome": task.last_outcome.value if task.last_outcome else "-",
        "counts": _views.counts_text(task.counts),
        "note": task.note or "",
    }


async def tasks_page(board: Dashboard, request: Request) -> Response:
    """Every task: search, filter by state and job, sort, paginate."""
    if refused := await board.refuse(request, "view"):
        return refused
    params = request.query_params
    search, state, job = params.get("q", ""), params.get("state", ""), params.get("job", "")
    sort = params.get("sort", "next") if params.get("sort") in _SORTS else "next"
    everything = await board.source.tasks()
    chosen = _views.filter_tasks(
        everything, states=[state] if state else [], job=job or None, search=search or None
    )
    chosen.sort(key=_SORTS[sort])
    pages = max(1, math.ceil(len(chosen) / PAGE_SIZE))
    page = min(max(_int(params.get("page"), 1), 1), pages)
    now = board.source.clock.now()
    shown = [_row(task, now) for task in chosen[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]]
    return board.render(
        request,
        "tasks.html",
        tasks=shown,
        total=len(everything),
        matching=len(chosen),
        page=page,
        pages=pages,
        filters={"q": search, "state": state, "job": job, "sort": sort},
        states=_views.STATES,
        jobs=sorted({task.name for task in everything if task.name}),
    )


def _int(raw: str | None, default: int) -> int:
    try:
        return int(raw) if raw is not None else default
    except ValueError:
        return default


async def _task_context(board: Dashboard, task_id: str) -> dict[str, Any]:
    bus = board.source.bus
    task = await bus.get_task(task_id)
    try:
        history: list[dict[str, Any]] | None = [
            _views.run_json(run) for run in await bus.get_history(task_id, 50)
        ]
    except (ConfigurationError, TaskNotFoundError):
        history = None
    points = [
        RunPoint(
            run["occurrence_at"] or "",
            run["lateness"],
            run["duration"],
            ok=run["outcome"] == "succeeded",
        )
        for run in reversed(history or [])
    ]
    upcoming = [_views.iso(at) for at in await bus.upcoming(task_id, 5)]
    info = _views.task_json(task)
    return {
        "task": info,
        "descriptor": json.dumps(info["descriptor"], indent=2, default=str),
        "counts": _views.counts_text(task.counts),
        "upcoming": upcoming,
        "history": history,
        "chart": runs_chart(points),
    }


async def task_page(board: Dashboard, request: Request) -> Response:
    """One task: its descriptor, upcoming occurrences, history and chart, actions."""
    if refused := await board.refuse(request, "view"):
        return refused
    task_id = request.query_params.get("id", "")
    try:
        context = await _task_context(board, task_id)
    except TaskNotFoundError:
        return board.render(request, "missing.html", status=404, task_id=task_id)
    template = "task_live.html" if request.query_params.get("part") == "live" else "task.html"
    return board.render(request, template, **context)


async def workers_page(board: Dashboard, request: Request) -> Response:
    """The live workers."""
    if refused := await board.refuse(request, "view"):
        return refused
    now = board.source.clock.now()
    try:
        workers = [
            {**_views.worker_json(w), "beat": _views.ago(w.heartbeat_at, now)}
            for w in await board.source.bus.list_workers()
        ]
    except ConfigurationError:
        workers = []
    return board.render(request, "workers.html", workers=workers)


async def events_page(board: Dashboard, request: Request) -> Response:
    """The live event feed of every task."""
    if refused := await board.refuse(request, "view"):
        return refused
    return board.render(request, "events.html")


async def feed(board: Dashboard, request: Request) -> Response:
    """Server-sent events: one ``data:`` JSON object per lifecycle event, with its
    position as the SSE id, so that a reconnecting browser resumes (Last-Event-ID)."""
    if refused := await board.refuse(request, "view"):
        return refused
    after = request.headers.get("last-event-id") or None
    task_id = request.query_params.get("task") or None

    async def stream() -> AsyncIterator[str]:
        yield "retry: 2000\n\n"
        async for position, event in board.source.follow(after):
            if task_id is None or event.task_id == task_id:
                data = json.dumps(_views.event_json(event, position))
                yield f"id: {position}\ndata: {data}\n\n"

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


_ACTIONS: dict[str, Callable[[BackgroundTasksBus, str, str], Awaitable[object]]] = {
    "pause": lambda bus, task_id, note: bus.pause_task(task_id, note=note or None),
    "resume": lambda bus, task_id, _: bus.resume_task(task_id),
    "trigger": lambda bus, task_id, _: bus.trigger_task(task_id),
    "cancel": lambda bus, task_id, _: bus.cancel_task(task_id),
    "unpark": lambda bus, task_id, _: bus.unpark_task(task_id),
}


async def act(board: Dashboard, request: Request) -> Response:
    """POST /act/{action}: a form with the task id (and a note for pause)."""
    action = request.path_params["action"]
    if action not in _ACTIONS:
        return PlainTextResponse(f"unknown action {action!r}", status_code=404)
    if refused := await board.refuse(request, action):
        return refused
    form = await request.form()
    task_id, note = str(form.get("task_id", "")), str(form.get("note", ""))
    try:
        await _ACTIONS[action](board.source.bus, task_id, note)
    except TaskNotFoundError:
        return board.render(request, "missing.html", status=404, task_id=task_id)
    except (CmlJobsError, ValueError) as exc:
        return PlainTextResponse(f"{action} refused: {exc}", status_code=409)
    board.source.changed()
    where = request.url_for("tasks") if action == "cancel" else request.url_for("task")
    query = "" if action == "cancel" else f"?id={quote(task_id, safe='')}"
    return RedirectResponse(f"{where}{query}", status_code=303)


ROUTES: list[tuple[str, Callable[[Dashboard, Request], Awaitable[Response]], list[str], str]] = [
    ("/", tasks_page, ["GET"], "tasks"),
    ("/task", task_page, ["GET"], "task"),
    ("/workers", workers_page, ["GET"], "workers"),
    ("/events", events_page, ["GET"], "events"),
    ("/feed", feed, ["GET"], "feed"),
    ("/act/{action}", act, ["POST"], "act"),
]
