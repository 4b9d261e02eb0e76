"""The FastAPI app factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp

from promptops import __version__
from promptops.config import Settings
from promptops.server import api, dashboard, docs, errors, evals, openai
from promptops.server.fast import FastPath
from promptops.server.guard import EdgeGuard
from promptops.server.metrics import TimingMiddleware
from promptops.server.runtime import Runtime
from promptops.services.facade import PromptOps


def create_app(
    settings: Settings | None = None,
    *,
    ops: PromptOps | None = None,
    clock: Callable[[], float] | None = None,
    background: bool = True,
    fast_path: bool = True,
) -> FastAPI:
    """Build the API and dashboard app over the configured database; `fast_path=False` leaves
    serve and feedback to the FastAPI routes (the parity tests compare the two)."""
    settings = settings or Settings.from_env()
    runtime = Runtime(settings, ops=ops, clock=clock, background=background)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.loop = asyncio.get_running_loop()
        runtime.start()
        try:
            yield
        finally:
            runtime.stop()
            await runtime.gateway.aclose()

    app = FastAPI(
        title="promptops",
        version=__version__,
        lifespan=lifespan,
        description="Prompts as code with A/B experiments on autopilot.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.runtime = runtime
    runtime.app = app
    errors.install(app)
    app.include_router(api.router)
    app.include_router(openai.router)
    docs.install(app)
    app.include_router(evals.router)
    dashboard.install(app)
    app.add_middleware(TimingMiddleware, metrics=runtime.metrics, max_body=settings.max_body_bytes)
    # Serve and feedback take a pure-ASGI path outside FastAPI's whole middleware stack; anything
    # unusual falls through to the routes in api.py (see fast.py). The guard is outside both.
    build_stack = app.build_middleware_stack

    def build_middleware_stack() -> ASGIApp:
        inner: Any = build_stack()
        if fast_path:
            inner = FastPath(inner, runtime=runtime, max_body=settings.max_body_bytes)
        gateway = openai.GatewayPath(inner, runtime=runtime, max_body=settings.max_body_bytes)
        return EdgeGuard(gateway, runtime=runtime, settings=settings)  # type: ignore[return-value]

    app.build_middleware_stack = build_middleware_stack  # type: ignore[method-assign]
    return app
