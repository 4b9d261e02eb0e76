"""The exception tree of promptops.

    PromptOpsError                    root: every error a user can cause
    ├── InvalidPromptFile             a prompt file failed validation (path, line, message; may hold many)
    │   └── InvalidEvalFile           an eval file or its dataset failed validation (the same problems)
    ├── InvalidInput                  a request or argument is malformed (bad variables, bad reward, ...)
    │   ├── VariableError             a template variable is missing, undeclared or of the wrong type
    │   └── UnknownMetric             feedback names a metric its decision does not accept
    ├── RenderError                   a template failed to render (sandbox violation, undefined name)
    ├── NotFound                      something named does not exist
    │   ├── PromptNotFound
    │   ├── VersionNotFound
    │   ├── LabelNotFound
    │   ├── DecisionNotFound
    │   ├── ExperimentNotFound
    │   ├── ModelNotFound             a gateway model name that is not `promptops/NAME[@...]`
    │   └── EvalRunNotFound
    ├── ExperimentStateError          the experiment is not in a state that allows the operation (409)
    ├── Conflict                      a concurrent change won the race (409)
    ├── AuthError                     missing or wrong credentials (401)
    │   └── Forbidden                 valid credentials without the right role (403)
    ├── ConfigError                   settings that cannot work (bad URL, unsafe bind without keys)
    │   └── InvalidConfigFile         promptops.yaml failed validation (PATH:LINE: message, all at once)
    ├── Unavailable                   the database cannot be reached right now (503)
    ├── ProviderNotConfigured         no such LLM provider, or its API key variable is unset (503)
    └── UpstreamError                 the LLM provider failed or answered garbage (502)
        ├── UpstreamTimeout           the provider did not answer in time (504)
        └── UpstreamRateLimited       the provider kept answering 429 (429)

Every exception carries structured fields; `code` is the stable machine-readable name used in
HTTP error bodies (`{"error": {"code": ..., "message": ...}}`). Upstream errors carry the provider,
model and upstream HTTP status, and whether the failed request may have been processed upstream
(billed) all the same; their messages never hold an API key or more than a short, cleaned excerpt of
the upstream body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class PromptOpsError(Exception):
    """Root of every error a user of promptops can cause."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class FileProblem:
    """One validation problem in a prompt file: where it is and what is wrong."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class InvalidPromptFile(PromptOpsError):
    """One or more prompt files failed validation; `problems` lists each as PATH:LINE: message."""

    code = "invalid_prompt_file"

    def __init__(self, problems: list[FileProblem]) -> None:
        self.problems = list(problems)
        first = self.problems[0] if self.problems else FileProblem("?", 0, "invalid prompt file")
        super().__init__("\n".join(str(p) for p in self.problems) or str(first))

    @property
    def path(self) -> str:
        """The path of the first problem."""
        return self.problems[0].path if self.problems else "?"

    @property
    def line(self) -> int:
        """The line of the first problem."""
        return self.problems[0].line if self.problems else 0


class InvalidEvalFile(InvalidPromptFile):
    """One or more eval files or datasets failed validation; `problems` lists each as PATH:LINE."""

    code = "invalid_eval_file"


class InvalidInput(PromptOpsError):
    """A request or argument is malformed."""

    code = "invalid_input"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class VariableError(InvalidInput):
    """A template variable is missing, undeclared, or of the wrong type."""

    code = "invalid_variables"


class UnknownMetric(InvalidInput):
    """Feedback names a metric its decision does not accept; `accepted` lists those it does."""

    code = "unknown_metric"

    def __init__(self, metric: str, accepted: tuple[str, ...]) -> None:
        shown = metric if len(metric) <= 64 else metric[:61] + "..."
        super().__init__(
            f"unknown metric {shown!r}; this decision accepts " + ", ".join(accepted), field="metric"
        )
        self.metric = metric
        self.accepted = accepted


class RenderError(PromptOpsError):
    """A template could not be rendered (sandbox violation or undefined name)."""

    code = "render_error"


class NotFound(PromptOpsError):
    """Something named does not exist."""

    code = "not_found"


class PromptNotFound(NotFound):
    """No prompt has that name."""

    code = "prompt_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"prompt {name!r} not found")
        self.name = name


class VersionNotFound(NotFound):
    """The prompt has no such version."""

    code = "version_not_found"

    def __init__(self, name: str, number: int) -> None:
        super().__init__(f"prompt {name!r} has no version {number}")
        self.name = name
        self.number = number


class LabelNotFound(NotFound):
    """No version of the prompt holds that label."""

    code = "label_not_found"

    def __init__(self, name: str, label: str) -> None:
        super().__init__(f"prompt {name!r} has no version labelled {label!r}")
        self.name = name
        self.label = label


class DecisionNotFound(NotFound):
    """No decision has that id."""

    code = "decision_not_found"

    def __init__(self, decision_id: str) -> None:
        shown = decision_id if len(decision_id) <= 80 else decision_id[:77] + "..."
        super().__init__(f"decision {shown!r} not found")
        self.decision_id = decision_id


class ExperimentNotFound(NotFound):
    """No experiment has that id."""

    code = "experiment_not_found"

    def __init__(self, experiment_id: int | str) -> None:
        super().__init__(f"experiment {experiment_id} not found")
        self.experiment_id = experiment_id


class ModelNotFound(NotFound):
    """The gateway's `model` does not name a promptops prompt (`promptops/NAME[@LABEL|@vN]`)."""

    code = "model_not_found"

    def __init__(self, model: str) -> None:
        shown = model if len(model) <= 80 else model[:77] + "..."
        super().__init__(
            f"model {shown!r} not found: use promptops/NAME, promptops/NAME@LABEL or promptops/NAME@vN"
        )
        self.model = model


