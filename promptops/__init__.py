"""promptops: prompts as code, with A/B experiments on autopilot."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from promptops.client import AsyncClient, Client, CompleteResult
    from promptops.config import Settings
    from promptops.errors import PromptOpsError

__version__ = "0.1.0"

__all__ = ["AsyncClient", "Client", "CompleteResult", "PromptOpsError", "Settings", "__version__"]

# Loaded on first use, so importing a submodule (`promptops.stats`, `promptops.domain`) does not
# load the SDK's httpx or the renderer's jinja2.
_LAZY = {
    "AsyncClient": "promptops.client",
    "Client": "promptops.client",
    "CompleteResult": "promptops.client",
    "Settings": "promptops.config",
    "PromptOpsError": "promptops.errors",
}


def __getattr__(name: str) -> Any:
    """The public names, imported when first asked for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'promptops' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
