"""Checked YAML and JSON files: nodes with lines, read by checkers that report every problem at once.

A file is composed into YAML nodes, never loaded into Python values directly, so every problem
names the line of its node; a path ending in `.json` is parsed as JSON into the same nodes (JSON
numbers such as `1e-3` stay numbers, where YAML 1.1 would read a string). Hostile input is refused
early: files over `MAX_FILE_BYTES` (checked before reading), invalid UTF-8, NUL bytes, YAML anchors
and aliases (so no "billion laughs"), nesting deeper than `MAX_DEPTH`; `NodeReader.scan` then
reports tags beyond plain data and duplicate keys. A checker subclasses `NodeReader`, adds the
grammar of its file as methods over the typed getters below, and raises its own error with
`problems` once it is done.

A typed getter takes a `Check`: a function from a plain value to what is wrong with it, or None.
It returns the value, or `BAD` after recording `PATH:LINE: where: problem`; a caller goes on
reading the rest of the file and decides at the end from `problems`. For example, a checker of
`{name: str, runs: int >= 1}` files::

    def text(value):
        return None if isinstance(value, str) and value else "must be a non-empty string"

    def at_least_one(value):
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        return None if ok else f"must be an integer >= 1, got {value!r}"

    class RunsChecker(NodeReader):
        def runs(self, root: yaml.Node) -> tuple[str, int] | None:
            self.scan(root)
            entries = self.mapping(root, "", ("name", "runs"), required=("name",))
            if entries is None:
                return None
            name = self.field(entries, "name", "", text, BAD)
            runs = self.field(entries, "runs", "", at_least_one, 100)
            return None if self.problems else (name, runs)

    checker = RunsChecker(str(path))
    root = checker.load_file(path, empty="the file is empty; it needs name:")
    result = checker.runs(root) if root is not None else None
    if result is None:
        raise InvalidInput("\\n".join(str(p) for p in checker.sorted_problems()))

Nested parts read the same way: `mapping(node, join(where, key), allowed)` on a value node,
`items(entries, key, where)` for a list's nodes, `distinct(...)` for a list of unique values.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from .domain import text_problem
from .errors import FileProblem

MAX_FILE_BYTES = 1_000_000
"""Largest file accepted, in bytes."""

MAX_DEPTH = 50
"""Deepest nesting accepted."""

BAD: Any = object()
"""What a getter returns for a value that could not be read; its problem is already recorded."""

Entries = dict[str, tuple[yaml.Node, yaml.Node]]
"""The entries of a mapping node by key: (key node, value node)."""

Check = Callable[[Any], str | None]
"""What is wrong with a plain value (as text after `where: `), or None if it fits."""

_YAML = "tag:yaml.org,2002:"
_DATA_TAGS = frozenset(_YAML + t for t in ("str", "int", "float", "bool", "null", "seq", "map", "timestamp"))
_NODE_OF_EVENT: dict[type, type] = {
    yaml.ScalarEvent: yaml.ScalarNode,
    yaml.SequenceStartEvent: yaml.SequenceNode,
    yaml.MappingStartEvent: yaml.MappingNode,
}
# libyaml's parser is several times faster on big files; its composer cannot be hooked, so
# nodes are composed from its events below (the pure-Python parser is the fallback).
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def join(where: str, key: str) -> str:
    """The dotted path of a key under `where` (the top level is "")."""
    return f"{where}.{key}" if where else key


def at(where: str, message: str) -> str:
    """A message prefixed by where it applies, unless that is the top level."""
    return f"{where}: {message}" if where else message


def line_of(node: yaml.Node) -> int:
    """The 1-based line a node starts on."""
    return node.start_mark.line + 1


def is_null(node: yaml.Node) -> bool:
    """Whether a node is a null scalar (`null`, `~` or nothing)."""
    return isinstance(node, yaml.ScalarNode) and node.tag == _YAML + "null"


def describe(node: yaml.Node) -> str:
    """A short description of a node for messages: "a list", "nothing" or its value, cut."""
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if is_null(node):
        return "nothing"
    text = repr(node.value)
    return text if len(text) <= 40 else text[:37] + "..."


def present(entries: Entries, key: str) -> yaml.Node | None:
    """The value node at a key; None when the key is absent or its value is null."""
    node = entries[key][1] if key in entries else None
    return None if node is None or is_null(node) else node


def plain_problem(value: Any) -> str | None:
    """Why a value is not plain JSON-like data (text included: no NUL, no lone surrogate), or None."""
    if isinstance(value, str):
        return text_problem(value)
    if value is None or isinstance(value, bool | int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else "must not contain .nan or .inf"
    if isinstance(value, list):
        return next((p for v in value if (p := plain_problem(v))), None)
    if isinstance(value, dict):
        if any(not isinstance(k, str) for k in value):
            return "mapping keys must be strings"
        bad_key = next((p for k in value if (p := text_problem(k))), None)
        if bad_key is not None:
            return f"a key {bad_key}"
        return next((p for v in value.values() if (p := plain_problem(v))), None)
    return f"must be plain data, got {type(value).__name__} {value}; quote it to make it a string"


class _Refused(Exception):
    """Reading stopped on purpose at a line (size, encoding, anchor, nesting)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


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
                # A quoted "\0" or "\U0000D800" escape: text no database or encoder takes.
                problem = text_problem(event.value)
                if problem is not None:
                    raise _Refused(line, f"a string {problem}")
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


