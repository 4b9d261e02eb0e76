"""The prompt registry: sync from files, versions, labels, rendering, diffs and the audit log."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from promptops.db.models import AuditRow, LabelRow, PromptRow, VersionRow, fit_actor
from promptops.db.queries import bump_change_seq, insert_ignore
from promptops.domain import (
    PRODUCTION,
    PromptContent,
    PromptVersion,
    Rendered,
)
from promptops.errors import (
    InvalidInput,
    LabelNotFound,
    PromptNotFound,
    VersionNotFound,
)
from promptops.services.context import Context
from promptops.services.views import (
    AuditEntry,
    LabelMove,
    PromptSummary,
    PromptView,
    VersionDetail,
    VersionView,
)

LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def version_from_row(row: VersionRow, prompt: str, labels: Sequence[str] = ()) -> PromptVersion:
    """A domain version from its table row."""
    return PromptVersion(
        prompt=prompt,
        number=row.number,
        variant=row.variant,
        content=PromptContent.from_dict(row.content),
        content_hash=row.content_hash,
        source_path=row.source_path,
        git_commit=row.git_commit,
        git_author=row.git_author,
        labels=tuple(sorted(labels)),
    )


def write_audit(
    session: Session,
    *,
    at: float,
    actor: str,
    action: str,
    message: str,
    prompt_id: int | None = None,
    experiment_id: int | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Append one entry to the audit log (the actor's name cut to what the column holds)."""
    session.add(
        AuditRow(
            at=at,
            actor=fit_actor(actor),
            action=action,
            prompt_id=prompt_id,
            experiment_id=experiment_id,
            message=message,
            details=details or {},
        )
    )


