"""promptops.yaml: the LLM providers, their limits and prices, and the response cache settings.

    default_provider: local
    providers:
      local:  {base_url: "http://127.0.0.1:8080/v1"}
      openai: {base_url: "https://api.openai.com/v1", api_key_env: OPENAI_API_KEY,
               timeout_seconds: 60, max_retries: 2, max_concurrency: 16,
               headers: {OpenAI-Organization: org-1}}
      cheap:  {base_url: "...", prices: {my-model: {input_per_mtok: 0.1, output_per_mtok: 0.4}}}
    cache: {max_entries: 10000, warm_on_promote: 100}

The file is optional: without it one provider, `openai`, exists from OPENAI_BASE_URL and
OPENAI_API_KEY. An API key is never part of the configuration: only the name of the environment
variable that holds it, read at call time.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from promptops.errors import InvalidConfigFile, ProviderNotConfigured
from promptops.yamlnodes import BAD, Check, Entries, NodeReader, is_null, join

from .prices import ModelPrice

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_TIMEOUT_SECONDS = 60.0
DEFAULT_MAX_RETRIES = 2
DEFAULT_MAX_CONCURRENCY = 256
"""Calls in flight per provider (per server process) unless `max_concurrency` says otherwise:
calls per second times seconds per call, so 50 calls a second to a model that answers in 2 to 5
seconds need 100 to 250; each call holds two sockets (the caller's and the upstream's), so 256
stays well inside the usual limit of 1,024 open files."""
DEFAULT_CACHE_MAX_ENTRIES = 10_000
DEFAULT_WARM_ON_PROMOTE = 100

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
_EMPTY = "the file is empty"


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
    # After a promotion, replay the N most frequent recent requests of the prompt against the new
    # production in the background (0 or false: never; true: DEFAULT_WARM_ON_PROMOTE).
    warm_on_promote: int | bool = 0


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
    # The OpenAI API always needs a key, so a missing one is a clear "not configured" before any
    # call; another server (a local one) may need none: its key is sent only when set.
    needs_key = base_url == DEFAULT_OPENAI_BASE_URL or bool(env.get("OPENAI_API_KEY"))
    key_env = "OPENAI_API_KEY" if needs_key else None
    openai = ProviderConfig(name="openai", base_url=base_url, api_key_env=key_env)
    return ProvidersConfig(default_provider="openai", providers=MappingProxyType({"openai": openai}))


def load_providers_config(
    path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
) -> ProvidersConfig:
    """promptops.yaml at `path`, or the default configuration when there is no such file."""
    file = Path(path)
    if not file.exists():
        return default_config(env)
    checker = _ConfigChecker(str(file))
    return checker.config(checker.load_file(file, empty=_EMPTY), env)


def parse_providers_config(
    text: str, *, path: str = "promptops.yaml", env: Mapping[str, str] | None = None
) -> ProvidersConfig:
    """Parse promptops.yaml text; every problem is reported at once as PATH:LINE: message."""
    checker = _ConfigChecker(path)
    return checker.config(checker.load_text(text, empty=_EMPTY), env)


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) and value else f"must be a non-empty string, got {value!r}"


def _url(value: Any) -> str | None:
    ok = isinstance(value, str) and value.startswith(("http://", "https://"))
    return None if ok else "must be a URL starting with http:// or https://"


def _env_name(value: Any) -> str | None:
    # Never echo the value: a key pasted here by mistake must not reach a log.
    ok = isinstance(value, str) and _ENV_NAME.match(value)
    return None if ok else "must name an environment variable (letters, digits, '_'), not hold the key itself"


def _header_value(value: Any) -> str | None:
    ok = isinstance(value, str) and "\n" not in value and "\r" not in value
    return None if ok else "must be one line of text"  # the value may be a credential: not echoed


def _warm_count(value: Any) -> str | None:
    if isinstance(value, bool) or (isinstance(value, int) and 0 <= value <= 100_000):
        return None
    return f"must be a number of requests between 0 and 100000 (or true/false), got {value!r}"


def _between(low: float, high: float, *, integer: bool = False) -> Check:
    def check(value: Any) -> str | None:
        number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not number or (integer and not isinstance(value, int)):
            return f"must be {'an integer' if integer else 'a number'}, got {value!r}"
        return None if low <= value <= high else f"must be between {low:g} and {high:g}, got {value}"

    return check


_PROVIDER_CHECKS: dict[str, tuple[Check, Callable[[Any], Any]]] = {
    "base_url": (_url, lambda url: url.rstrip("/")),
    "api_key_env": (_env_name, str),
    "timeout_seconds": (_between(0.001, 3600), float),
    "max_retries": (_between(0, 10, integer=True), int),
    "max_concurrency": (_between(1, 4096, integer=True), int),
}


class _ConfigChecker(NodeReader):
    """Reads promptops.yaml's nodes, collecting every problem with its line."""

    def config(self, root: yaml.Node | None, env: Mapping[str, str] | None) -> ProvidersConfig:
        if root is None and [p.message for p in self.problems] == [_EMPTY]:
            return _with_path(default_config(env), self.path)
        if root is not None:
            self.scan(root)
            config = self.document(root, env)
        if self.problems:
            raise InvalidConfigFile(self.sorted_problems())
        return config

    def document(self, root: yaml.Node, env: Mapping[str, str] | None) -> ProvidersConfig:
        top = self.mapping(root, "", _TOP_KEYS) or {}
        providers: dict[str, ProviderConfig] = {}
        node = top["providers"][1] if "providers" in top else None
        if node is not None and not is_null(node):
            for name, (key, value) in (self.mapping(node, "providers", None) or {}).items():
                if not _NAME.match(name):
                    self.err(key, f"providers: bad name {name!r} (letters, digits, '.', '_', '-')")
                elif (provider := self.provider(name, value)) is not None:
                    providers[name] = provider
        if node is None:
            providers = dict(default_config(env).providers)
        default = self.default(top, providers)
        cache = self.cache(top["cache"][1]) if "cache" in top else CacheConfig()
        return ProvidersConfig(default, MappingProxyType(providers), cache, self.path)

    def default(self, top: Entries, providers: Mapping[str, Any]) -> str:
        if "default_provider" in top:
            name = self.field(top, "default_provider", "", _text, BAD)
            if name is not BAD and name not in providers and not self.problems:
                known = ", ".join(sorted(providers)) or "none"
                self.err(
                    top["default_provider"][1],
                    f"default_provider: {name!r} is not among the providers ({known})",
                )
            return name if name is not BAD else ""
        if "openai" in providers or not providers:
            return "openai"
        if len(providers) == 1:
            return next(iter(providers))
        self.err(top["providers"][0], "default_provider is required when several providers are declared")
        return ""

    def provider(self, name: str, node: yaml.Node) -> ProviderConfig | None:
        where = join("providers", name)
        before = len(self.problems)
        entries = self.mapping(node, where, _PROVIDER_KEYS, required=("base_url",))
        if entries is None:
            return None
        fields: dict[str, Any] = {}
        for key, (check, convert) in _PROVIDER_CHECKS.items():
            value = self.field(entries, key, where, check)
            if value is not None and value is not BAD:
                fields[key] = convert(value)
        if "prices" in entries:
            fields["prices"] = MappingProxyType(self.prices(entries["prices"][1], join(where, "prices")))
        if "headers" in entries:
            fields["headers"] = MappingProxyType(self.headers(entries["headers"][1], join(where, "headers")))
        return ProviderConfig(name=name, **fields) if len(self.problems) == before else None

    def prices(self, node: yaml.Node, where: str) -> dict[str, ModelPrice]:
        out: dict[str, ModelPrice] = {}
        for model, (_, value) in (self.mapping(node, where, None) or {}).items():
            at = join(where, model)
            entries = self.mapping(value, at, _PRICE_KEYS, required=_PRICE_KEYS[:2])
            if entries is None:
                continue
            figures = {key: self.field(entries, key, at, _between(0, 1_000_000)) for key in _PRICE_KEYS}
            given, cache_read = figures["input_per_mtok"], figures["output_per_mtok"]
            if None in (given, cache_read) or BAD in figures.values():
                continue
            read = figures["cache_read_per_mtok"]
            out[model] = ModelPrice(
                input_per_mtok=float(given),
                output_per_mtok=float(cache_read),
                cache_read_per_mtok=None if read is None else float(read),
            )
        return out

    def headers(self, node: yaml.Node, where: str) -> dict[str, str]:
        out: dict[str, str] = {}
        entries = self.mapping(node, where, None) or {}
        for name, (key, _) in entries.items():
            if not _HEADER_NAME.match(name):
                self.err(key, f"{where}: bad header name {name!r}")
            elif (text := self.field(entries, name, where, _header_value, BAD)) is not BAD:
                out[name] = text
        return out

    def cache(self, node: yaml.Node) -> CacheConfig:
        if is_null(node):
            return CacheConfig()
        entries = self.mapping(node, "cache", _CACHE_KEYS) or {}
        fields = {
            "max_entries": self.field(entries, "max_entries", "cache", _between(0, 10_000_000, integer=True)),
            "warm_on_promote": self.field(entries, "warm_on_promote", "cache", _warm_count),
        }
        return CacheConfig(**{k: v for k, v in fields.items() if v is not None and v is not BAD})


def _with_path(config: ProvidersConfig, path: str) -> ProvidersConfig:
    return ProvidersConfig(config.default_provider, config.providers, config.cache, path)
