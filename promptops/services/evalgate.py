"""The eval gate of an experiment: `requires_eval: NAME` holds it as a draft until its arms pass.

Each arm needs a run of the eval on the dataset as it is now (the current content hash) whose
figures pass the eval's gate as the file states it now: the pass rate at least `min_pass_rate`,
and, for an arm that is not the production version, a paired comparison with the production
version (the run's baseline) that is not worse by more than `max_regression`. The latest such run
of each arm counts. The eval files are read from the evals folder, reloaded when a file changes.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from promptops.db.models import (
    ArmRow,
    EvalRunRow,
    EvalRunVersionRow,
    ExperimentGateRow,
    ExperimentRow,
    LabelRow,
    VersionRow,
)
from promptops.domain import PRODUCTION
from promptops.errors import InvalidEvalFile
from promptops.evalfiles import EvalDefinition, load_eval_files, unknown_eval_problem
from promptops.stats.evals import PairedComparison, check_gate, pass_rate


@dataclass(frozen=True)
class GateStatus:
    """Whether an experiment's arms passed its eval gate; else who still needs a run and why not."""

    eval: str
    passed: bool
    waiting: tuple[int, ...] = ()  # versions with no run on the current dataset
    reasons: tuple[str, ...] = ()

    @property
    def message(self) -> str:
        """One sentence for a draft's read."""
        if self.passed:
            return f"eval {self.eval!r}: every arm passed"
        parts = []
        if self.waiting:
            listed = ", ".join(f"v{n}" for n in self.waiting)
            parts.append(f"waiting for a passing run of eval {self.eval!r} on {listed}")
        parts.extend(self.reasons)
        return "; ".join(parts)


class EvalCatalog:
    """The eval files of a folder, loaded once and again whenever a file in it changes."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._signature: tuple[tuple[str, int, int], ...] | None = None
        self._definitions: dict[str, EvalDefinition] = {}
        self._problems: tuple[str, ...] = ()

    def _scan(self) -> tuple[tuple[str, int, int], ...]:
        found = []
        for root, _, files in os.walk(self.folder):
            for name in files:
                path = os.path.join(root, name)
                try:
                    info = os.stat(path)
                except OSError:
                    continue
                found.append((path, info.st_mtime_ns, info.st_size))
        return tuple(sorted(found))

    def load(self) -> tuple[dict[str, EvalDefinition], tuple[str, ...]]:
        """The valid evals by name, and the problems of the folder (all of them, as lines)."""
        if not self.folder.is_dir():
            return {}, ()
        with self._lock:
            signature = self._scan()
            if signature != self._signature:
                try:
                    loaded = load_eval_files([self.folder])
                    self._definitions, self._problems = {d.name: d for d in loaded}, ()
                except InvalidEvalFile as exc:
                    self._definitions = {}
                    self._problems = tuple(str(p) for p in exc.problems)
                self._signature = signature
            return dict(self._definitions), self._problems

    def names(self) -> set[str] | None:
        """The names of the valid evals; None when they cannot be told: there is no evals folder
        here (evals may be run from another checkout against the same database), or its files
        have problems (the eval named may be one of them)."""
        if not self.folder.is_dir():
            return None
        definitions, problems = self.load()
        return None if problems else set(definitions)

    def unknown(self, name: str) -> str | None:
        """Why `requires_eval: name` can never pass here (the folder is valid and has no such
        eval), or None."""
        known = self.names()
        return None if known is None else unknown_eval_problem(name, known, self.folder)

    def get(self, name: str) -> EvalDefinition | None:
        """The eval of that name, or None."""
        return self.load()[0].get(name)


def _comparison(data: dict[str, object]) -> PairedComparison:
    fields = dict(data)
    fields["improved"] = tuple(fields.get("improved") or ())  # type: ignore[arg-type]
    fields["regressed"] = tuple(fields.get("regressed") or ())  # type: ignore[arg-type]
    return PairedComparison(**fields)  # type: ignore[arg-type]


def gate_status(s: Session, exp: ExperimentRow, eval_name: str, catalog: EvalCatalog) -> GateStatus:
    """Where the experiment's arms stand against the eval gate (see the module)."""
    definition = catalog.get(eval_name)
    if definition is None:
        _, problems = catalog.load()
        why = "is invalid" if problems else f"is not defined in {catalog.folder}"
        return GateStatus(eval_name, False, reasons=(f"eval {eval_name!r} {why}",))
    arms = list(
        s.execute(
            select(ArmRow.idx, VersionRow.id, VersionRow.number, VersionRow.variant)
            .join(VersionRow, VersionRow.id == ArmRow.version_id)
            .where(ArmRow.experiment_id == exp.id)
            .order_by(ArmRow.idx)
        )
    )
    production_id = s.scalar(
        select(LabelRow.version_id).where(LabelRow.prompt_id == exp.prompt_id, LabelRow.name == PRODUCTION)
    )
    production = s.scalar(select(VersionRow.number).where(VersionRow.id == production_id))
    waiting: list[int] = []
    reasons: list[str] = []
    for _, version_id, number, variant in arms:
        q = (
            select(EvalRunVersionRow)
            .join(EvalRunRow, EvalRunRow.id == EvalRunVersionRow.run_id)
            .where(
                EvalRunRow.eval_name == eval_name,
                EvalRunRow.prompt_id == exp.prompt_id,
                EvalRunRow.dataset_hash == definition.dataset_hash,
                EvalRunVersionRow.version_id == version_id,
            )
            .order_by(EvalRunRow.id.desc())
            .limit(1)
        )
        is_production = version_id == production_id
        if not is_production:
            q = q.where(EvalRunRow.baseline_version == production)
        row = s.scalar(q)
        if row is None:
            waiting.append(number)
            continue
        rate = pass_rate(row.passed, row.failed, row.errors)
        comparison = None if is_production or row.comparison is None else _comparison(row.comparison)
        verdict = check_gate(definition.gate, name=f"v{number} ({variant})", rate=rate, comparison=comparison)
        reasons.extend(verdict.reasons)
    return GateStatus(eval_name, not waiting and not reasons, tuple(waiting), tuple(reasons))


def gate_of(s: Session, experiment_id: int) -> ExperimentGateRow | None:
    """The experiment's gate row, if it declares one."""
    return s.get(ExperimentGateRow, experiment_id)
