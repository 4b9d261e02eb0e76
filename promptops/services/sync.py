"""Sync from prompt files: new prompts and versions, and the experiments the files declare."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from promptops import promptfiles
from promptops.db.models import ExperimentRow, PromptRow, VersionRow
from promptops.db.queries import bump_change_seq
from promptops.domain import (
    MAIN_VARIANT,
    PRODUCTION,
    ExperimentSpec,
    ExperimentStatus,
    PromptDefinition,
    content_hash,
)
from promptops.errors import InvalidPromptFile
from promptops.evalfiles import requires_eval_problems
from promptops.services.context import Context
from promptops.services.experiments import Experiments
from promptops.services.provenance import git_info
from promptops.services.registry import Registry


@dataclass
class SyncReport:
    """What a sync did (or, with dry_run, would do)."""

    changes: list[str] = field(default_factory=list)
    prompts: int = 0
    new_versions: int = 0
    dry_run: bool = False

    def add(self, line: str) -> None:
        """Record one change."""
        self.changes.append(line)


class Sync:
    """Registers prompt files: versions through the registry, declarations through experiments."""

    def __init__(self, ctx: Context, registry: Registry, experiments: Experiments) -> None:
        self.ctx = ctx
        self.registry = registry
        self.experiments = experiments

    def sync(self, paths: Sequence[str | Path], *, dry_run: bool = False, actor: str = "sync") -> SyncReport:
        """Register new versions and declared experiments from prompt files; all or nothing."""
        definitions = promptfiles.load_prompt_files(paths)  # raises before anything is written
        catalog = self.experiments.catalog
        unknown = requires_eval_problems(definitions, catalog.names(), catalog.folder)
        if unknown:
            raise InvalidPromptFile(unknown)
        report = SyncReport(dry_run=dry_run, prompts=len(definitions))
        session = self.ctx.sessions()
        try:
            with session.begin():
                if session.get_bind().dialect.name == "postgresql":
                    # Replicas starting together all sync: one at a time, or both insert the
                    # same new prompt and one dies on the unique name.
                    session.execute(text("SELECT pg_advisory_xact_lock(7202)"))
                for d in definitions:
                    self._sync_one(session, d, report, actor=actor)
                if report.changes:
                    bump_change_seq(session)
                if dry_run:
                    session.rollback()
        finally:
            session.close()
        return report

    def _sync_one(self, s: Session, d: PromptDefinition, report: SyncReport, *, actor: str) -> None:
        now = self.ctx.now()
        p = s.scalar(select(PromptRow).where(PromptRow.name == d.name).with_for_update())
        is_new = p is None
        if p is None:
            p = PromptRow(
                name=d.name,
                description=d.description,
                tags=list(d.tags),
                source_path=d.path,
                created_at=now,
                updated_at=now,
            )
            s.add(p)
            s.flush()
            report.add(f"{d.name}: new prompt")
        elif (p.description, list(p.tags or []), p.source_path) != (d.description, list(d.tags), d.path):
            p.description, p.tags, p.source_path, p.updated_at = (d.description, list(d.tags), d.path, now)
        git = git_info(d.path) if d.path else None
        version_ids: dict[str, int] = {}
        for variant in [MAIN_VARIANT, *d.variants]:
            content = d.variant_content(variant)
            h = content.content_hash()
            row = s.scalar(
                select(VersionRow).where(VersionRow.prompt_id == p.id, VersionRow.content_hash == h)
            )
            if row is None:
                number = (
                    s.scalar(select(func.max(VersionRow.number)).where(VersionRow.prompt_id == p.id)) or 0
                ) + 1
                row = VersionRow(
                    prompt_id=p.id,
                    number=number,
                    variant=variant,
                    content=content.to_dict(),
                    content_hash=h,
                    source_path=d.path,
                    git_commit=git.commit if git else None,
                    git_author=git.author if git else None,
                    git_state=git.state if git else None,
                    created_at=now,
                )
                s.add(row)
                s.flush()
                p.updated_at = now
                report.new_versions += 1
                note = f" ({git.note})" if git is not None and git.note else ""
                report.add(f"{d.name}: new version {number} ({variant}){note}")
            version_ids[variant] = row.id
            if is_new and variant == MAIN_VARIANT:
                self.registry.set_label(s, p, row, PRODUCTION, actor=actor, reason="first version")
                report.add(f"{d.name}: production -> version {row.number}")
        lines = (
            self._declare(s, p, d.experiment, version_ids, actor=actor)
            if d.experiment is not None
            else self._undeclare(s, p, actor=actor)
        )
        for line in lines:
            report.add(f"{d.name}: {line}")

    def _declare(
        self, s: Session, p: PromptRow, spec: ExperimentSpec, version_ids: dict[str, int], *, actor: str
    ) -> list[str]:
        """Apply an experiment declared in a prompt file during sync; returns change lines."""
        vids = [version_ids[a] for a in spec.arms]
        declared = content_hash(
            {
                "prompt": p.name,
                "arms": vids,
                "metric": spec.metric,
                "reward": spec.reward,
                "strategy": spec.strategy,
                "weights": spec.weights,
                "auto_promote": spec.auto_promote,
                "policy": spec.policy.overrides(),
                **({"requires_eval": spec.requires_eval} if spec.requires_eval else {}),
                # only when declared, so declarations written before secondary metrics keep their hash
                **({"metrics": list(spec.metrics)} if spec.metrics else {}),
            }
        )
        existing = s.scalar(
            select(ExperimentRow)
            .where(ExperimentRow.prompt_id == p.id, ExperimentRow.declared_hash == declared)
            .order_by(ExperimentRow.id.desc())
        )
        if existing is not None:
            lines = []
            running = s.scalar(select(ExperimentRow).where(ExperimentRow.running_prompt_id == p.id))
            if running is not None and running.id != existing.id and running.source == "file":
                # The file went back to an earlier declaration: the one it replaced must stop.
                stopped = self.experiments.stop_running(
                    s, p, actor=actor, reason="declaration changed in the file"
                )
                lines.append(f"experiment {stopped} stopped (declaration changed)")
            if (
                existing.status == ExperimentStatus.DRAFT
                and spec.status == ExperimentStatus.RUNNING
                and self.experiments.gate(s, existing) is None
            ):
                self.experiments.stop_running(s, p, actor=actor, reason="another declaration started")
                self.experiments.start_row(s, existing, actor=actor)
                lines.append(f"experiment {existing.id} started" + self.experiments.control_note(s, existing))
            return lines
        lines = []
        stopped = self.experiments.stop_running(s, p, actor=actor, reason="declaration changed in the file")
        if stopped is not None:
            lines.append(f"experiment {stopped} stopped (declaration changed)")
        exp = self.experiments.insert(s, p, spec, vids, source="file", declared_hash=declared, actor=actor)
        if spec.requires_eval is not None:
            self.experiments.require_eval(
                s, exp, spec.requires_eval, auto_start=spec.status == ExperimentStatus.RUNNING
            )
            blocked = self.experiments.gate(s, exp)
            if spec.status == ExperimentStatus.RUNNING and blocked is not None:
                lines.append(f"experiment {exp.id} created as draft ({blocked.message})")
                return lines
        if spec.status == ExperimentStatus.RUNNING:
            self.experiments.start_row(s, exp, actor=actor)
            lines.append(
                f"experiment {exp.id} started over versions "
                f"{', '.join(str(self.experiments.number(s, v)) for v in vids)}"
                + self.experiments.control_note(s, exp)
            )
        else:
            lines.append(f"experiment {exp.id} created as draft")
        return lines

    def _undeclare(self, s: Session, p: PromptRow, *, actor: str) -> list[str]:
        """The file no longer declares an experiment: stop the one it declared, if running."""
        running = s.scalar(select(ExperimentRow).where(ExperimentRow.running_prompt_id == p.id))
        if running is None or running.source != "file":
            return []
        self.experiments.stop_running(s, p, actor=actor, reason="experiment removed from the file")
        return [f"experiment {running.id} stopped (removed from the file)"]
