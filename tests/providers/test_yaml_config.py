"""promptops.yaml: parsing, PATH:LINE problems, the default without a file, and the new Settings."""

from __future__ import annotations

import pytest

from promptops.config import Settings
from promptops.errors import ConfigError, InvalidConfigFile, ProviderNotConfigured
from promptops.providers import (
    ModelPrice,
    ProviderConfig,
    load_providers_config,
    parse_providers_config,
)

CONTRACT_EXAMPLE = """\
default_provider: local
providers:
  local:   {base_url: "http://127.0.0.1:8080/v1"}                       # any OpenAI-compatible server
  openai:  {base_url: "https://api.openai.com/v1", api_key_env: OPENAI_API_KEY,
            timeout_seconds: 60, max_retries: 2, max_concurrency: 16}
  cheap:   {base_url: "https://cheap.example/v1/",
            prices: {my-model: {input_per_mtok: 0.1, output_per_mtok: 0.4}}}
cache: {max_entries: 500, warm_on_promote: true}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(InvalidConfigFile) as info:
        parse_providers_config(text, path="conf/promptops.yaml", env={})
    return [str(p) for p in info.value.problems]


def test_contract_example_parses():
    config = parse_providers_config(CONTRACT_EXAMPLE, path="promptops.yaml", env={})
    assert config.default_provider == "local"
    assert list(config.providers) == ["local", "openai", "cheap"]
    assert config.provider().name == "local"
    openai = config.provider("openai")
    assert (openai.api_key_env, openai.timeout_seconds, openai.max_retries, openai.max_concurrency) == (
        "OPENAI_API_KEY",
        60.0,
        2,
        16,
    )
    cheap = config.provider("cheap")
    assert cheap.base_url == "https://cheap.example/v1"
    assert cheap.prices == {"my-model": ModelPrice(0.1, 0.4)}
    assert (config.cache.max_entries, config.cache.warm_on_promote) == (500, True)


def test_every_problem_is_reported_with_path_and_line():
    text = """\
default_provider: local
providers:
  local:
    base_url: ftp://nowhere
    timeot_seconds: 3
  other:
    base_url: http://x
    max_retries: 99
    max_concurrency: 0
    prices: {m: {input_per_mtok: -1}}
