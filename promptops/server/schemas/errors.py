"""The error answer every route shares, and what each status means."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from promptops.server.schemas.common import examples


class ErrorBody(BaseModel):
    """The error details."""

    code: str = Field(description="A stable machine-readable code, e.g. `prompt_not_found`.")
    message: str = Field(description="What went wrong, for people.")


class ErrorPublic(BaseModel):
    """Every error answer has this shape."""

    model_config = examples({"error": {"code": "prompt_not_found", "message": "prompt 'nope' not found"}})

    error: ErrorBody = Field(description="The error.")


ERROR_MEANINGS = {
    401: "No API key, or an unknown or revoked one.",
    403: "The key's role may not do this, or a cross-origin or foreign-Host request would change something.",
    404: "The prompt, version, label, decision or experiment does not exist.",
    409: "The experiment is not in a state that allows this.",
    413: "The request body is larger than the server accepts.",
    422: "The request is malformed: a value of the wrong type or range, or variables the prompt refuses.",
    429: "The model provider is rate-limiting the calls; retry later.",
    502: "The model provider failed or answered something unreadable.",
    503: "The database (or, for the gateway, the provider's configuration) is unavailable.",
    504: "The model provider did not answer in time.",
}
"""What each error status of the API means, as the OpenAPI document says."""


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of a route that can answer these error statuses."""
    return {code: {"model": ErrorPublic, "description": ERROR_MEANINGS[code]} for code in codes}
