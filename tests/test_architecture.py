"""The layout stays as ARCHITECTURE.md draws it: imports go one way, with no circles, and files stay small.

Every ``import`` statement counts, wherever it is: at the top, inside a function (lazy) or under
``TYPE_CHECKING``. The packages are layered ``rewards <- textenv <- agents <- benchmarks``: a module may
import its own package and the ones to its left, never one to its right.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["infra", "rewards", "textenv", "agents", "benchmarks"]
ALGORITHM_FILES = ["agents/ppo.py", "agents/reinforce.py", "agents/dqn.py"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for layer in LAYERS for p in sorted((ROOT / layer).rglob("*.py"))}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """Our modules that ``name`` imports, resolved to the longest known module name."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        candidates: list[str] = []
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports the module pkg.mod; `from pkg import name` imports pkg itself
            submodules = [f"{base}.{alias.name}" for alias in node.names]
            candidates = [m if m in known else base for m in submodules]
        for candidate in candidates:
            parts = candidate.split(".")
            for end in range(len(parts), 0, -1):
                prefix = ".".join(parts[:end])
                if prefix in known:
                    if prefix != name:
                        targets.add(prefix)
                    break
    return targets


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported_modules(name, path, set(found)) for name, path in found.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def test_checker_finds_circles_and_layers() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer("agents.ppo") > layer("textenv.envs.core") > layer("infra.storage")


def test_checker_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from agents.base import TextAlgorithm\n"
        "def f():\n    import benchmarks.report\n    from . import sibling\n"
        "    from textenv import load_model\n"
    )
    path = tmp_path / "mod.py"
    path.write_text(source)
    known = {"agents.base", "benchmarks.report", "rewards.sibling", "rewards.mod", "textenv"}
    found = imported_modules("rewards.mod", path, known)
    assert found == {"agents.base", "benchmarks.report", "rewards.sibling", "textenv"}


def test_no_import_circles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_imports_go_one_way() -> None:
    upward = [
        f"{source} imports {target}"
        for source, targets in import_graph().items()
        for target in targets
        if layer(target) > layer(source)
    ]
    assert upward == [], f"imports against rewards <- textenv <- agents <- benchmarks: {upward}"


@pytest.mark.parametrize("layer_name", LAYERS)
def test_files_stay_small(layer_name: str) -> None:
    lengths = {p: len(p.read_text().splitlines()) for p in (ROOT / layer_name).rglob("*.py")}
    too_long = {str(p.relative_to(ROOT)): n for p, n in lengths.items() if n > 500}
    too_long |= {
        str(p.relative_to(ROOT)): n
        for p, n in lengths.items()
        if str(p.relative_to(ROOT)) in ALGORITHM_FILES and n > 400
    }
    assert too_long == {}, f"files over 500 lines (algorithm files: 400): {too_long}"


def test_architecture_md_names_only_what_exists() -> None:
    """Every file, folder and dotted module that ARCHITECTURE.md names in backticks exists, and the map stays
    short enough to read (at most 150 lines)."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    assert len(text.splitlines()) <= 150
    names = set(re.findall(r"`([A-Za-z_][\w/.-]*)`", text))
    files = {p.name for layer in LAYERS for p in (ROOT / layer).rglob("*.py")}
    missing = []
    for name in sorted(names):
        if "/" in name:  # a path from the root, or inside a package (`envs/core.py` under textenv/)
            if not any((base / name).exists() for base in [ROOT, *(ROOT / layer for layer in LAYERS)]):
                missing.append(name)
        elif name.endswith(".py") and name not in files:
            missing.append(name)
        elif re.fullmatch(r"(infra|rewards|textenv|agents|benchmarks)(\.\w+)+", name):
            if not any((ROOT / name.replace(".", "/")).with_suffix(s).exists() for s in (".py", "")):
                missing.append(name)
    assert missing == [], f"ARCHITECTURE.md names what does not exist: {missing}"
    assert len(names) > 60  # the check reads the map's names (a changed quoting style would pass silently)
