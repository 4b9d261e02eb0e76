"""The API's answer schemas and the services' typed views name the same fields."""

from __future__ import annotations

from dataclasses import fields

import orjson
import pytest
from pydantic import BaseModel, ValidationError

from promptops import domain
from promptops.server import schemas
from promptops.services import views
from tests.samples import triage

PAIRS = [
    (domain.Rendered, schemas.RenderPublic),
    (views.ServeView, schemas.ServePublic),
    (views.ArmView, schemas.ArmPublic),
    (views.ExperimentView, schemas.ExperimentPublic),
    (views.EpochView, schemas.EpochPublic),
    (views.AuditEntry, schemas.AuditEntryPublic),
    (views.PromptSummary, schemas.PromptSummaryPublic),
    (views.PromptView, schemas.PromptPublic),
    (views.VersionView, schemas.VersionPublic),
    (views.VersionDetail, schemas.VersionDetailPublic),
    (views.LabelMove, schemas.LabelMovePublic),
]

PROMPT = triage(
    "{min_hours: 0, min_samples_per_arm: 10, update_every: 10, min_update_minutes: 0, "
    "attribution_window_hours: 1}"
)


@pytest.mark.parametrize(("view", "model"), PAIRS, ids=lambda x: x.__name__)
def test_every_view_field_is_in_its_schema_and_back(view: type, model: type[BaseModel]) -> None:
    assert [f.name for f in fields(view)] == list(model.model_fields)


def test_a_field_the_schema_does_not_name_is_refused() -> None:
    with pytest.raises(ValidationError):
        schemas.AuditEntryPublic.model_validate(
            {
                "id": 1,
                "at": 0.0,
                "actor": "a",
                "action": "x",
                "prompt": None,
                "experiment_id": None,
                "message": "",
                "details": {},
                "extra": 1,
            }
        )


def test_service_answers_validate_against_their_schemas(ops, prompts_dir, clock) -> None:
    (prompts_dir / "triage.yaml").write_text(PROMPT, encoding="utf-8")
    ops.sync()
    for i in range(40):
        d = ops.serve("triage", {"message": "x"})
        ops.feedback(d.decision_id, i % 2)
    clock.advance(hours=1, seconds=5)
    ops.tick()
    exp = ops.experiments.get(1)
    assert exp.arms[0].sd is not None, exp  # the snapshot keeps each arm's sd
    as_json = orjson.loads(orjson.dumps({"experiments": ops.experiments.list_experiments()}))
    schemas.ExperimentListPublic.model_validate(as_json)
    schemas.HistoryPublic.model_validate(orjson.loads(orjson.dumps({"epochs": ops.experiments.history(1)})))
    schemas.AuditPublic.model_validate(orjson.loads(orjson.dumps({"entries": ops.registry.audit()})))


def test_registry_answers_validate_against_their_schemas(ops, prompts_dir) -> None:
    (prompts_dir / "triage.yaml").write_text(PROMPT, encoding="utf-8")
    ops.sync()
    moved = ops.registry.move_label("triage", 2, "staging", actor="t")
    assert (moved.previous, ops.registry.get_prompt("triage").production_version) == (None, 1)

    def check(model: type[BaseModel], answer: object) -> None:
        model.model_validate(orjson.loads(orjson.dumps(answer)))

    check(schemas.PromptListPublic, {"prompts": ops.registry.list_prompts()})
    check(schemas.PromptPublic, ops.registry.get_prompt("triage"))
    check(schemas.VersionDetailPublic, ops.registry.get_version("triage", 2))
    check(schemas.LabelMovePublic, moved)
