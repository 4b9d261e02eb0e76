"""Request and response schemas of the HTTP API, one module per concept: `common` (what every
request body shares), `glossary` (the answers read from service views), `errors`, `serving`
(render, serve, feedback), `prompts` (the registry and the audit log) and `experiments`."""

from __future__ import annotations

from promptops.server.schemas.common import (
    TEXT_PROBLEM,
    MetricName,
    PathInt,
    Strict,
    bad_text,
    examples,
)
from promptops.server.schemas.errors import (
    ERROR_MEANINGS,
    ErrorBody,
    ErrorPublic,
    error_responses,
)
from promptops.server.schemas.experiments import (
    ArmPublic,
    EpochPublic,
    EvalGatePublic,
    ExperimentCreate,
    ExperimentListPublic,
    ExperimentPublic,
    GuardrailPublic,
    HistoryPublic,
    HoldoutPublic,
    MetricPublic,
    PromoteCreate,
    SafetyPublic,
)
from promptops.server.schemas.glossary import (
    FIELD_DOCS,
    View,
)
from promptops.server.schemas.prompts import (
    AuditEntryPublic,
    AuditPublic,
    LabelCreate,
    LabelMovePublic,
    PromptListPublic,
    PromptPublic,
    PromptSummaryPublic,
    VersionDetailPublic,
    VersionPublic,
)
from promptops.server.schemas.serving import (
    FeedbackCreate,
    FeedbackPublic,
    Message,
    RenderCreate,
    RenderPublic,
    ServeCreate,
    ServePublic,
)

__all__ = [
    "ArmPublic",
    "PathInt",
    "AuditEntryPublic",
    "AuditPublic",
    "ERROR_MEANINGS",
    "EpochPublic",
    "ErrorBody",
    "ErrorPublic",
    "EvalGatePublic",
    "ExperimentCreate",
    "ExperimentListPublic",
    "ExperimentPublic",
    "FIELD_DOCS",
    "FeedbackCreate",
    "FeedbackPublic",
    "GuardrailPublic",
    "HistoryPublic",
    "HoldoutPublic",
    "LabelCreate",
    "LabelMovePublic",
    "Message",
    "MetricName",
    "MetricPublic",
    "PromoteCreate",
    "PromptListPublic",
    "PromptPublic",
    "PromptSummaryPublic",
    "RenderCreate",
    "RenderPublic",
    "SafetyPublic",
    "ServeCreate",
    "ServePublic",
    "Strict",
    "TEXT_PROBLEM",
    "VersionDetailPublic",
    "VersionPublic",
    "View",
    "bad_text",
    "error_responses",
    "examples",
]