def _decode(data: str | bytes) -> str:
    """The text of a file, refusing oversized, non-UTF-8 and binary input."""
    size = len(data.encode("utf-8", "surrogatepass")) if isinstance(data, str) else len(data)
    if size > MAX_FILE_BYTES:
        raise _Refused(0, f"file is larger than {MAX_FILE_BYTES} bytes")
    text = data
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise _Refused(line, f"not UTF-8 text (byte 0x{data[exc.start]:02x})") from None
    assert isinstance(text, str)
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise _Refused(line, "contains a NUL byte; is it a binary file?")
    return text.removeprefix("\ufeff")


def _compose(text: str) -> yaml.Node | None:
    """The root node of the single YAML document (None if empty), with syntax errors refused."""
    loader = None
    try:
        loader = _Loader(text)
        return _compose_events(loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        detail = ", ".join(str(part) for part in (exc.context, exc.problem) if part)
        line = mark.line + 1 if mark else 0
        raise _Refused(line, f"invalid YAML: {' '.join(detail.split())}") from None
    except yaml.reader.ReaderError as exc:
        # Offsets differ between the C and Python readers; the character itself does not.
        char = chr(exc.character) if isinstance(exc.character, int) else str(exc.character)
        line = text.count("\n", 0, max(text.find(char), 0)) + 1
        raise _Refused(line, f"invalid character {char!r}: {exc.reason}") from None
    except yaml.YAMLError as exc:
        raise _Refused(0, f"invalid YAML: {' '.join(str(exc).split())}") from None
    finally:
        if loader is not None:
            loader.dispose()


# One token per match: whitespace (which holds every newline: JSON strings cannot), then
# punctuation, a string, a number or a literal; a file is tokenized in one pass of this pattern.
_JSON_TOKEN = re.compile(
    r"([ \t\n\r]*)(?:(?P<p>[{}\[\],:])"
    r'|(?P<s>"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*")'
    r"|(?P<n>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)"
    r"|(?P<w>true|false|null))"
)
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_JSON_WORDS = {"true": "bool", "false": "bool", "null": "null"}
_Token = tuple[str, str, yaml.Mark]  # kind (p, s, n, w), text, where it starts


def _json_tokens(text: str) -> list[_Token]:
    """The tokens of a JSON text, refusing a character that starts none."""
    tokens: list[_Token] = []
    pos = line = 0
    while True:
        match = _JSON_TOKEN.match(text, pos)
        if match is None:
            space = _JSON_SPACE.match(text, pos)
            start = space.end() if space else pos
            line += text.count("\n", pos, start)
            if start == len(text):
                return tokens
            quoted = text[start] == '"'
            bad = "unterminated string, bad escape or control character" if quoted else None
            raise _Refused(line + 1, f"invalid JSON: {bad or 'expected a value'}")
        line += text.count("\n", pos, match.end(1))
        kind = match.lastgroup
        assert kind is not None
        mark = yaml.Mark("<json>", match.end(1), line, 0, None, None)
        tokens.append((kind, match.group(kind), mark))
        pos = match.end()


class _JsonComposer:
    """Composes JSON text into the YAML nodes the checkers read, each marked with its line."""

    def __init__(self, text: str) -> None:
        self.tokens = _json_tokens(text)
        self.next = 0
        self.end_line = text.count("\n") + 1

    def take(self) -> _Token:
        if self.next >= len(self.tokens):
            raise _Refused(self.end_line, "invalid JSON: unexpected end of the text")
        self.next += 1
        return self.tokens[self.next - 1]

    def document(self) -> yaml.Node | None:
        if not self.tokens:
            return None
        node = self.value(0)
        if self.next < len(self.tokens):
            line = self.tokens[self.next][2].line + 1
            raise _Refused(line, "invalid JSON: extra data after the value")
        return node

    def value(self, depth: int) -> yaml.Node:
        kind, text, mark = self.take()
        if text in ("{", "[") and kind == "p":
            if depth >= MAX_DEPTH:
                raise _Refused(mark.line + 1, f"nesting deeper than {MAX_DEPTH} levels")
            if text == "{":
                pairs = self.items("}", lambda: self.pair(depth + 1))
                return yaml.MappingNode(_YAML + "map", pairs, mark, mark, flow_style=True)
            values = self.items("]", lambda: self.value(depth + 1))
            return yaml.SequenceNode(_YAML + "seq", values, mark, mark, flow_style=True)
        if kind == "s":
            return yaml.ScalarNode(_YAML + "str", self.string(text, mark), mark, mark, style='"')
        if kind == "w":
            return yaml.ScalarNode(_YAML + _JSON_WORDS[text], text, mark, mark)
        if kind == "n":
            tag = "float" if any(c in text for c in ".eE") else "int"
            return yaml.ScalarNode(_YAML + tag, text, mark, mark)
        raise _Refused(mark.line + 1, "invalid JSON: expected a value")

    @staticmethod
    def string(token: str, mark: yaml.Mark) -> str:
        text: str = json.loads(token)
        if "\x00" in text:
            raise _Refused(mark.line + 1, "invalid JSON: a \\u0000 escape (a NUL character) is not allowed")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise _Refused(mark.line + 1, "invalid JSON: a \\u escape is a lone surrogate") from None
        return text

    def items(self, close: str, item: Callable[[], Any]) -> list[Any]:
        """The comma-separated items up to `close` (the opening bracket is taken)."""
        out: list[Any] = []
        if self.next < len(self.tokens) and self.tokens[self.next][1] == close:
            self.next += 1
            return out
        while True:
            out.append(item())
            kind, text, mark = self.take()
            if kind == "p" and text == close:
                return out
            if not (kind == "p" and text == ","):
                raise _Refused(mark.line + 1, f"invalid JSON: expected ',' or '{close}'")

    def pair(self, depth: int) -> tuple[yaml.Node, yaml.Node]:
        kind, text, mark = self.take()
        if kind != "s":
            raise _Refused(mark.line + 1, "invalid JSON: expected a string key")
        key = yaml.ScalarNode(_YAML + "str", self.string(text, mark), mark, mark, style='"')
        kind, text, mark = self.take()
        if not (kind == "p" and text == ":"):
            raise _Refused(mark.line + 1, "invalid JSON: expected ':' after the key")
        return key, self.value(depth)


def _compose_json(text: str) -> yaml.Node | None:
    """The root node of a JSON text (None if empty), with syntax errors refused."""
    return _JsonComposer(text).document()


def _read(path: str | Path) -> bytes:
    """A regular file's bytes; its size is checked before reading."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise _Refused(0, "is a directory" if stat.S_ISDIR(info.st_mode) else "not a file")
        if info.st_size > MAX_FILE_BYTES:
            raise _Refused(0, f"file is larger than {MAX_FILE_BYTES} bytes ({info.st_size})")
        with open(path, "rb") as handle:
            return handle.read(MAX_FILE_BYTES + 1)  # bounded even if the file grew since stat()
    except FileNotFoundError:
        raise _Refused(0, "no such file or directory") from None
    except OSError as exc:
        raise _Refused(0, f"cannot read: {(exc.strerror or str(exc)).lower()}") from None


class NodeReader:
    """Loads one file into YAML nodes and reads them with typed getters, collecting problems."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[FileProblem] = []
        self.tag_lines: set[int] = set()
        self.constructor = yaml.constructor.SafeConstructor()

    def load_text(self, text: str | bytes, *, empty: str) -> yaml.Node | None:
        """The root node of a file's text; None after recording why it cannot be read.

        A path ending in `.json` is read as JSON, into the same nodes with the same lines.
        """
        try:
            compose = _compose_json if self.path.endswith(".json") else _compose
            root = compose(_decode(text))
        except _Refused as exc:
            self.err(exc.line, exc.message)
            return None
        if root is None:
            self.err(1, empty)
        return root

    def load_file(self, path: str | Path, *, empty: str) -> yaml.Node | None:
        """The root node of a file on disk; None after recording why it cannot be read."""
        try:
            data = _read(path)
        except _Refused as exc:
            self.err(exc.line, exc.message)
            return None
        return self.load_text(data, empty=empty)

    def sorted_problems(self) -> list[FileProblem]:
        """Every recorded problem, by line."""
        return sorted(self.problems, key=lambda p: p.line)

    def err(self, node: yaml.Node | int, message: str) -> None:
        """Record a problem at a node's line (or a line number)."""
        line = node if isinstance(node, int) else line_of(node)
        # A node with an unsupported tag is reported once; what follows from it would be noise.
        if line not in self.tag_lines:
            self.problems.append(FileProblem(self.path, line, message))

    def scan(self, root: yaml.Node) -> None:
        """Report tags beyond plain data and duplicate mapping keys anywhere in the document."""
        stack = [root]
        while stack:
            node = stack.pop()
            if node.tag not in _DATA_TAGS:
                tag = node.tag.replace(_YAML, "!!")
                merge = node.tag == _YAML + "merge"
                self.err(
                    node,
                    "merge keys ('<<') are not supported" if merge else f"unsupported YAML tag {tag!r}",
                )
                self.tag_lines.add(line_of(node))
            if isinstance(node, yaml.MappingNode):
                seen: dict[tuple[str, str], int] = {}
                for key, value in node.value:
                    ident = (key.tag, key.value) if isinstance(key, yaml.ScalarNode) else None
                    if ident in seen:
                        self.err(key, f"duplicate key {key.value!r} (first at line {seen[ident]})")
                    elif ident is not None:
                        seen[ident] = line_of(key)
                    stack.extend((key, value))
            elif isinstance(node, yaml.SequenceNode):
                stack.extend(node.value)

    def data(self, node: yaml.Node) -> Any:
        """The plain Python value of a node, or BAD after reporting."""
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            self.err((exc.problem_mark or node.start_mark).line + 1, f"invalid YAML: {exc.problem}")
        except (yaml.YAMLError, TypeError, ValueError) as exc:
            self.err(node, f"invalid value: {' '.join(str(exc).split())}")
        return BAD

    def mapping(
        self,
        node: yaml.Node,
        where: str,
        allowed: Sequence[str] | None,
        required: Sequence[str] = (),
    ) -> Entries | None:
        """The entries of a mapping node by key (first of duplicates), reporting unknown keys."""
        if not isinstance(node, yaml.MappingNode):
            self.err(node, at(where, f"must be a mapping, got {describe(node)}"))
            return None
        out: Entries = {}
        for key, value in node.value:
            if not (isinstance(key, yaml.ScalarNode) and key.tag == _YAML + "str"):
                self.err(key, at(where, f"keys must be strings, got {describe(key)}"))
            elif allowed is not None and key.value not in allowed:
                hint = difflib.get_close_matches(key.value, allowed, n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                self.err(key, at(where, f"unknown key {key.value!r}{extra}"))
            else:
                out.setdefault(key.value, (key, value))
        for key in required:
            if key not in out:
                self.err(node, at(where, f"missing required key {key!r}"))
        return out

    def read(self, node: yaml.Node, where: str, check: Check) -> Any:
        """The value of a node if `check` finds no problem with it, or BAD after reporting."""
        value = self.data(node)
        if value is BAD:
            return BAD
        problem = check(value)
        if problem:
            self.err(node, f"{where}: {problem}")
            return BAD
        return value

    def field(self, entries: Entries, key: str, where: str, check: Check, default: Any = None) -> Any:
        """The checked value at a key; `default` when absent (or null, unless default is BAD)."""
        if key not in entries:
            return default
        node = entries[key][1]
        if is_null(node) and default is not BAD:
            return default
        return self.read(node, join(where, key), check)

    def items(self, entries: Entries, key: str, where: str) -> list[yaml.Node] | None:
        """The item nodes of a list at a key ([] when absent or null), or None after reporting."""
        node = present(entries, key)
        if node is None:
            return []
        if not isinstance(node, yaml.SequenceNode):
            self.err(node, f"{join(where, key)}: must be a list")
            return None
        return list(node.value)

    def distinct(self, entries: Entries, key: str, where: str, check: Check) -> list[Any] | None:
        """A list of checked values at a key (duplicates are reported), or None after reporting."""
        nodes = self.items(entries, key, where)
        if nodes is None:
            return None
        out = [self.read(n, f"{join(where, key)}[{i}]", check) for i, n in enumerate(nodes)]
        for i, value in enumerate(out):
            if value is not BAD and value in out[:i]:
                self.err(nodes[i], f"{join(where, key)}[{i}]: duplicate {value!r}")
        return None if any(v is BAD for v in out) else out
