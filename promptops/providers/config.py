"""promptops.yaml: the LLM providers, their limits and prices, and the response cache settings.

    default_provider: local
    providers:
      local:  {base_url: "http://127.0.0.1:8080/v1"}
      openai: {base_url: "https://api.openai.com/v1", api_key_env: OPENAI_API_KEY,
               timeout_seconds: 60, max_retries: 2, max_concurrency: 16,
               headers: {OpenAI-Organization: org-1}}
      cheap:  {base_url: "...", prices: {my-model: {input_per_mtok: 0.1, output_per_mtok: 0.4}}}
    cache: {max_entries: 10000, warm_on_promote: false}

The file is optional: without it one provider, `openai`, exists from OPENAI_BASE_URL and
OPENAI_API_KEY. An API key is never part of the configuration: only the name of the environment
variable that holds it, read at call time.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from promptops.errors import FileProblem, InvalidConfigFile, ProviderNotConfigured

from .prices import ModelPrice

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_TIMEOUT_SECONDS = 60.0
DEFAULT_MAX_RETRIES = 2
DEFAULT_MAX_CONCURRENCY = 16
DEFAULT_CACHE_MAX_ENTRIES = 10_000

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")
_TOP_KEYS = ("default_provider", "providers", "cache")
_PROVIDER_KEYS = (
    "base_url",
    "api_key_env",
    "timeout_seconds",
    "max_retries",
    "max_concurrency",
    "prices",
    "headers",
)
_PRICE_KEYS = ("input_per_mtok", "output_per_mtok", "cache_read_per_mtok")
_CACHE_KEYS = ("max_entries", "warm_on_promote")
_YAML = "tag:yaml.org,2002:"
_BAD: Any = object()


@dataclass(frozen=True)
class ProviderConfig:
    """One OpenAI-compatible provider: where it is, the name of its key variable, limits, prices."""

    name: str
    base_url: str
    api_key_env: str | None = None
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    max_retries: int = DEFAULT_MAX_RETRIES
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    prices: Mapping[str, ModelPrice] = field(default_factory=dict)
    # Extra headers may hold credentials of their own, so they stay out of reprs.
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    def api_key(self, env: Mapping[str, str] | None = None) -> str | None:
        """The API key read now from the named variable; None when the provider needs none."""
        if self.api_key_env is None:
            return None
        value = (os.environ if env is None else env).get(self.api_key_env)
        if not value:
            raise ProviderNotConfigured(
                f"provider {self.name!r}: environment variable {self.api_key_env} is not set",
                provider=self.name,
            )
        return value


@dataclass(frozen=True)
class CacheConfig:
    """The response cache settings of promptops.yaml (used by the gateway's cache)."""

    max_entries: int = DEFAULT_CACHE_MAX_ENTRIES  # of the in-process layer
    warm_on_promote: bool = False  # replay cached requests of the old production on promotion


@dataclass(frozen=True)
class ProvidersConfig:
    """The parsed promptops.yaml (or the default without one)."""

    default_provider: str
    providers: Mapping[str, ProviderConfig]
    cache: CacheConfig = CacheConfig()
    path: str | None = None  # the file it came from; None for the default

    def provider(self, name: str | None = None) -> ProviderConfig:
        """The named provider (the default one for None), or ProviderNotConfigured."""
        wanted = name or self.default_provider
        found = self.providers.get(wanted)
        if found is None:
            known = ", ".join(sorted(self.providers)) or "none"
            raise ProviderNotConfigured(
                f"provider {wanted!r} is not configured (known: {known})", provider=wanted
            )
        return found


def default_config(env: Mapping[str, str] | None = None) -> ProvidersConfig:
    """The configuration without a file: one provider `openai` from OPENAI_BASE_URL/OPENAI_API_KEY."""
    env = os.environ if env is None else env
    base_url = (env.get("OPENAI_BASE_URL") or DEFAULT_OPENAI_BASE_URL).rstrip("/")
    # A local server needs no key: the variable is only required when it is there to be used.
    key_env = "OPENAI_API_KEY" if env.get("OPENAI_API_KEY") else None
    openai = ProviderConfig(name="openai", base_url=base_url, api_key_env=key_env)
    return ProvidersConfig(default_provider="openai", providers=MappingProxyType({"openai": openai}))


def load_providers_config(
    path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
) -> ProvidersConfig:
    """promptops.yaml at `path`, or the default configuration when there is no such file."""
    file = Path(path)
    if not file.exists():
        return default_config(env)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidConfigFile([FileProblem(str(file), 0, f"cannot read: {exc}")]) from None
    return parse_providers_config(text, path=str(file), env=env)


def parse_providers_config(
    text: str, *, path: str = "promptops.yaml", env: Mapping[str, str] | None = None
) -> ProvidersConfig:
    """Parse promptops.yaml text; every problem is reported at once as PATH:LINE: message."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise InvalidConfigFile([FileProblem(path, line, f"invalid YAML: {exc.problem}")]) from None
    except yaml.YAMLError as exc:
        raise InvalidConfigFile([FileProblem(path, 1, f"invalid YAML: {exc}")]) from None
    if root is None or _is_null(root):
        return _with_path(default_config(env), path)
    reader = _Reader(path, loader)
    config = reader.config(root, env)
    if reader.problems:
        raise InvalidConfigFile(sorted(reader.problems, key=lambda p: p.line))
    return config


def _with_path(config: ProvidersConfig, path: str) -> ProvidersConfig:
    return ProvidersConfig(config.default_provider, config.providers, config.cache, path)


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _YAML + "null"


class _Reader:
    """Reads the composed document, collecting every problem with its line."""

    def __init__(self, path: str, loader: yaml.SafeLoader) -> None:
        self.path = path
        self.loader = loader
        self.problems: list[FileProblem] = []

    def err(self, node: yaml.Node, message: str) -> None:
        self.problems.append(FileProblem(self.path, _line(node), message))

    def mapping(
        self, node: yaml.Node, where: str, allowed: tuple[str, ...] | None
    ) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
        if not isinstance(node, yaml.MappingNode):
            self.err(node, f"{where}: must be a mapping")
            return None
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key, value in node.value:
            if not (isinstance(key, yaml.ScalarNode) and key.tag == _YAML + "str"):
                self.err(key, f"{where}: keys must be strings")
            elif key.value in out:
                first = _line(out[key.value][0])
                self.err(key, f"{where}: duplicate key {key.value!r} (first at line {first})")
            elif allowed is not None and key.value not in allowed:
                hint = difflib.get_close_matches(key.value, allowed, n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                self.err(key, f"{where}: unknown key {key.value!r}{extra}")
            else:
                out[key.value] = (key, value)
        return out

    def scalar(self, node: yaml.Node, where: str, kind: str, *, secret: bool = False) -> Any:
        """A checked scalar; `secret` keeps the value out of the message."""
        value: Any = _BAD
        if isinstance(node, yaml.ScalarNode) and node.tag.startswith(_YAML):
            try:
                value = self.loader.construct_object(node, deep=True)
            except (yaml.YAMLError, ValueError, TypeError):
                value = _BAD
        ok = {
            "string": isinstance(value, str) and value != "",
            "number": isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value),
            "integer": isinstance(value, int) and not isinstance(value, bool),
            "boolean": isinstance(value, bool),
        }[kind]
        if not ok:
            got = "" if secret or not isinstance(node, yaml.ScalarNode) else f", got {node.value!r}"
            what = {"string": "a non-empty string", "integer": "an integer"}.get(kind, f"a {kind}")
            self.err(node, f"{where}: must be {what}{got}")
            return _BAD
        return value

    def ranged(self, node: yaml.Node, where: str, kind: str, low: float, high: float) -> Any:
        value = self.scalar(node, where, kind)
        if value is not _BAD and not low <= value <= high:
            self.err(node, f"{where}: must be between {low:g} and {high:g}, got {value}")
            return _BAD
        return value

    def config(self, root: yaml.Node, env: Mapping[str, str] | None) -> ProvidersConfig:
        top = self.mapping(root, "promptops.yaml", _TOP_KEYS) or {}
        providers: dict[str, ProviderConfig] = {}
        if "providers" in top and not _is_null(top["providers"][1]):
            entries = self.mapping(top["providers"][1], "providers", None) or {}
            for name, (key, value) in entries.items():
                if not _NAME.match(name):
                    self.err(key, f"providers: bad name {name!r} (letters, digits, '.', '_', '-')")
                    continue
                provider = self.provider(name, value)
                if provider is not None:
                    providers[name] = provider
        if not providers and "providers" not in top:
            fallback = default_config(env)
            providers = dict(fallback.providers)
        default = self.default(top, providers)
        cache = self.cache(top["cache"][1]) if "cache" in top else CacheConfig()
        return ProvidersConfig(default, MappingProxyType(providers), cache, self.path)

    def default(self, top: dict[str, tuple[yaml.Node, yaml.Node]], providers: Mapping[str, Any]) -> str:
        if "default_provider" in top:
            node = top["default_provider"][1]
            name = self.scalar(node, "default_provider", "string")
            if name is not _BAD and name not in providers and not self.problems:
                known = ", ".join(sorted(providers)) or "none"
                self.err(node, f"default_provider: {name!r} is not among the providers ({known})")
            return name if name is not _BAD else ""
        if "openai" in providers or not providers:
            return "openai"
        if len(providers) == 1:
            return next(iter(providers))
        self.err(top["providers"][0], "default_provider is required when several providers are declared")
        return ""

    def provider(self, name: str, node: yaml.Node) -> ProviderConfig | None:
        where = f"providers.{name}"
        entries = self.mapping(node, where, _PROVIDER_KEYS)
        if entries is None:
            return None
        before = len(self.problems)
        if "base_url" not in entries:
            self.err(node, f"{where}: missing required key 'base_url'")
        fields: dict[str, Any] = {}
        for key, (_, value) in entries.items():
            at = f"{where}.{key}"
            if key == "base_url":
                url = self.scalar(value, at, "string")
                if url is not _BAD and not url.startswith(("http://", "https://")):
                    self.err(value, f"{at}: must start with http:// or https://")
                fields[key] = url.rstrip("/") if isinstance(url, str) else url
            elif key == "api_key_env":
                env_name = self.scalar(value, at, "string", secret=True)
                if env_name is not _BAD and not _ENV_NAME.match(env_name):
                    # Never echo it: a misplaced key pasted here must not reach a log.
                    self.err(value, f"{at}: must name an environment variable (letters, digits, '_'), "
                                    "not hold the key itself")
                fields[key] = env_name
            elif key == "timeout_seconds":
                fields[key] = self.ranged(value, at, "number", 0.001, 3600)
            elif key == "max_retries":
                fields[key] = self.ranged(value, at, "integer", 0, 10)
            elif key == "max_concurrency":
                fields[key] = self.ranged(value, at, "integer", 1, 4096)
            elif key == "prices":
                fields[key] = MappingProxyType(self.prices(value, at))
            elif key == "headers":
                fields[key] = MappingProxyType(self.headers(value, at))
        if len(self.problems) > before:
            return None
        if "timeout_seconds" in fields:
            fields["timeout_seconds"] = float(fields["timeout_seconds"])
        return ProviderConfig(name=name, **fields)

    def prices(self, node: yaml.Node, where: str) -> dict[str, ModelPrice]:
        out: dict[str, ModelPrice] = {}
        for model, (_, value) in (self.mapping(node, where, None) or {}).items():
            at = f"{where}.{model}"
            entries = self.mapping(value, at, _PRICE_KEYS)
            if entries is None:
                continue
            figures: dict[str, Any] = {}
            for key in _PRICE_KEYS[:2]:
                if key not in entries:
                    self.err(value, f"{at}: missing required key {key!r}")
            for key, (_, figure) in entries.items():
                figures[key] = self.ranged(figure, f"{at}.{key}", "number", 0, 1_000_000)
            if all(k in figures for k in _PRICE_KEYS[:2]) and all(v is not _BAD for v in figures.values()):
                cache_read = figures.get("cache_read_per_mtok")
                out[model] = ModelPrice(
                    input_per_mtok=float(figures["input_per_mtok"]),
                    output_per_mtok=float(figures["output_per_mtok"]),
                    cache_read_per_mtok=None if cache_read is None else float(cache_read),
                )
        return out

    def headers(self, node: yaml.Node, where: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, (key, value) in (self.mapping(node, where, None) or {}).items():
            if not _HEADER_NAME.match(name):
                self.err(key, f"{where}: bad header name {name!r}")
                continue
            text = self.scalar(value, f"{where}.{name}", "string", secret=True)
            if text is not _BAD and ("\n" in text or "\r" in text):
                self.err(value, f"{where}.{name}: must be one line")
            elif text is not _BAD:
                out[name] = text
        return out

    def cache(self, node: yaml.Node) -> CacheConfig:
        if _is_null(node):
            return CacheConfig()
        entries = self.mapping(node, "cache", _CACHE_KEYS) or {}
        fields: dict[str, Any] = {}
        if "max_entries" in entries:
            fields["max_entries"] = self.ranged(entries["max_entries"][1], "cache.max_entries",
                                                "integer", 0, 10_000_000)
        if "warm_on_promote" in entries:
            fields["warm_on_promote"] = self.scalar(entries["warm_on_promote"][1],
                                                    "cache.warm_on_promote", "boolean")
        return CacheConfig(**{k: v for k, v in fields.items() if v is not _BAD})
