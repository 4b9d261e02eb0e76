"""The OpenAPI document and its pages: Swagger UI at /docs and ReDoc at /redoc, from local files.

The pages load their scripts and styles from the `fastapi-offline` package (which bundles Swagger
UI and ReDoc), served under /docs/assets, so they work with no internet access and ask nothing
of another host. The document
declares the Bearer scheme of `Authorization: Bearer KEY` on every operation that needs a key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

ASSETS = Path(fastapi_offline.__file__).parent / "static"
"""The bundled Swagger UI and ReDoc files."""

ASSETS_URL = "/docs/assets"
SCHEME = "HTTPBearer"
# Operations anyone may call: no key is asked for.
PUBLIC_PATHS = frozenset({"/healthz"})


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document with the Bearer scheme, built once."""
    if app.openapi_schema is None:
        doc = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            tags=app.openapi_tags,
        )
        doc.setdefault("components", {})["securitySchemes"] = {
            SCHEME: {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key from `promptops keys create --role serve|admin`. "
                "Not needed while auth is off (a loopback server with no key).",
            }
        }
        for path, operations in doc.get("paths", {}).items():
            if path in PUBLIC_PATHS:
                continue
            for operation in operations.values():
                operation["security"] = [{SCHEME: []}]
        app.openapi_schema = doc
    return app.openapi_schema


def install(app: FastAPI) -> None:
    """Serve the OpenAPI document, /docs and /redoc from local assets (the app is built with
    docs_url=None and redoc_url=None)."""
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")
    favicon = f"{ASSETS_URL}/favicon.png"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=favicon,
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        page = get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{app.title} API",
            redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=favicon,
            with_google_fonts=False,
        )
        # ReDoc's bundle draws its sidebar logo from a CDN: only local images may load, and the
        # bundle hides an image that fails.
        page.headers["Content-Security-Policy"] = "img-src 'self' data:"
        return page