class KeyNotFound(NotFound):
    """No API key has that id."""

    code = "key_not_found"

    def __init__(self, key_id: int) -> None:
        super().__init__(f"no key with id {key_id}")
        self.key_id = key_id


class EvalRunNotFound(NotFound):
    """No eval run has that id."""

    code = "eval_run_not_found"

    def __init__(self, run_id: int | str) -> None:
        super().__init__(f"eval run {run_id} not found")
        self.run_id = run_id


class ExperimentStateError(PromptOpsError):
    """The experiment's status does not allow the operation."""

    code = "experiment_state"

    def __init__(self, message: str, *, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


class Conflict(PromptOpsError):
    """A concurrent change won the race."""

    code = "conflict"


class AuthError(PromptOpsError):
    """Missing or wrong credentials."""

    code = "unauthorized"


class Forbidden(AuthError):
    """Valid credentials without the role the operation needs."""

    code = "forbidden"


class ConfigError(PromptOpsError):
    """Settings that cannot work."""

    code = "config_error"


class InvalidConfigFile(ConfigError):
    """promptops.yaml failed validation; `problems` lists each as PATH:LINE: message."""

    code = "invalid_config_file"

    def __init__(self, problems: list[FileProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems) or "invalid configuration file")


class Unavailable(PromptOpsError):
    """The database cannot be reached right now; retry later."""

    code = "unavailable"


class ProviderNotConfigured(PromptOpsError):
    """The named LLM provider does not exist, or the environment variable with its API key is unset."""

    code = "provider_not_configured"

    def __init__(self, message: str, *, provider: str | None) -> None:
        super().__init__(message)
        self.provider = provider


class UpstreamError(PromptOpsError):
    """The LLM provider failed, refused, or answered something that cannot be read."""

    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        model: str | None,
        http_status: int | None = None,
        may_have_been_processed: bool = False,
        result: Any = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.model = model
        self.http_status = http_status
        self.may_have_been_processed = may_have_been_processed
        # The provider layer's record of the failed call (a CallResult), for the caller to store.
        self.result = result


class UpstreamTimeout(UpstreamError):
    """The provider did not answer (or stopped answering) within the configured timeout."""

    code = "upstream_timeout"


class UpstreamRateLimited(UpstreamError):
    """The provider answered 429 on every attempt; `retry_after` is its last hint in seconds."""

    code = "upstream_rate_limited"

    def __init__(self, message: str, *, retry_after: float | None = None, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.retry_after = retry_after
