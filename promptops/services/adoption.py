"""Adopting production into the prompt file: after a promotion, `main` becomes what is served.

The file is rewritten so that its `main` holds the production version's content (so the next sync
finds the same content hash and makes no new version), the promoted variant leaves `variants`, and
the experiment block, which has ended, goes away, so the next sync starts nothing.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from promptops import promptedit, promptfiles
from promptops.db.models import ExperimentRow
from promptops.domain import MAIN_VARIANT, PRODUCTION, ExperimentStatus, PromptDefinition
from promptops.errors import ExperimentStateError, InvalidInput, InvalidPromptFile
from promptops.services.context import Context
from promptops.services.registry import Registry


@dataclass(frozen=True)
class AdoptReport:
    """What `adopt` did (or, with dry_run, would do) to one prompt file."""

    prompt: str
    path: str
    version: int
    diff: str
    removed_variant: str | None
    removed_experiment: bool
    dry_run: bool


def find_prompt_file(name: str, folder: Path) -> PromptDefinition:
    """The prompt file under `folder` that defines `name`; when none does, the problems of the
    files that could not be read (one of them may be it), else a one-line refusal."""
    problems = []
    for path in promptfiles.discover([folder]):
        try:
            definition = promptfiles.load_prompt_file(path)
        except InvalidPromptFile as exc:
            problems.extend(exc.problems)
            continue
        if definition.name == name:
            return definition
    if problems:
        raise InvalidPromptFile(problems)
    raise InvalidInput(f"no prompt file under {folder} defines {name!r}")


class Adoption:
    """Rewrites prompt files to hold their production version in `main`."""

    def __init__(self, ctx: Context, registry: Registry) -> None:
        self.ctx = ctx
        self.registry = registry

    def adopt(self, name: str, *, folder: Path, dry_run: bool = False) -> AdoptReport:
        """Rewrite the file of `name` under `folder` so that `main` is production; refuses while
        an experiment runs or when `main` already is production."""
        production = self.registry.resolve(name, label=PRODUCTION)
        with self.ctx.tx() as s:
            prompt = self.registry.prompt_row(s, name)
            running = s.scalar(select(ExperimentRow.id).where(ExperimentRow.running_prompt_id == prompt.id))
        if running is not None:
            raise ExperimentStateError(
                f"{name}: experiment {running} is still running; adopt after it ends",
                status=ExperimentStatus.RUNNING,
            )
        definition = find_prompt_file(name, folder)
        if definition.experiment is not None and definition.experiment.status == ExperimentStatus.DRAFT:
            raise ExperimentStateError(
                f"{name}: {definition.path} declares a draft experiment; start or remove it before adopting",
                status=ExperimentStatus.DRAFT,
            )
        if definition.content.content_hash() == production.content_hash:
            raise InvalidInput(
                f"{name}: production (version {production.number}) is already "
                f"the main content of {definition.path}; nothing to adopt"
            )
        path = Path(definition.path)
        text = path.read_text(encoding="utf-8")
        variant = production.variant if production.variant != MAIN_VARIANT else None
        result = promptedit.adopt_text(
            text, path=definition.path, content=production.content, variant=variant
        )
        diff = "".join(
            difflib.unified_diff(
                text.splitlines(keepends=True),
                result.text.splitlines(keepends=True),
                fromfile=f"a/{definition.path}",
                tofile=f"b/{definition.path}",
            )
        )
        if not dry_run:
            path.write_text(result.text, encoding="utf-8")
        return AdoptReport(
            prompt=name,
            path=definition.path,
            version=production.number,
            diff=diff,
            removed_variant=result.removed_variant,
            removed_experiment=result.removed_experiment,
            dry_run=dry_run,
        )