cache: {max_entries: lots}
extra: 1
"""
    assert problems(text) == [
        "conf/promptops.yaml:4: providers.local.base_url: must be a URL starting with http:// or https://",
        "conf/promptops.yaml:5: providers.local: unknown key 'timeot_seconds'"
        " (did you mean 'timeout_seconds'?)",
        "conf/promptops.yaml:8: providers.other.max_retries: must be between 0 and 10, got 99",
        "conf/promptops.yaml:9: providers.other.max_concurrency: must be between 1 and 4096, got 0",
        "conf/promptops.yaml:10: providers.other.prices.m: missing required key 'output_per_mtok'",
        "conf/promptops.yaml:10: providers.other.prices.m.input_per_mtok:"
        " must be between 0 and 1e+06, got -1",
        "conf/promptops.yaml:11: cache.max_entries: must be an integer, got 'lots'",
        "conf/promptops.yaml:12: unknown key 'extra'",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "providers:\n  a: {base_url: http://x}\n  a: {base_url: http://y}\n",
            "conf/promptops.yaml:3: duplicate key 'a' (first at line 2)",
            id="duplicate",
        ),
        pytest.param(
            "a: &x 1\nb: *x\n", "conf/promptops.yaml:1: YAML anchors and aliases are not allowed", id="anchor"
        ),
        pytest.param("providers: [1, 2\n", "conf/promptops.yaml:2: invalid YAML", id="syntax"),
        pytest.param(
            "providers:\n  a: {base_url: http://x}\n  b: {base_url: http://y}\n",
            "conf/promptops.yaml:1: default_provider is required",
            id="no-default",
        ),
        pytest.param(
            "default_provider: c\nproviders:\n  a: {base_url: http://x}\n",
            "conf/promptops.yaml:1: default_provider: 'c' is not among the providers (a)",
            id="unknown-default",
        ),
        pytest.param(
            "providers:\n  a: {}\n", "conf/promptops.yaml:2: providers.a: missing required key", id="no-url"
        ),
        pytest.param(
            "providers:\n  a: {base_url: http://x, headers: {'bad name': v}}\n",
            "conf/promptops.yaml:2: providers.a.headers: bad header name",
            id="header",
        ),
    ],
)
def test_single_problems(text, expected):
    assert problems(text)[0].startswith(expected)


def test_a_key_pasted_into_api_key_env_is_not_echoed():
    found = problems("providers:\n  a: {base_url: http://x, api_key_env: sk-live-abcdef123456}\n")
    assert found == [
        "conf/promptops.yaml:2: providers.a.api_key_env: must name an environment variable "
        "(letters, digits, '_'), not hold the key itself"
    ]


def test_without_a_file_openai_comes_from_the_environment(tmp_path):
    env = {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1/", "OPENAI_API_KEY": "sk-secret-value-1234"}
    config = load_providers_config(tmp_path / "promptops.yaml", env=env)
    assert config.path is None and config.default_provider == "openai"
    openai = config.provider()
    assert (openai.base_url, openai.api_key_env) == ("http://127.0.0.1:9/v1", "OPENAI_API_KEY")
    assert openai.api_key(env) == "sk-secret-value-1234"
    assert "sk-secret" not in repr(config)
    # The OpenAI API without a key is not configured (a clear 503 before any call) ...
    plain = load_providers_config(tmp_path / "promptops.yaml", env={}).provider()
    assert (plain.base_url, plain.api_key_env) == ("https://api.openai.com/v1", "OPENAI_API_KEY")
    with pytest.raises(ProviderNotConfigured, match="OPENAI_API_KEY is not set"):
        plain.api_key({})
    # ... while a local server needs none.
    local_env = {"OPENAI_BASE_URL": "http://127.0.0.1:8080/v1"}
    local = load_providers_config(tmp_path / "promptops.yaml", env=local_env).provider()
    assert (local.api_key_env, local.api_key(local_env)) == (None, None)


def test_an_empty_file_is_the_default(tmp_path):
    path = tmp_path / "promptops.yaml"
    path.write_text("# nothing yet\n")
    assert load_providers_config(path, env={}).provider().name == "openai"


def test_unknown_provider_and_unset_key_are_not_configured():
    config = parse_providers_config(CONTRACT_EXAMPLE, env={})
    with pytest.raises(ProviderNotConfigured) as info:
        config.provider("nope")
    assert info.value.provider == "nope" and "known: cheap, local, openai" in info.value.message
    with pytest.raises(ProviderNotConfigured, match="OPENAI_API_KEY is not set"):
        config.provider("openai").api_key({})


def test_headers_stay_out_of_repr():
    provider = ProviderConfig(name="a", base_url="http://x", headers={"api-key": "hidden-credential"})
    assert "hidden-credential" not in repr(provider)


def test_settings_read_the_new_variables(tmp_path):
    settings = Settings.from_env(
        {
            "PROMPTOPS_CONFIG": str(tmp_path / "p.yaml"),
            "PROMPTOPS_STORE_IO": "0",
            "PROMPTOPS_EVALS_DIR": "ev",
            "PROMPTOPS_REDIS_URL": "redis://:pw@127.0.0.1:6379/0",
        }
    )
    assert settings.config_path == tmp_path / "p.yaml"
    assert settings.store_io is False
    assert str(settings.evals_dir) == "ev"
    assert settings.redis_url == "redis://:pw@127.0.0.1:6379/0"
    assert "pw@" not in repr(settings)
    defaults = Settings.from_env({})
    assert (str(defaults.config_path), defaults.store_io, str(defaults.evals_dir), defaults.redis_url) == (
        "promptops.yaml",
        True,
        "evals",
        None,
    )
    with pytest.raises(ConfigError, match="PROMPTOPS_STORE_IO"):
        Settings.from_env({"PROMPTOPS_STORE_IO": "maybe"})


def test_a_file_on_disk_is_checked_with_its_path(tmp_path):
    path = tmp_path / "promptops.yaml"
    path.write_text("providers:\n  local: {base_url: http://127.0.0.1:8080/v1, max_retries: -1}\n")
    with pytest.raises(InvalidConfigFile) as info:
        load_providers_config(path, env={})
    assert str(info.value) == f"{path}:2: providers.local.max_retries: must be between 0 and 10, got -1"
    path.write_text("providers:\n  local: {base_url: http://127.0.0.1:8080/v1}\n")
    config = load_providers_config(path, env={})
    assert config.path == str(path) and config.default_provider == "local"
