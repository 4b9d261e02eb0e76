"""promptops: prompts as code, with A/B experiments on autopilot."""

from promptops.client import AsyncClient, Client, CompleteResult
from promptops.config import Settings
from promptops.errors import PromptOpsError

__version__ = "0.1.0"

__all__ = ["AsyncClient", "Client", "CompleteResult", "PromptOpsError", "Settings", "__version__"]
