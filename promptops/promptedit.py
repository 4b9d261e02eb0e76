"""Rewriting a prompt file in place: `main` takes a version's content, keeping comments and key order.

YAML files are edited through ruamel.yaml's round-trip loader, so comments, key order and the
style of untouched parts survive; JSON files (which have no comments) through `json`, keeping key
order. A rewritten file is parsed again by `promptfiles` before it is returned: its `main` must hash
to exactly the content asked for, else nothing is written.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from .domain import PromptContent
from .errors import FileProblem, InvalidPromptFile
from .promptfiles import parse_prompt_text

# Where `model` goes when main had none: before the first of these keys, else at the end.
_MODEL_BEFORE = ("variables", "messages", "template")


@dataclass(frozen=True)
class Adoption:
    """What `adopt_text` changes: the new text and the variant and experiment it removed."""

    text: str
    removed_variant: str | None
    removed_experiment: bool


def _plain(value: Any) -> Any:
    """A round-trip node as plain data, for comparing with a version's content."""
    return json.loads(json.dumps(value, default=str))


def _flow(data: dict[str, Any]) -> CommentedMap:
    """A new mapping written on one line, `{a: 1, b: null}`, as prompt files usually are."""
    node = CommentedMap(data)
    node.fa.set_flow_style()
    return node


def _set_model(doc: dict[str, Any], model: dict[str, Any]) -> None:
    current = doc.get("model")
    if isinstance(current, dict) and _plain(current) == model:
        return
    if not model:
        doc.pop("model", None)
        return
    if isinstance(current, dict):
        # Update in place: the keys that stay keep their place and comments.
        for key in [k for k in current if k not in model]:
            del current[key]
        for key, value in model.items():
            if key not in current or _plain(current[key]) != value:
                current[key] = value
        return
    if isinstance(doc, CommentedMap):
        keys = list(doc)
        at = next((keys.index(k) for k in _MODEL_BEFORE if k in doc), len(keys))
        doc.insert(at, "model", _flow(model))
    else:
        items = list(doc.items())
        at = next((i for i, (k, _) in enumerate(items) if k in _MODEL_BEFORE), len(items))
        items.insert(at, ("model", model))
        doc.clear()
        doc.update(items)


def _set_body(doc: dict[str, Any], variant: dict[str, Any] | None, content: PromptContent) -> None:
    form = "messages" if content.messages is not None else "template"
    wanted: Any = content.to_dict()[form]
    if _plain(doc.get(form)) == wanted:
        return
    source = variant.get(form) if isinstance(variant, dict) else None
    # The variant's own node carries its comments and style; plain data is the last resort.
    if source is not None and _plain(source) == wanted:
        doc[form] = source
    elif isinstance(doc, CommentedMap) and form == "messages":
        doc[form] = CommentedSeq(_flow(m) for m in wanted)
    else:
        doc[form] = wanted


def _pin_variant(node: Any, old: PromptContent, main: PromptContent) -> None:
    """Keep a remaining variant's content as it was although main, which it inherits from, changed."""
    if not isinstance(node, dict):
        return
    if (
        "messages" not in node
        and "template" not in node
        and (old.messages != main.messages or old.template != main.template)
    ):
        form = "messages" if old.messages is not None else "template"
        node[form] = old.to_dict()[form]
    override = dict(_plain(node.get("model") or {}))
    for key in main.model:
        if key not in old.model:
            override[key] = None  # a null removes an inherited key
    for key, value in old.model.items():
        if key in override or main.model.get(key) != value:
            override[key] = value
    if _plain(node.get("model") or {}) == override:
        return
    if not override:
        node.pop("model", None)
    elif isinstance(node.get("model"), dict):
        model = node["model"]
        for key in [k for k in model if k not in override]:
            del model[key]
        for key, value in override.items():
            if key not in model or _plain(model[key]) != value:
                model[key] = value
    else:
        node["model"] = _flow(override) if isinstance(node, CommentedMap) else override


def _cache_of(content: PromptContent) -> Any:
    """The response cache settings of content, None when it has none (or no such setting)."""
    return content.to_dict().get("cache")


def _set_cache(node: dict[str, Any], wanted: Any, current: Any) -> None:
    """Write cache settings into a mapping when they differ from what it has now."""
    if wanted == current:
        return
    if wanted is None:
        node.pop("cache", None)
    else:
        node["cache"] = _flow(wanted) if isinstance(node, CommentedMap) else wanted


def _edit(
    doc: Any,
    content: PromptContent,
    variant_name: str | None,
    keep: dict[str, PromptContent],
    main_before: PromptContent,
) -> tuple[str | None, bool]:
    variants = doc.get("variants")
    if not isinstance(variants, dict):
        variants = {}
    variant = variants.get(variant_name) if variant_name is not None else None
    _set_body(doc, variant, content)
    _set_model(doc, dict(content.model))
    _set_cache(doc, _cache_of(content), _cache_of(main_before))
    removed = None
    if variant_name is not None and variant is not None:
        del variants[variant_name]
        removed = variant_name
        if not variants:
            del doc["variants"]
    for name, old in keep.items():
        if name in variants:
            _pin_variant(variants[name], old, content)
            if _cache_of(old) != _cache_of(content):
                _set_cache(variants[name], _cache_of(old), None)
    had_experiment = "experiment" in doc
    doc.pop("experiment", None)
    return removed, had_experiment


def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 4096  # never re-wrap long lines the user wrote
    y.indent(mapping=2, sequence=4, offset=2)
    # A null that removes an inherited model key reads `null`, not an empty value.
    y.representer.add_representer(
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    return y


def adopt_text(text: str, *, path: str, content: PromptContent, variant: str | None) -> Adoption:
    """The file's text with `main` set to `content`, `variant` out of `variants` and the
    experiment block removed; the other variants keep their content (an inherited part that main
    no longer has is written into them). Raises InvalidPromptFile when the result would not hash
    alike."""
    before = parse_prompt_text(text, path=path)
    bom = "\ufeff" if text.startswith("\ufeff") else ""  # kept, as the file had it
    text = text.removeprefix(bom)
    keep = {k: v for k, v in before.variants.items() if k != variant}
    removed_variant: str | None
    if path.endswith(".json"):
        doc = json.loads(text)
        removed_variant, removed_experiment = _edit(doc, content, variant, keep, before.content)
        new = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    else:
        y = _yaml()
        doc = y.load(text)
        removed_variant, removed_experiment = _edit(doc, content, variant, keep, before.content)
        buf = io.StringIO()
        y.dump(doc, buf)
        new = buf.getvalue().rstrip("\n") + "\n"  # no blank tail left by a removed block
    definition = parse_prompt_text(new, path=path)
    if definition.content.content_hash() != content.content_hash():
        raise InvalidPromptFile(
            [
                FileProblem(
                    path,
                    definition.line,
                    "cannot rewrite main to the production content: its variables differ from the "
                    "file's; edit the file by hand",
                )
            ]
        )
    for name, old in keep.items():
        if definition.variants[name].content_hash() != old.content_hash():
            raise InvalidPromptFile(
                [
                    FileProblem(
                        path,
                        definition.line,
                        f"cannot keep variant {name!r} unchanged; edit the file by hand",
                    )
                ]
            )
    return Adoption(bom + new, removed_variant, removed_experiment)
