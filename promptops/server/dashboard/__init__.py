"""The dashboard: server-rendered pages over the services, with sign-in, CSRF and admin actions.

formats.py     number, percent and time formats shared by pages and charts
charts.py      hand-drawn SVG charts (a charting library's inline styles would break the CSP)
pages.py       template contexts built from service reads; no request, no HTML
session.py     the session cookie, CSRF tokens and flash messages
templating.py  the Jinja environment and page responses with the security headers
routes.py      the routes and form actions, thin over the modules above
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from promptops.server.dashboard.routes import router
from promptops.server.dashboard.templating import error_page, web_dir

__all__ = ["install", "web_dir"]


def install(app: FastAPI) -> None:
    """Add the dashboard pages, static files and the HTML error page to the app."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=web_dir() / "static"), name="static")
    app.state.error_page = error_page
