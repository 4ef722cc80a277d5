"""The package layout holds: imports flow data_pipelines → tokenizer → physfm, and inside physfm
from the lower subpackages to the higher ones, with no import cycle between modules (imports
anywhere in a file count, function bodies included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["data_pipelines", "tokenizer", "physfm"]  # lowest first
# physfm's subpackages, lowest first: a module may import its own subpackage and the ones before it.
SUBPACKAGES = [
    "core",
    "models",
    "inference",
    "eval",
    "train",
    "interp",
    "quickstart",
    "view",
    "cli",
]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported first-party module, line, at module level) for every import statement of the
    file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(node) for node in tree.body}
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule when there is one
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.append((target, node.lineno, id(node) in top_level))
    return found


def rank(module: str) -> tuple[int, int]:
    parts = module.split(".")
    package = PACKAGES.index(parts[0])
    sub = SUBPACKAGES.index(parts[1]) if parts[0] == "physfm" and len(parts) > 1 else -1
    return package, sub


MODULES = all_modules()
GRAPH = {name: imports_of(name, path, MODULES) for name, path in MODULES.items()}


def test_every_physfm_module_lives_in_a_known_subpackage():
    loose = [
        m
        for m in MODULES
        if m.startswith("physfm.") and m.count(".") == 1 and m.split(".")[1] not in SUBPACKAGES
    ]
    assert not loose, f"modules outside physfm's subpackages {SUBPACKAGES}: {loose}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_upward_import(name):
    """A module imports only from its own package/subpackage or lower ones (the physfm package's own
    __init__, which only names lazy exports, is exempt)."""
    if name == "physfm":
        return
    upward = [
        f"{target} (line {line})"
        for target, line, _ in GRAPH[name]
        if target != "physfm" and rank(target) > rank(name)
    ]
    assert not upward, f"{name} imports a higher layer: {upward}"


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target, _, _ in GRAPH[node]:
            if state.get(target) == 1:
                cycle = stack[stack.index(target) :] + [target]
                pytest.fail("import cycle: " + " → ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)


def test_physfm_imports_sit_at_module_level():
    """First-party imports inside physfm's functions hide its dependency graph; only the CLI's verb
    functions import lazily (they pull torch and Lightning, and ``physfm --help`` must start at
    once)."""
    hidden = [
        f"{name}:{line} imports {target}"
        for name, edges in GRAPH.items()
        if name.startswith("physfm.") and not name.startswith("physfm.cli")
        for target, line, at_top in edges
        if not at_top and target.split(".")[0] in PACKAGES
    ]
    assert not hidden, "imports inside functions:\n" + "\n".join(hidden)
