"""The web dashboard: server-rendered pages (Jinja2) plus one small script for live updates.

No build step and no third-party JavaScript: templates/ and static/ are the whole front end.
With API tokens configured every page needs one (session.py: a sign-in page sets the cookie).
"""

from __future__ import annotations

from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from . import session
from .pages import artifact_page, run_page, runners_page, runs_page, workflows_page
from .templating import STATIC_DIR

routes = session.secure_pages(
    [
        Route("/", runs_page, methods=["GET"]),
        Route("/runs/{run_id}", run_page, methods=["GET"]),
        Route("/runs/{run_id}/artifacts/{artifact_id}", artifact_page, methods=["GET"]),
        Route("/runners", runners_page, methods=["GET"]),
        Route("/workflows", workflows_page, methods=["GET"]),
        *session.routes,
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
)
