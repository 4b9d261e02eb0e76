"""The registry: prompts, their versions and labels, and the audit log."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from promptops.server.schemas.common import Strict, examples
from promptops.server.schemas.glossary import View


class LabelCreate(Strict):
    """Move a label to a version."""

    model_config = examples({"version": 3})

    version: int = Field(ge=1, description="The version that gets the label.")


class AuditEntryPublic(View):
    """One entry of the audit log (the fields of `AuditEntry`)."""

    id: int
    at: float
    actor: str
    action: str
    prompt: str | None
    experiment_id: int | None
    message: str
    details: dict[str, Any]


class AuditPublic(View):
    """A page of the audit log, newest first."""

    entries: list[AuditEntryPublic]


class PromptSummaryPublic(View):
    """A prompt as listed (the fields of `PromptSummary`)."""

    name: str
    description: str
    tags: list[str]
    production_version: int | None
    versions: int = Field(description="How many versions it has.")
    source_path: str | None
    updated_at: float


class PromptListPublic(View):
    """Every prompt, by name."""

    prompts: list[PromptSummaryPublic]


class VersionPublic(View):
    """One version in a prompt's history (the fields of `VersionView`)."""

    number: int
    variant: str
    content_hash: str
    source_path: str | None
    git_commit: str | None
    git_author: str | None
    git_state: str | None
    created_at: float
    labels: list[str] = Field(description="The labels this version holds.")


class VersionDetailPublic(View):
    """One version with its content (the fields of `VersionDetail`)."""

    prompt: str
    number: int
    variant: str
    content_hash: str
    source_path: str | None
    git_commit: str | None
    git_author: str | None
    git_state: str | None
    created_at: float
    labels: list[str] = Field(description="The labels this version holds.")
    content: dict[str, Any]


class PromptPublic(View):
    """A prompt with its labels and versions, newest first (the fields of `PromptView`)."""

    name: str
    description: str
    tags: list[str]
    source_path: str | None
    created_at: float
    updated_at: float
    labels: dict[str, int] = Field(description="Each label and the version it points at.")
    versions: list[VersionPublic] = Field(description="Its versions, newest first.")


class LabelMovePublic(View):
    """Where a label points after a move, and where it pointed before (the fields of
    `LabelMove`)."""

    prompt: str
    label: str
    version: int
    previous: int | None
