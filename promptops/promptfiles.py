"""YAML prompt files: discovery, parsing and validation with `PATH:LINE: message` problems.

A file is composed into YAML nodes first, so every problem names the line of its node; it is
checked by hand (in `promptschema`) against the format of CONTRACT.md and only then turned into a
`domain.PromptDefinition`. Every problem of a file is reported at once. Hostile input is refused
early: files over `MAX_FILE_BYTES` (checked before reading), invalid UTF-8, NUL bytes, YAML anchors
and aliases (so no "billion laughs"), nesting deeper than `MAX_DEPTH`, YAML tags beyond plain data.

A variant overrides `messages`/`template` (keeping the main prompt's form) and `model`. Its `model`
is merged over the main `model` key by key; a key set to null in the variant removes it. A variant's
`description` is documentation only. Every variant carries the main prompt's variables.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from .domain import PromptDefinition
from .errors import FileProblem, InvalidPromptFile
from .promptschema import NAME_PATTERN as NAME_PATTERN  # re-exported: public API
from .promptschema import ROLES as ROLES  # re-exported: public API
from .promptschema import build_definition

MAX_FILE_BYTES = 1_000_000
"""Largest prompt file accepted, in bytes."""

MAX_DEPTH = 50
"""Deepest YAML nesting accepted."""

_NODE_OF_EVENT: dict[type, type] = {
    yaml.ScalarEvent: yaml.ScalarNode,
    yaml.SequenceStartEvent: yaml.SequenceNode,
    yaml.MappingStartEvent: yaml.MappingNode,
}


class _Refused(Exception):
    """Composition stopped on purpose (anchor, alias, nesting)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


# libyaml's parser is several times faster on big files; its composer cannot be hooked, so
# nodes are composed from its events below (the pure-Python parser is the fallback).
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _compose_events(loader: Any) -> yaml.Node | None:
    """Compose the single document from parser events, refusing anchors, aliases, deep nesting."""
    loader.get_event()  # stream start
    if loader.check_event(yaml.StreamEndEvent):
        return None
    document = loader.get_event()
    stack: list[list[Any]] = []  # open collections: [node, pending mapping key]
    while True:
        event = loader.get_event()
        line = event.start_mark.line + 1
        # Refusing anchors outright, not only expanding aliases lazily, rules out alias bombs.
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(line, "YAML anchors and aliases are not allowed")
        if isinstance(event, yaml.CollectionEndEvent):
            node = stack.pop()[0]
            node.end_mark = event.end_mark
        else:
            kind = _NODE_OF_EVENT[type(event)]
            tag = event.tag
            if tag is None or tag == "!":
                value = event.value if kind is yaml.ScalarNode else None
                tag = loader.resolve(kind, value, event.implicit)
            if kind is yaml.ScalarNode:
                node = kind(tag, event.value, event.start_mark, event.end_mark, style=event.style)
            else:
                if len(stack) >= MAX_DEPTH:
                    raise _Refused(line, f"nesting deeper than {MAX_DEPTH} levels")
                node = kind(tag, [], event.start_mark, None, flow_style=event.flow_style)
                stack.append([node, None])
                continue
        if not stack:
            break
        parent = stack[-1]
        if isinstance(parent[0], yaml.SequenceNode):
            parent[0].value.append(node)
        elif parent[1] is None:
            parent[1] = node
        else:
            parent[0].value.append((parent[1], node))
            parent[1] = None
    loader.get_event()  # document end
    if not loader.check_event(yaml.StreamEndEvent):
        extra = loader.get_event()
        context = "expected a single document in the stream"
        problem = "but found another document"
        raise yaml.composer.ComposerError(context, document.start_mark, problem, extra.start_mark)
    return node


def _refuse(path: str, line: int, message: str) -> NoReturn:
    raise InvalidPromptFile([FileProblem(path, line, message)])


