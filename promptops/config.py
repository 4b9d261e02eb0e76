"""Typed settings read from PROMPTOPS_* environment variables; command-line flags override them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from promptops.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///./promptops.db"
_FALSE = ("0", "false", "no", "off")
_TRUE = ("1", "true", "yes", "on")


def _float(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{key} must be a number, got {raw!r}") from None


def _bool(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = (env.get(key) or "").strip().lower()
    if raw == "":
        return default
    if raw in _TRUE or raw in _FALSE:
        return raw in _TRUE
    raise ConfigError(f"{key} must be 1 or 0 (true/false, yes/no, on/off), got {env.get(key)!r}")


@dataclass(frozen=True)
class Settings:
    """Everything a promptops process needs to know, built once at an entry point and passed in."""

    database_url: str = DEFAULT_DATABASE_URL
    prompts_dir: Path = Path("./prompts")
    evals_dir: Path = Path("./evals")
    config_path: Path = Path("./promptops.yaml")  # the providers file; optional
    store_io: bool = True  # store each call's variables and output
    redis_url: str | None = field(default=None, repr=False)  # shared response cache; may hold a password
    host: str = "127.0.0.1"
    port: int = 8000
    secret_key: str | None = None  # signs decision ids and sessions; stored in the database if unset
    update_interval_seconds: float = 2.0  # how often the background loop checks for due epochs
    cache_refresh_seconds: float = 1.0  # how often a server polls the change counter
    writer_flush_seconds: float = 0.02  # batched decision/feedback writer cadence
    sync_on_start: bool = True
    max_body_bytes: int = 1_000_000
    # Host names (optionally host:port) the server answers besides its bound address, e.g. the
    # public name in front of a reverse proxy; see promptops.server.guard for how they are used.
    allowed_hosts: tuple[str, ...] = ()
    # /healthz reports 503 when more decisions than this wait to be stored.
    max_pending_decisions: int = 50_000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from the environment, with keyword overrides (None values are ignored)."""
        env = os.environ if env is None else env
        base = cls(
            database_url=env.get("PROMPTOPS_DATABASE_URL") or DEFAULT_DATABASE_URL,
            prompts_dir=Path(env.get("PROMPTOPS_PROMPTS_DIR") or "./prompts"),
            evals_dir=Path(env.get("PROMPTOPS_EVALS_DIR") or "./evals"),
            config_path=Path(env.get("PROMPTOPS_CONFIG") or "./promptops.yaml"),
            store_io=_bool(env, "PROMPTOPS_STORE_IO", True),
            redis_url=env.get("PROMPTOPS_REDIS_URL") or None,
            host=env.get("PROMPTOPS_HOST") or "127.0.0.1",
            port=int(_float(env, "PROMPTOPS_PORT", 8000)),
            secret_key=env.get("PROMPTOPS_SECRET_KEY") or None,
            update_interval_seconds=_float(env, "PROMPTOPS_UPDATE_INTERVAL", 2.0),
            cache_refresh_seconds=_float(env, "PROMPTOPS_CACHE_REFRESH", 1.0),
            allowed_hosts=tuple(
                h.strip().lower() for h in (env.get("PROMPTOPS_ALLOWED_HOSTS") or "").split(",") if h.strip()
            ),
        )
        clean = {k: v for k, v in overrides.items() if v is not None}
        for key in ("prompts_dir", "evals_dir", "config_path"):
            if key in clean:
                clean[key] = Path(clean[key])
        settings = replace(base, **clean)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ConfigError for settings that cannot work."""
        url = self.database_url
        if not (url.startswith("sqlite") or url.startswith("postgresql")):
            raise ConfigError(
                f"unsupported database URL {mask_url(url)!r}: use sqlite:///PATH or postgresql+psycopg://..."
            )
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be between 1 and 65535, got {self.port}")

    @property
    def is_loopback(self) -> bool:
        """Whether the server binds only to the loopback interface."""
        return self.host in ("127.0.0.1", "localhost", "::1") or self.host.startswith("127.")


def mask_url(url: str) -> str:
    """The URL with its password replaced by `***`, for printing and logging."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user, _, host = parts.netloc.rpartition("@")
        name = user.partition(":")[0]
        return urlunsplit(parts._replace(netloc=f"{name}:***@{host}"))
    except ValueError:
        return "<unparsable URL>"