class Registry:
    """Prompts, versions and labels."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # -- lookups ---------------------------------------------------------------------------
    def prompt_row(self, session: Session, name: str) -> PromptRow:
        """The row of a prompt, or PromptNotFound."""
        row = session.scalar(select(PromptRow).where(PromptRow.name == name))
        if row is None:
            raise PromptNotFound(name)
        return row

    def version_row(self, session: Session, prompt: PromptRow, number: int) -> VersionRow:
        """The row of one version, or VersionNotFound."""
        if not 0 < number < 2**31:
            raise VersionNotFound(prompt.name, number)
        row = session.scalar(
            select(VersionRow).where(VersionRow.prompt_id == prompt.id, VersionRow.number == number)
        )
        if row is None:
            raise VersionNotFound(prompt.name, number)
        return row

    def labelled_row(self, session: Session, prompt: PromptRow, label: str) -> VersionRow:
        """The version holding a label, or LabelNotFound."""
        row = session.scalar(
            select(VersionRow)
            .join(LabelRow, LabelRow.version_id == VersionRow.id)
            .where(LabelRow.prompt_id == prompt.id, LabelRow.name == label)
        )
        if row is None:
            raise LabelNotFound(prompt.name, label)
        return row

    def labels_by_version(self, session: Session, prompt_id: int) -> dict[int, list[str]]:
        """Version id -> the labels it holds."""
        out: dict[int, list[str]] = {}
        for name, vid in session.execute(
            select(LabelRow.name, LabelRow.version_id).where(LabelRow.prompt_id == prompt_id)
        ):
            out.setdefault(vid, []).append(name)
        return out

    def list_prompts(self) -> list[PromptSummary]:
        """Every prompt with its production version number, version count and last change."""
        with self.ctx.tx() as s:
            counts = dict(
                s.execute(select(VersionRow.prompt_id, func.count()).group_by(VersionRow.prompt_id)).all()
            )
            prod = dict(
                s.execute(
                    select(LabelRow.prompt_id, VersionRow.number)
                    .join(VersionRow, VersionRow.id == LabelRow.version_id)
                    .where(LabelRow.name == PRODUCTION)
                ).all()
            )
            rows = s.scalars(select(PromptRow).order_by(PromptRow.name)).all()
            return [
                PromptSummary(
                    name=r.name,
                    description=r.description,
                    tags=list(r.tags or []),
                    production_version=prod.get(r.id),
                    versions=counts.get(r.id, 0),
                    source_path=r.source_path,
                    updated_at=r.updated_at,
                )
                for r in rows
            ]

    def get_prompt(self, name: str) -> PromptView:
        """A prompt with its versions (newest first) and labels."""
        with self.ctx.tx() as s:
            p = self.prompt_row(s, name)
            labels = self.labels_by_version(s, p.id)
            versions = s.scalars(
                select(VersionRow).where(VersionRow.prompt_id == p.id).order_by(VersionRow.number.desc())
            ).all()
            by_id = {v.id: v.number for v in versions}
            return PromptView(
                name=p.name,
                description=p.description,
                tags=list(p.tags or []),
                source_path=p.source_path,
                created_at=p.created_at,
                updated_at=p.updated_at,
                labels={lab: by_id[vid] for vid, labs in labels.items() for lab in labs},
                versions=[self._version_view(v, labels.get(v.id, [])) for v in versions],
            )

    @staticmethod
    def _version_view(v: VersionRow, labels: list[str]) -> VersionView:
        return VersionView(
            number=v.number,
            variant=v.variant,
            content_hash=v.content_hash,
            source_path=v.source_path,
            git_commit=v.git_commit,
            git_author=v.git_author,
            git_state=v.git_state,
            created_at=v.created_at,
            labels=sorted(labels),
        )

    def get_version(self, name: str, number: int) -> VersionDetail:
        """One version with its full content."""
        with self.ctx.tx() as s:
            p = self.prompt_row(s, name)
            v = self.version_row(s, p, number)
            view = self._version_view(v, self.labels_by_version(s, p.id).get(v.id, []))
            shared = {f.name: getattr(view, f.name) for f in fields(view)}
            return VersionDetail(prompt=p.name, content=v.content, **shared)

    def version_name(self, version_id: int) -> tuple[str, int] | None:
        """The prompt name and version number of a version row id, or None."""
        with self.ctx.tx() as s:
            row = s.execute(
                select(PromptRow.name, VersionRow.number)
                .join(VersionRow, VersionRow.prompt_id == PromptRow.id)
                .where(VersionRow.id == version_id)
            ).first()
            return (row[0], row[1]) if row else None

    def resolve(self, name: str, *, version: int | None = None, label: str | None = None) -> PromptVersion:
        """The version asked for: by number, by label, or production by default."""
        if version is not None and label is not None:
            raise InvalidInput("give a version or a label, not both")
        with self.ctx.tx() as s:
            p = self.prompt_row(s, name)
            if version is not None:
                row = self.version_row(s, p, version)
            else:
                row = self.labelled_row(s, p, label or PRODUCTION)
            return version_from_row(row, p.name, self.labels_by_version(s, p.id).get(row.id, []))

    def render(
        self, name: str, variables: dict[str, Any], *, version: int | None = None, label: str | None = None
    ) -> Rendered:
        """Render a version (production by default) with the given variables."""
        v = self.resolve(name, version=version, label=label)
        return self.ctx.renderer.render(
            v.content, variables, prompt=v.prompt, version=v.number, variant=v.variant
        )

    def versions(self, name: str) -> list[VersionView]:
        """The history of a prompt, oldest first."""
        return list(reversed(self.get_prompt(name).versions))

    def diff(self, name: str, a: int, b: int) -> str:
        """A unified diff between the readable forms of two versions."""
        va = self.resolve(name, version=a)
        vb = self.resolve(name, version=b)
        return "".join(
            difflib.unified_diff(
                readable(va.content).splitlines(keepends=True),
                readable(vb.content).splitlines(keepends=True),
                fromfile=f"{name}@{a} ({va.variant})",
                tofile=f"{name}@{b} ({vb.variant})",
            )
        )

    # -- labels ----------------------------------------------------------------------------
    def move_label(self, name: str, number: int, label: str, *, actor: str) -> LabelMove:
        """Point a label at a version (rollback included); audited."""
        if not re.match(LABEL_PATTERN, label or ""):
            raise InvalidInput(f"bad label {label!r}: letters, digits, '.', '_', '-'; at most 64")
        with self.ctx.tx() as s:
            p = self.prompt_row(s, name)
            v = self.version_row(s, p, number)
            previous = self.set_label(s, p, v, label, actor=actor, reason="moved by hand")
            return LabelMove(prompt=name, label=label, version=number, previous=previous)

    def set_label(
        self,
        s: Session,
        prompt: PromptRow,
        version: VersionRow,
        label: str,
        *,
        actor: str,
        reason: str,
        experiment_id: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> int | None:
        """Move a label inside a transaction and audit it; returns the previous version number."""
        now = self.ctx.now()
        row = self._locked_label(s, prompt, label)
        # A new name is created by an insert that yields to a concurrent one: two first moves
        # otherwise both find no row, both insert, and one dies on the unique key. The loser
        # waits for the winner's row and then moves the label like any later move.
        if row is None and not insert_ignore(
            s,
            LabelRow.__table__,
            [{"prompt_id": prompt.id, "name": label, "version_id": version.id, "updated_at": now}],
        ):
            row = self._locked_label(s, prompt, label)
        previous = None
        if row is not None:
            previous = s.scalar(select(VersionRow.number).where(VersionRow.id == row.version_id))
            if row.version_id == version.id:
                return previous
            row.version_id = version.id
            row.updated_at = now
        prompt.updated_at = now
        write_audit(
            s,
            at=now,
            actor=actor,
            action="label.move",
            prompt_id=prompt.id,
            experiment_id=experiment_id,
            message=(
                f"{label}: {prompt.name} v{previous} -> v{version.number} ({reason})"
                if previous
                else f"{label}: {prompt.name} -> v{version.number} ({reason})"
            ),
            details={
                "label": label,
                "from": previous,
                "to": version.number,
                "reason": reason,
                **(details or {}),
            },
        )
        bump_change_seq(s)
        return previous

    @staticmethod
    def _locked_label(s: Session, prompt: PromptRow, label: str) -> LabelRow | None:
        return s.scalar(
            select(LabelRow).where(LabelRow.prompt_id == prompt.id, LabelRow.name == label).with_for_update()
        )

    # -- audit -----------------------------------------------------------------------------
    def audit(
        self,
        *,
        prompt: str | None = None,
        experiment_id: int | None = None,
        limit: int = 200,
        offset: int = 0,
    ) -> list[AuditEntry]:
        """Audit entries, newest first."""
        with self.ctx.tx() as s:
            q = select(AuditRow, PromptRow.name).outerjoin(PromptRow, PromptRow.id == AuditRow.prompt_id)
            if prompt is not None:
                q = q.where(AuditRow.prompt_id == self.prompt_row(s, prompt).id)
            if experiment_id is not None:
                q = q.where(AuditRow.experiment_id == experiment_id)
            q = q.order_by(AuditRow.id.desc()).limit(limit).offset(offset)
            return [
                AuditEntry(
                    id=a.id,
                    at=a.at,
                    actor=a.actor,
                    action=a.action,
                    prompt=name,
                    experiment_id=a.experiment_id,
                    message=a.message,
                    details=a.details,
                )
                for a, name in s.execute(q).all()
            ]


def readable(content: PromptContent) -> str:
    """A stable, human-readable text of a version's content for diffs."""
    lines: list[str] = []
    if content.messages is not None:
        for m in content.messages:
            lines.append(f"[{m.role}]")
            lines.extend(m.content.splitlines() or [""])
            lines.append("")
    if content.template is not None:
        lines.append("[template]")
        lines.extend(content.template.splitlines() or [""])
        lines.append("")
    lines.append("[model]")
    lines.append(json.dumps(content.model, sort_keys=True, ensure_ascii=False))
    lines.append("[variables]")
    for v in content.variables:
        lines.append(f"{v.name}: {json.dumps(v.to_dict(), sort_keys=True, ensure_ascii=False)}")
    return "\n".join(lines) + "\n"