def _decode(data: str | bytes, path: str) -> str:
    """The text of a file, refusing oversized, non-UTF-8 and binary input."""
    size = len(data.encode("utf-8", "surrogatepass")) if isinstance(data, str) else len(data)
    if size > MAX_FILE_BYTES:
        _refuse(path, 0, f"file is larger than {MAX_FILE_BYTES} bytes")
    text = data
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            _refuse(path, line, f"not UTF-8 text (byte 0x{data[exc.start]:02x})")
    assert isinstance(text, str)
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        _refuse(path, line, "contains a NUL byte; is it a binary file?")
    return text.removeprefix("\ufeff")


def _compose(text: str, path: str) -> tuple[Any, yaml.Node]:
    """A loader and the root node of the single YAML document, with syntax errors as problems."""
    loader = None
    try:
        loader = _Loader(text)
        root = _compose_events(loader)
    except _Refused as exc:
        _refuse(path, exc.line, exc.message)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        detail = ", ".join(str(part) for part in (exc.context, exc.problem) if part)
        _refuse(path, mark.line + 1 if mark else 0, f"invalid YAML: {' '.join(detail.split())}")
    except yaml.reader.ReaderError as exc:
        # Offsets differ between the C and Python readers; the character itself does not.
        char = chr(exc.character) if isinstance(exc.character, int) else str(exc.character)
        line = text.count("\n", 0, max(text.find(char), 0)) + 1
        _refuse(path, line, f"invalid character {char!r}: {exc.reason}")
    except yaml.YAMLError as exc:
        _refuse(path, 0, f"invalid YAML: {' '.join(str(exc).split())}")
    finally:
        if loader is not None:
            loader.dispose()
    if root is None:
        _refuse(path, 1, "the file is empty; a prompt needs name: and messages: or template:")
    return loader, root


def parse_prompt_text(text: str | bytes, *, path: str) -> PromptDefinition:
    """Parse and validate one prompt file's text; raises InvalidPromptFile listing every problem."""
    loader, root = _compose(_decode(text, path), path)
    return build_definition(root, loader, path=path)


def load_prompt_file(path: str | Path) -> PromptDefinition:
    """Read, parse and validate one prompt file (its size is checked before reading)."""
    shown = str(path)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            _refuse(shown, 0, "is a directory" if stat.S_ISDIR(info.st_mode) else "not a file")
        if info.st_size > MAX_FILE_BYTES:
            _refuse(shown, 0, f"file is larger than {MAX_FILE_BYTES} bytes ({info.st_size})")
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)  # bounded even if the file grew since stat()
    except FileNotFoundError:
        _refuse(shown, 0, "no such file or directory")
    except OSError as exc:
        _refuse(shown, 0, f"cannot read: {(exc.strerror or str(exc)).lower()}")
    return parse_prompt_text(data, path=shown)


def _walk(root: Path) -> Iterator[Path]:
    # os.walk does not follow directory symlinks, so a link loop cannot recurse forever.
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.endswith((".yaml", ".yml")):
                yield Path(folder) / name


def _discover(paths: Sequence[str | Path]) -> tuple[list[Path], list[FileProblem]]:
    found: list[Path] = []
    problems: list[FileProblem] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            candidates = sorted(_walk(path), key=lambda p: p.relative_to(path).parts)
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


def discover(paths: Sequence[str | Path]) -> list[Path]:
    """The prompt files under the paths: directories expand to their *.yaml/*.yml, recursively."""
    found, problems = _discover(paths)
    if problems:
        raise InvalidPromptFile(problems)
    return found


def load_prompt_files(paths: Sequence[str | Path]) -> list[PromptDefinition]:
    """Every prompt under the paths, sorted by name; one InvalidPromptFile lists all problems."""
    files, problems = _discover(paths)
    by_name: dict[str, PromptDefinition] = {}
    for file in files:
        try:
            definition = load_prompt_file(file)
        except InvalidPromptFile as exc:
            problems.extend(exc.problems)
            continue
        first = by_name.get(definition.name)
        if first is not None:
            where = f"{first.path}:{first.line}"
            message = f"duplicate prompt name {definition.name!r}: already defined in {where}"
            problems.append(FileProblem(definition.path, definition.line, message))
            continue
        by_name[definition.name] = definition
    if problems:
        raise InvalidPromptFile(problems)
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
