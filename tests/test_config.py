"""Settings from the environment, their checks, and URL masking."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptops.config import DEFAULT_DATABASE_URL, Settings, mask_url
from promptops.errors import ConfigError


def test_an_empty_environment_gives_the_defaults():
    s = Settings.from_env({})
    assert s == Settings()
    assert (s.database_url, s.prompts_dir, s.host, s.port) == (
        DEFAULT_DATABASE_URL,
        Path("./prompts"),
        "127.0.0.1",
        8000,
    )
    assert s.store_io and s.is_loopback and s.redis_url is None and s.allowed_hosts == ()


def test_the_environment_is_read():
    s = Settings.from_env(
        {
            "PROMPTOPS_DATABASE_URL": "postgresql+psycopg://po@db/po",
            "PROMPTOPS_PROMPTS_DIR": "p",
            "PROMPTOPS_EVALS_DIR": "e",
            "PROMPTOPS_CONFIG": "c.yaml",
            "PROMPTOPS_STORE_IO": "off",
            "PROMPTOPS_REDIS_URL": "redis://:pw@cache:6379/0",
            "PROMPTOPS_HOST": "0.0.0.0",
            "PROMPTOPS_PORT": "9000",
            "PROMPTOPS_SECRET_KEY": "k",
            "PROMPTOPS_UPDATE_INTERVAL": "5",
            "PROMPTOPS_CACHE_REFRESH": "0.5",
            "PROMPTOPS_ALLOWED_HOSTS": " A.example, ,b.example:8443 ",
        }
    )
    assert s.database_url == "postgresql+psycopg://po@db/po"
    assert (s.prompts_dir, s.evals_dir, s.config_path) == (Path("p"), Path("e"), Path("c.yaml"))
    assert not s.store_io and s.redis_url == "redis://:pw@cache:6379/0"
    assert (s.host, s.port, s.secret_key) == ("0.0.0.0", 9000, "k")
    assert (s.update_interval_seconds, s.cache_refresh_seconds) == (5.0, 0.5)
    assert s.allowed_hosts == ("a.example", "b.example:8443")
    assert not s.is_loopback
    assert "pw" not in repr(s)  # the Redis URL may hold a password


def test_empty_values_mean_the_default():
    s = Settings.from_env(
        {
            "PROMPTOPS_PORT": "",
            "PROMPTOPS_STORE_IO": "",
            "PROMPTOPS_DATABASE_URL": "",
            "PROMPTOPS_REDIS_URL": "",
        }
    )
    assert (s.port, s.store_io, s.database_url, s.redis_url) == (8000, True, DEFAULT_DATABASE_URL, None)


@pytest.mark.parametrize(
    "raw, value",
    [
        ("1", True),
        ("TRUE", True),
        (" yes ", True),
        ("on", True),
        ("0", False),
        ("False", False),
        ("no", False),
        ("off", False),
    ],
)
def test_booleans_take_the_usual_spellings(raw, value):
    assert Settings.from_env({"PROMPTOPS_STORE_IO": raw}).store_io is value


@pytest.mark.parametrize(
    "env, message",
    [
        ({"PROMPTOPS_STORE_IO": "maybe"}, "PROMPTOPS_STORE_IO must be 1 or 0"),
        ({"PROMPTOPS_PORT": "eighty"}, "PROMPTOPS_PORT must be a number, got 'eighty'"),
        ({"PROMPTOPS_UPDATE_INTERVAL": "soon"}, "PROMPTOPS_UPDATE_INTERVAL must be a number"),
        ({"PROMPTOPS_PORT": "0"}, "port must be between 1 and 65535, got 0"),
        ({"PROMPTOPS_PORT": "70000"}, "port must be between 1 and 65535"),
        ({"PROMPTOPS_DATABASE_URL": "mysql://x"}, "unsupported database URL 'mysql://x'"),
    ],
)
def test_bad_settings_are_one_config_error(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_overrides_win_and_none_is_ignored():
    s = Settings.from_env(
        {"PROMPTOPS_PORT": "9000", "PROMPTOPS_HOST": "0.0.0.0"}, port=7000, host=None, prompts_dir="here"
    )
    assert (s.port, s.host, s.prompts_dir) == (7000, "0.0.0.0", Path("here"))
    with pytest.raises(ConfigError, match="port"):
        Settings.from_env({}, port=0)


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
    ],
)
def test_loopback_hosts(host, loopback):
    assert Settings(host=host).is_loopback is loopback


@pytest.mark.parametrize(
    "url, shown",
    [
        (
            "postgresql+psycopg://po:hunter2@db.example:5432/po",
            "postgresql+psycopg://po:***@db.example:5432/po",
        ),
        ("postgresql+psycopg://po@db.example/po", "postgresql+psycopg://po@db.example/po"),
        ("sqlite:///./promptops.db", "sqlite:///./promptops.db"),
        ("redis://:secret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("postgresql://po:pw@[::1", "<unparsable URL>"),
    ],
)
def test_mask_url_hides_the_password(url, shown):
    assert mask_url(url) == shown


def test_an_unsupported_database_url_is_named_without_its_password():
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"PROMPTOPS_DATABASE_URL": "mysql://app:S3cretPW@db.internal/prod"})
    assert "S3cretPW" not in info.value.message
    assert "'mysql://app:***@db.internal/prod'" in info.value.message
