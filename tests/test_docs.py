"""The user documentation covers the whole surface, read from the code: every CLI command and
option, every HTTP route, every policy setting and every PROMPTOPS_* variable; and every relative
link in README.md and docs/*.md resolves, #anchors included."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from promptops.cli import app as cli_app
from promptops.config import Settings
from promptops.domain import Policy

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]

# Routes FastAPI adds for its own Swagger UI page; users never call them.
INTERNAL_ROUTES = {("GET", "/docs/oauth2-redirect")}

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _lines_outside_fences(text: str) -> Iterator[str]:
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading).strip().lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a Markdown page defines (duplicate headings get -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for line in _lines_outside_fences(_text(path)):
        m = _HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def sections(path: Path) -> dict[str, str]:
    """The text under each heading that names a command in backticks (`promptops ...`), up to
    the next heading of the same or a higher level."""
    lines = _text(path).splitlines()
    found: dict[str, str] = {}
    for i, line in enumerate(lines):
        m = _HEADING.match(line)
        if not m:
            continue
        name = re.search(r"`(promptops[^`]*)`", m.group(2))
        if not name:
            continue
        level = len(m.group(1))
        body = []
        for later in lines[i + 1 :]:
            h = _HEADING.match(later)
            if h and len(h.group(1)) <= level:
                break
            body.append(later)
        found[name.group(1).strip()] = "\n".join(body)
    return found


def commands() -> Iterator[tuple[str, Any]]:
    """Every command of the CLI as (`promptops sub cmd`, its click command), root included."""

    def walk(cmd: Any, path: str) -> Iterator[tuple[str, Any]]:
        yield path, cmd
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            if not getattr(sub, "hidden", False):
                yield from walk(sub, f"{path} {name}")

    yield from walk(typer.main.get_command(cli_app), "promptops")


def options(cmd: Any) -> list[str]:
    """Every spelling of every visible option of a command (`--json`, `--table`, `--plain`...)."""
    out: list[str] = []
    for p in cmd.params:
        if p.param_type_name == "option" and not getattr(p, "hidden", False):
            out += [o for o in (*p.opts, *p.secondary_opts) if o.startswith("--")]
    return out


def routes(tmp_path: Path) -> set[tuple[str, str]]:
    """(METHOD, path) of every route the app answers, included routers walked."""
    from promptops.server.app import create_app

    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'docs.db'}"), background=False)
    found: set[tuple[str, str]] = set()

    def walk(items: Any) -> None:
        for r in items:
            inner = getattr(r, "original_router", None)
            if inner is not None:
                walk(inner.routes)
            for method in getattr(r, "methods", None) or ():
                if method != "HEAD":
                    found.add((method, r.path))

    walk(app.routes)
    return found - INTERNAL_ROUTES


def env_variables() -> set[str]:
    """Every PROMPTOPS_* name the package reads."""
    names: set[str] = set()
    for source in (ROOT / "promptops").rglob("*.py"):
        names |= set(re.findall(r"\bPROMPTOPS_[A-Z0-9_]+\b", _text(source)))
    return names


def test_every_command_and_option_has_its_section_in_cli_md() -> None:
    documented = sections(DOCS / "cli.md")
    missing = []
    for path, cmd in commands():
        body = documented.get(path)
        if body is None:
            missing.append(f"{path}: no heading")
            continue
        missing += [
            f"{path} {opt}"
            for opt in options(cmd)
            if not re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", body)
        ]
    assert not missing, "undocumented in docs/cli.md: " + ", ".join(missing)


def test_every_route_is_in_http_api_md(tmp_path: Path) -> None:
    text = _text(DOCS / "http-api.md")
    missing = sorted(f"{m} {p}" for m, p in routes(tmp_path) if f"`{m} {p}`" not in text)
    assert not missing, "routes missing from docs/http-api.md: " + ", ".join(missing)


def test_every_policy_setting_is_in_policy_md() -> None:
    text = _text(DOCS / "policy.md")
    missing = [n for n in Policy.field_names() if f"`{n}`" not in text]
    assert not missing, "policy settings missing from docs/policy.md: " + ", ".join(missing)


def test_every_environment_variable_is_in_operations_md() -> None:
    text = _text(DOCS / "operations.md")
    names = env_variables()
    assert "PROMPTOPS_DATABASE_URL" in names  # the scan itself works
    missing = sorted(n for n in names if f"`{n}`" not in text)
    assert not missing, "variables missing from docs/operations.md: " + ", ".join(missing)


def _links() -> Iterator[Any]:
    for page in PAGES:
        for line in _lines_outside_fences(_text(page)):
            for target in _LINK.findall(line):
                if not re.match(r"^[a-z][a-z0-9+.-]*:", target):
                    yield pytest.param(page, target, id=f"{page.name}->{target}")


@pytest.mark.parametrize(("page", "target"), list(_links()))
def test_relative_links_resolve(page: Path, target: str) -> None:
    file, _, anchor = target.partition("#")
    dest = (page.parent / file).resolve() if file else page
    assert dest.exists(), f"{page.name}: {target}: no such file"
    assert ROOT in dest.parents or dest == ROOT, f"{page.name}: {target} leaves the repository"
    if anchor:
        assert dest.suffix == ".md", f"{page.name}: {target}: anchor into a non-Markdown file"
        assert anchor in anchors(dest), f"{page.name}: {target}: no heading with that anchor"


def test_the_checks_find_what_they_look_for(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text(
        "# A `promptops x` page\n\n## Same\n\n```\n# not a heading\n```\n## Same\n"
        "### `promptops db upgrade`\n--revision\n### `promptops y`\n",
        encoding="utf-8",
    )
    assert anchors(page) == {"a-promptops-x-page", "same", "same-1", "promptops-db-upgrade", "promptops-y"}
    assert sections(page)["promptops db upgrade"].strip() == "--revision"
    assert "promptops db upgrade" in dict(commands())
    assert "--revision" in options(dict(commands())["promptops db upgrade"])
    assert ("POST", "/v1/feedback") in routes(tmp_path)
