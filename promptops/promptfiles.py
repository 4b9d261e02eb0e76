"""Prompt files (YAML or JSON): discovery, parsing and validation with `PATH:LINE: message` problems.

A `.json` file holds the same schema as a YAML one and is read into the same nodes, with lines.
A file is composed into YAML nodes first (by `yamlnodes`, which refuses hostile input early:
files over `MAX_FILE_BYTES`, invalid UTF-8, NUL bytes, anchors and aliases, nesting deeper than
`MAX_DEPTH`, tags beyond plain data), so every problem names the line of its node; it is checked
by hand (in `promptschema`) against the prompt file format and only then turned into a
`domain.PromptDefinition`. Every problem of a file is reported at once.

A variant overrides `messages`/`template` (keeping the main prompt's form) and `model`. Its `model`
is merged over the main `model` key by key; a key set to null in the variant removes it. A variant's
`description` is documentation only. Every variant carries the main prompt's variables.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .domain import PromptDefinition
from .errors import FileProblem, InvalidPromptFile
from .promptschema import NAME_PATTERN as NAME_PATTERN  # re-exported: public API
from .promptschema import ROLES as ROLES  # re-exported: public API
from .promptschema import PromptChecker, check_prompt
from .yamlnodes import MAX_DEPTH as MAX_DEPTH  # re-exported: public API
from .yamlnodes import MAX_FILE_BYTES as MAX_FILE_BYTES  # re-exported: public API

SUFFIXES = (".yaml", ".yml", ".json")
"""File name endings that a prompts folder is searched for."""

_EMPTY = "the file is empty; a prompt needs name: and messages: or template:"


def parse_prompt_text(text: str | bytes, *, path: str) -> PromptDefinition:
    """Parse and validate one prompt file's text; raises InvalidPromptFile listing every problem."""
    checker = PromptChecker(path)
    return check_prompt(checker, checker.load_text(text, empty=_EMPTY))


def load_prompt_file(path: str | Path) -> PromptDefinition:
    """Read, parse and validate one prompt file (its size is checked before reading)."""
    checker = PromptChecker(str(path))
    return check_prompt(checker, checker.load_file(path, empty=_EMPTY))


def _walk(root: Path, suffixes: tuple[str, ...]) -> Iterator[Path]:
    # os.walk does not follow directory symlinks, so a link loop cannot recurse forever.
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.endswith(suffixes):
                yield Path(folder) / name


def _discover(
    paths: Sequence[str | Path], suffixes: tuple[str, ...] = SUFFIXES
) -> tuple[list[Path], list[FileProblem]]:
    found: list[Path] = []
    problems: list[FileProblem] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            candidates = sorted(_walk(path, suffixes), key=lambda p: p.relative_to(path).parts)
        elif path.exists():
            candidates = [path]
        else:
            problems.append(FileProblem(str(raw), 0, "no such file or directory"))
            continue
        for candidate in candidates:
            key = candidate.resolve()
            if key not in seen:
                seen.add(key)
                found.append(candidate)
    return found, problems


def discover(paths: Sequence[str | Path], *, suffixes: tuple[str, ...] = SUFFIXES) -> list[Path]:
    """The files under the paths: directories expand to their files with those endings, recursively."""
    found, problems = _discover(paths, suffixes)
    if problems:
        raise InvalidPromptFile(problems)
    return found


def load_prompt_files(paths: Sequence[str | Path]) -> list[PromptDefinition]:
    """Every prompt under the paths, sorted by name; one InvalidPromptFile lists all problems."""
    files, problems = _discover(paths)
    found = load_named(files, load_prompt_file, kind="prompt", problems=problems)
    if problems:
        raise InvalidPromptFile(problems)
    return found


def load_named(
    files: Sequence[Path], load: Callable[[Path], Any], *, kind: str, problems: list[FileProblem]
) -> list[Any]:
    """Load each file (`load` raises InvalidPromptFile or a subclass) into definitions with a
    `name`, `path` and `line`, sorted by name; every problem, a duplicate name included, is
    appended to `problems`. Prompt and eval files share this rule."""
    by_name: dict[str, Any] = {}
    for file in files:
        try:
            definition = load(file)
        except InvalidPromptFile as exc:
            problems.extend(exc.problems)
            continue
        first = by_name.get(definition.name)
        if first is not None:
            where = f"{first.path}:{first.line}"
            message = f"duplicate {kind} name {definition.name!r}: already defined in {where}"
            problems.append(FileProblem(definition.path, definition.line, message))
            continue
        by_name[definition.name] = definition
    return sorted(by_name.values(), key=lambda d: d.name)


_EXAMPLE = """\
# A prompt file: one prompt, its variables, optional variants and an experiment among them.
# Check it with `promptops validate`, register it with `promptops sync`.
name: summarize                   # unique; lowercase letters, digits, '-', '_', '.'
description: Summarize a document for a busy reader.
tags: [example, summarization]
model: {name: gpt-4o-mini, temperature: 0.2, max_tokens: 300}   # passed through to callers

variables:                        # every name a template uses must be declared here
  document: {type: string, required: true, max_length: 20000}
  audience: {type: string, enum: [executive, engineer, customer], default: executive}
  max_points: {type: integer, default: 3}

messages:                         # chat form; or `template: "..."` for a single text prompt
  - role: system
    content: |-
      You write short, faithful summaries. Use only facts stated in the document;
      if something is unclear, say so instead of guessing.
  - role: user
    content: |-
      Summarize the document below for a reader who is {{ audience }} in at most
      {{ max_points }} bullet points.

      <document>
      {{ document }}
      </document>

variants:                         # named alternatives; each overrides messages/template/model
  paragraph:
    description: One short paragraph instead of bullet points.
    messages:
      - role: system
        content: |-
          You write short, faithful summaries. Use only facts stated in the document;
          if something is unclear, say so instead of guessing.
      - role: user
        content: |-
          Summarize the document below for a reader who is {{ audience }}, in one paragraph
          of at most {{ max_points * 2 }} sentences.

          <document>
          {{ document }}
          </document>

experiment:                       # starts running when synced (unless `status: draft`)
  metric: helpful                 # the name feedback is sent under
  reward: binary                  # binary (0/1) or continuous (a float in [0, 1])
  arms: [main, paragraph]         # `main` is the top-level content
"""


def example_prompt_text() -> str:
    """The example prompt file `promptops init` writes: valid, with a variant and an experiment."""
    return _EXAMPLE
