"""The SDK's local fallback: the production version of every prompt a client has served or
rendered, and the prompt files of `fallback_dir`, rendered locally when the server is unreachable."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptops import errors as e
from promptops import promptfiles
from promptops.domain import MAIN_VARIANT, PromptContent, PromptDefinition
from promptops.rendering import Renderer
from promptops.results import ServeResult

log = logging.getLogger("promptops.client")


@dataclass
class _Production:
    """The cached production version of one prompt."""

    number: int
    variant: str
    content: PromptContent
    checked: float  # monotonic time the label was last confirmed by the server


class ProductionCache:
    """Production versions by prompt, and the immutable content of every version seen."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self.production: dict[str, _Production] = {}
        self.versions: dict[tuple[str, int], tuple[str, PromptContent]] = {}

    def stale(self, name: str) -> bool:
        """Whether the production entry is missing or older than the TTL."""
        entry = self.production.get(name)
        return entry is None or time.monotonic() - entry.checked > self.ttl

    def confirm(self, name: str, number: int) -> bool:
        """Mark `number` as production now; False when its content must be fetched first."""
        with self._lock:
            entry = self.production.get(name)
            if entry is not None and entry.number == number:
                entry.checked = time.monotonic()
                return True
            known = self.versions.get((name, number))
            if known is None:
                return False
            self.production[name] = _Production(number, known[0], known[1], time.monotonic())
            return True

    def store(self, name: str, version: Mapping[str, Any]) -> None:
        """Keep a version read from `/v1/prompts/{name}/versions/{n}` and make it production."""
        number = int(version["number"])
        content = PromptContent.from_dict(version["content"])
        variant = str(version.get("variant") or "main")
        with self._lock:
            self.versions[(name, number)] = (variant, content)
            self.production[name] = _Production(number, variant, content, time.monotonic())

    def drop(self, name: str) -> None:
        """Forget the production version of a prompt (it has none any more)."""
        with self._lock:
            self.production.pop(name, None)

    def get(self, name: str) -> _Production | None:
        """The last known production version, however old."""
        return self.production.get(name)


def _load_files(folder: Path) -> dict[str, PromptDefinition]:
    """The valid prompt files of a folder by prompt name; a broken file is logged and skipped."""
    found: dict[str, PromptDefinition] = {}
    try:
        paths = promptfiles.discover([folder])
    except e.InvalidPromptFile as exc:
        log.warning("promptops: fallback_dir %s: %s", folder, exc.message)
        return found
    for path in paths:
        try:
            definition = promptfiles.load_prompt_file(path)
        except e.InvalidPromptFile as exc:
            log.warning("promptops: fallback prompt file skipped: %s", exc.problems[0])
            continue
        found.setdefault(definition.name, definition)
    return found


class Fallback:
    """Local renderings for when the server is unreachable: the cached production version, else
    the `main` content of the prompt's file in `fallback_dir`."""

    def __init__(self, cache: ProductionCache, folder: str | Path | None) -> None:
        self.cache = cache
        self.renderer = Renderer()
        self.folder = Path(folder) if folder is not None else None
        self._files: dict[str, PromptDefinition] | None = None
        self._files_lock = threading.Lock()

    def serve(self, name: str, variables: Mapping[str, Any]) -> ServeResult | None:
        """A local rendering answered as a serve with `fallback=True` and no decision (and, from
        a prompt file, no version number); None when neither source has the prompt."""
        entry = self.cache.get(name)
        if entry is not None:
            out = self.renderer.render(
                entry.content, variables, prompt=name, version=entry.number, variant=entry.variant
            ).payload()
            return ServeResult.from_json({**out, "decision_id": None, "experiment_id": None}, fallback=True)
        if self.folder is None:
            return None
        with self._files_lock:
            if self._files is None:  # read once: the files are the last resort, not live
                self._files = _load_files(self.folder)
        definition = self._files.get(name)
        if definition is None:
            return None
        out = self.renderer.render(
            definition.content, variables, prompt=name, version=0, variant=MAIN_VARIANT
        ).payload()
        return ServeResult.from_json(
            {**out, "version": None, "decision_id": None, "experiment_id": None}, fallback=True
        )
