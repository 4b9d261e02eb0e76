"""promptops: prompts as code, with A/B experiments on autopilot."""

from promptops.config import Settings
from promptops.errors import PromptOpsError

__version__ = "0.1.0"

__all__ = ["PromptOpsError", "Settings", "__version__"]
