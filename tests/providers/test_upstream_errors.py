"""The provider errors' codes and the HTTP statuses they map to."""

from __future__ import annotations

import pytest

from promptops import errors as e
from promptops.server.errors import promptops_error_body


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        pytest.param(e.UpstreamError("x", provider="p", model="m"), 502, "upstream_error", id="error"),
        pytest.param(e.UpstreamTimeout("x", provider="p", model="m"), 504, "upstream_timeout", id="timeout"),
        pytest.param(
            e.UpstreamRateLimited("x", provider="p", model="m", retry_after=3.0),
            429,
            "upstream_rate_limited",
            id="rate-limited",
        ),
        pytest.param(
            e.ProviderNotConfigured("x", provider="p"), 503, "provider_not_configured", id="not-configured"
        ),
        pytest.param(
            e.InvalidConfigFile([e.FileProblem("promptops.yaml", 3, "bad")]),
            400,
            "invalid_config_file",
            id="config-file",
        ),
    ],
)
def test_status_and_code(error, status, code):
    assert promptops_error_body(error) == (status, {"error": {"code": code, "message": error.message}})


def test_upstream_errors_carry_their_fields():
    error = e.UpstreamRateLimited(
        "slow down", provider="p", model="m", http_status=429, retry_after=2.0, may_have_been_processed=False
    )
    assert (error.provider, error.model, error.http_status, error.retry_after, error.result) == (
        "p",
        "m",
        429,
        2.0,
        None,
    )
    assert str(error) == "slow down" and isinstance(error, e.UpstreamError)
    assert str(e.InvalidConfigFile([e.FileProblem("a.yaml", 3, "bad")])) == "a.yaml:3: bad"
