"""Git provenance of a prompt file: the last commit that touched it, its author, and whether the
file on disk is that commit's content, has uncommitted changes, or is in no commit at all."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

CLEAN = "clean"
DIRTY = "dirty"
UNTRACKED = "untracked"

# How a sync line and the CLI describe a state that is not plain committed content.
STATE_NOTES = {DIRTY: "uncommitted changes", UNTRACKED: "untracked in git"}


@dataclass(frozen=True)
class GitInfo:
    """Provenance of a file: `state` is clean, dirty or untracked, or None outside a git work tree.

    `commit` is the last commit that touched the file (None when untracked); when the state is
    dirty the synced content differs from it.
    """

    commit: str | None
    author: str | None
    state: str | None

    @property
    def note(self) -> str | None:
        """A few words for a file whose content is not exactly a commit's, else None."""
        return STATE_NOTES.get(self.state or "")


NOT_IN_GIT = GitInfo(None, None, None)


def git_info(path: str | Path) -> GitInfo:
    """Provenance of a file in a git work tree, or NOT_IN_GIT when it is not in one."""
    p = Path(path).resolve()
    try:
        if _git(p.parent, "rev-parse", "--is-inside-work-tree") != "true":
            return NOT_IN_GIT
        status = _git(p.parent, "status", "--porcelain", "--untracked-files=all", "--", p.name)
        out = _git(p.parent, "log", "-1", "--format=%H%x00%an <%ae>", "--", p.name)
        if not out or status.startswith("??"):
            # No commit holds the file as it is named now (new, or deleted and re-created).
            return GitInfo(None, None, UNTRACKED)
        commit, _, author = out.partition("\x00")
        return GitInfo(commit, author or None, DIRTY if status else CLEAN)
    except (OSError, subprocess.SubprocessError):
        return NOT_IN_GIT


def _git(cwd: Path, *args: str) -> str:
    res = subprocess.run(
        ["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=10, check=False
    )
    return res.stdout.strip() if res.returncode == 0 else ""
