"""The answers read from service views: their base model and one glossary of their fields."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

# What the fields of the answers read from service views mean: one glossary, so a field is
# described alike wherever it appears (an arm, an experiment, an epoch, an audit entry).
FIELD_DOCS = {
    "version": "The version number.",
    "variant": "The variant the version came from (`main`: top level).",
    "decisions": "Serves of this arm.",
    "feedback": "Primary-metric values received.",
    "reward_sum": "Sum of the primary-metric values received.",
    "n": "Matured outcomes the statistics use.",
    "mean": "Posterior mean of the matured outcomes.",
    "sd": "Posterior standard deviation of the mean.",
    "ci_low": "Lower end of the 95% credible interval.",
    "ci_high": "Upper end of the 95% credible interval.",
    "p_best": "Probability of being the best arm.",
    "expected_loss": "Expected loss of choosing this arm.",
    "p_beats_control": "Probability of beating the control.",
    "weight": "Current share of traffic.",
    "is_control": "Whether this is the control (the first arm).",
    "calls": "Gateway calls made with this arm.",
    "error_rate": "Share of gateway calls that failed.",
    "cache_hit_rate": "Share of gateway calls answered from the cache.",
    "cost_usd_mean": "Mean cost of a call in USD.",
    "cost_usd_total": "Total cost of the calls in USD.",
    "latency_ms_p50": "Median call latency in ms.",
    "latency_ms_p95": "95th percentile latency in ms.",
    "prompt_tokens_mean": "Mean prompt tokens a call.",
    "completion_tokens_mean": "Mean completion tokens a call.",
    "id": "The id.",
    "prompt": "The prompt's name.",
    "status": "The experiment's status.",
    "winner": "The promoted version, once there is one.",
    "metric": "The primary metric.",
    "reward": "binary (0/1) or continuous (in [0, 1]).",
    "strategy": "thompson or fixed.",
    "auto_promote": "Whether the winner is promoted by itself.",
    "source": "Where the experiment was declared: `file` or `api`.",
    "control_version": "The control's version (the first arm).",
    "production_at_start": "The version that held production when the experiment started.",
    "control_is_production": "Whether the control held production at the start.",
    "created_at": "When it was created (Unix seconds).",
    "started_at": "When it started (Unix seconds).",
    "ended_at": "When it ended (Unix seconds).",
    "end_reason": "Why it ended.",
    "epoch": "The current epoch (allocation update) number.",
    "matured": "Outcomes matured so far, all arms.",
    "last_update_at": "When the allocation was last updated (Unix seconds).",
    "policy": "The policy settings in force.",
    "missing_feedback": "How a decision without feedback counts: zero or ignore.",
    "reason": "The latest update's explanation.",
    "srm_alarm": "Whether a sample ratio mismatch froze promotion.",
    "srm_p": "The sample-ratio test's p-value.",
    "value_remaining": "The leader's possible shortfall (95th percentile), relative to its mean.",
    "checks_done": "Stopping checks done so far.",
    "arms": "One entry per version, the control first.",
    "experiments": "Experiments, newest first.",
    "weights": "Traffic shares per arm in this epoch.",
    "matured_at_start": "Outcomes matured when the epoch started.",
    "checked": "Whether the stopping rule was checked at this epoch.",
    "assigned": "Decisions per arm in this epoch.",
    "epochs": "Epochs, oldest first.",
    "at": "When (Unix seconds).",
    "actor": "Who: `cli:USER`, an API key's name, or the system.",
    "action": "What happened, e.g. `label.move`.",
    "experiment_id": "The experiment concerned, if any.",
    "message": "What happened, for people.",
    "details": "Structured details (evidence of a promotion).",
    "entries": "Entries, newest first.",
    "units": "Units (a unit_id, else a decision) with a counted matured outcome.",
    "new_units": "Units first exposed on this arm: what the sample-ratio check counts.",
    "metrics": "Secondary and guardrail metrics: the declared names, or per arm {mean, ci_low, ci_high, n}.",
    "guardrails": "This challenger's guardrail verdicts with the estimated change.",
    "flags": "Safety flags that froze promotion: srm, feedback.",
    "safety": "Each raised safety flag with its sentence and the counts behind it.",
    "stop_reason": "Why the policy ended it: winner, limit, equivalent, no_meaningful_winner, guardrails.",
    "holdout": "The guarded rollout: the promoted and the previous version and the latest test.",
    "requires_eval": "The eval every arm must pass before the experiment starts, if any.",
    "gate": "Where the arms stand against the required eval (null when none is required).",
    "eval": "The eval's name.",
    "passed": "Whether every arm passed the gate.",
    "waiting": "Versions with no run of the eval on its current dataset.",
    "reasons": "Why the runs there fail the gate.",
    "state": "allowed, pending or blocked.",
    "diff": "The challenger's mean minus the control's.",
    "diff_low": "Low end of the 95% interval of the difference.",
    "diff_high": "High end of the 95% interval of the difference.",
    "relative": "Whether the margin is relative to the control's mean.",
    "sentence": "The verdict or the flag in words.",
    "flag": "srm or feedback.",
    "evidence": "The counts behind a flag.",
    "new_version": "The promoted version.",
    "old_version": "The previous production version, holding the holdout share.",
    "p_old_better": "P(the previous version is better) on the most recent matured decisions.",
    "prompts": "Prompts, by name.",
    "name": "The prompt's name.",
    "description": "What the prompt is for.",
    "tags": "Free-form tags from the prompt file.",
    "production_version": "The version holding the production label, if any.",
    "source_path": "The file it was synced from.",
    "updated_at": "When it last changed (Unix seconds).",
    "number": "The version number.",
    "content_hash": "Hash of the version's content.",
    "git_commit": "The git commit of the file at sync, if known.",
    "git_author": "The author of that commit, if known.",
    "git_state": "The file's git state at sync: `dirty` or `untracked` when not as committed.",
    "content": "The version's content: messages or template, model and variables.",
    "label": "The label's name.",
    "previous": "The version the label held before, if any.",
}
"""Descriptions of the fields of the answers read from service views."""


def _describe_fields(schema: dict[str, Any]) -> None:
    for name, prop in schema.get("properties", {}).items():
        prop.setdefault("description", FIELD_DOCS.get(name, ""))


class View(BaseModel):
    """An answer read from a service view: a field the schema does not name is an error, so the
    published schema and the answer cannot drift apart unnoticed."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_describe_fields)
