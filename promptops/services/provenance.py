"""Git provenance of a prompt file: the last commit that touched it and its author."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GitInfo:
    """The commit and author of a file's last change; commit ends in '+dirty' if edited since."""

    commit: str | None
    author: str | None


def git_info(path: str | Path) -> GitInfo:
    """Provenance of a file in a git work tree, or empty when it is not in one."""
    p = Path(path).resolve()
    try:
        out = _git(p.parent, "log", "-1", "--format=%H%x00%an <%ae>", "--", p.name)
        if not out:
            return GitInfo(None, None)
        commit, _, author = out.partition("\x00")
        dirty = _git(p.parent, "status", "--porcelain", "--", p.name)
        return GitInfo(commit + ("+dirty" if dirty else ""), author or None)
    except (OSError, subprocess.SubprocessError):
        return GitInfo(None, None)


def _git(cwd: Path, *args: str) -> str:
    res = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True,
                         timeout=10, check=False)
    return res.stdout.strip() if res.returncode == 0 else ""
