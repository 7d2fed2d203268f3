"""The cml-jobs web dashboard: tasks, one task's history, workers and a live event feed,
with pause, resume, trigger, cancel and unpark. Needs the ``web`` extra
(``pip install "cml-jobs[web]"``).

Mount it in your Starlette or FastAPI app, behind your own auth::

    app.mount("/jobs", dashboard(scheduler, authorize=lambda request, action: is_admin(request)))

or run it alone: ``cml-jobs web --port 8000``.
"""

from __future__ import annotations

from cml_jobs.web._app import ACTIONS, Authorize, dashboard

__all__ = ["ACTIONS", "Authorize", "dashboard"]
