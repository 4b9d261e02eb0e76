"""Adopting production into the prompt file: after a promotion, `main` becomes what is served.

The file is rewritten so that its `main` holds the production version's content (so the next sync
finds the same content hash and makes no new version), the promoted variant leaves `variants`, and
the experiment block, which has ended, goes away, so the next sync starts nothing.
"""

from __future__ import annotations

import difflib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from promptops import promptedit, promptfiles
from promptops.db.models import ExperimentRow, VersionRow
from promptops.domain import MAIN_VARIANT, PRODUCTION, ExperimentStatus, PromptDefinition
from promptops.errors import ExperimentStateError, FileProblem, InvalidInput, InvalidPromptFile
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
    found: PromptDefinition | None = None
    for path in promptfiles.discover([folder]):
        try:
            definition = promptfiles.load_prompt_file(path)
        except InvalidPromptFile as exc:
            problems.extend(exc.problems)
            continue
        if definition.name != name:
            continue
        if found is not None:  # which one sync reads is not for adopt to guess
            where = f"{found.path}:{found.line}"
            message = f"duplicate prompt name {name!r}: already defined in {where}"
            raise InvalidPromptFile([FileProblem(definition.path, definition.line, message)])
        found = definition
    if found is not None:
        return found
    if problems:
        raise InvalidPromptFile(problems)
    raise InvalidInput(f"no prompt file under {folder} defines {name!r}")


def _check_writable(path: Path) -> None:
    """Refuse a file adopt must not rewrite: a symbolic link (the rewrite would replace the link,
    not its target) or a file without write permission (even for a user who could override it)."""
    if path.is_symlink():
        raise InvalidInput(f"{path}: is a symbolic link; adopt rewrites regular files only")
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise InvalidInput(f"{path}: not a regular file")
    if not mode & stat.S_IWUSR or not os.access(path, os.W_OK):
        raise InvalidInput(f"{path}: is read-only; make it writable to adopt")


def _replace_file(path: Path, before: str, new: str) -> None:
    """Write `new` over the file all at once (a temporary file renamed over it, with the same
    permissions), refusing when the file no longer holds `before`: nothing is ever half-written."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(new)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        if path.is_symlink() or path.read_bytes().decode("utf-8", errors="replace") != before:
            raise InvalidInput(f"{path}: changed while adopting; nothing written, run adopt again")
        os.replace(tmp, path)
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot write: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
            synced = set(s.scalars(select(VersionRow.content_hash).where(VersionRow.prompt_id == prompt.id)))
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
        variant = production.variant if production.variant != MAIN_VARIANT else None
        # What adopt replaces must be in the registry: unsynced edits would be lost silently.
        replaced = [("main", definition.content)]
        if variant is not None and variant in definition.variants:
            replaced.append((f"variant {variant!r}", definition.variants[variant]))
        for part, content in replaced:
            if content.content_hash() not in synced:
                raise InvalidInput(
                    f"{definition.path}: {part} has changes that were never synced and adopt would "
                    "overwrite them; sync or revert them first"
                )
        path = Path(definition.path)
        _check_writable(path)
        raw = path.read_bytes().decode("utf-8")
        crlf = "\r\n" in raw
        text = raw.replace("\r\n", "\n")
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
            new = result.text.replace("\n", "\r\n") if crlf else result.text
            _replace_file(path, raw, new)
        return AdoptReport(
            prompt=name,
            path=definition.path,
            version=production.number,
            diff=diff,
            removed_variant=result.removed_variant,
            removed_experiment=result.removed_experiment,
            dry_run=dry_run,
        )
