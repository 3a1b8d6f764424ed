"""No import cycles among the package's modules: a static scan of module-level imports, and
every module imported alone (the package's other modules unloaded first) in a fresh interpreter."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Repository folder → installed package (pyproject's package-dir).
PACKAGE_DIRS = {
    "suite": "precision_suite",
    "backends": "precision_suite.backends",
    "configs": "precision_suite.configs",
}
FRAMEWORKS = ("torch", "tensorflow", "keras", "jax", "ray", "tensorboardX", "mlflow", "wandb")


def package_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for folder, package in PACKAGE_DIRS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name | ast.Attribute) and "TYPE_CHECKING" in ast.unparse(node.test)


def module_level_imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``module`` imports when it is imported (not inside functions, not
    under ``TYPE_CHECKING``)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and _is_type_checking(node):
                visit(node.orelse)
            elif isinstance(node, ast.If | ast.Try):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
                visit(getattr(node, "finalbody", []))
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = module.split(".")
                    anchor = anchor if is_package else anchor[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)

    visit(ast.parse(path.read_text()).body)
    return {name for name in found if name in known and name != module}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def test_static_scan_finds_no_import_cycle():
    modules = package_modules()
    assert "precision_suite.verdicts.compare" in modules and "precision_suite.backends.base" in modules
    graph = {m: module_level_imports(m, p, set(modules)) for m, p in modules.items()}
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_imports_alone():
    modules = sorted(package_modules())
    code = f"""
import importlib, json, sys
failed = {{}}
for name in {modules!r}:
    for loaded in [m for m in sys.modules if m == "precision_suite" or m.startswith("precision_suite.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in {FRAMEWORKS!r}:
            failed[name] = repr(exc)
print(json.dumps(failed))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd="/")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1]) == {}


def test_every_package_is_listed_in_pyproject():
    """pyproject lists the packages explicitly (package-dir maps the folders): a new subpackage
    left out of the list would be missing from an installed copy."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join([package, *path.parent.relative_to(ROOT / folder).parts])
        for folder, package in PACKAGE_DIRS.items()
        for path in (ROOT / folder).rglob("__init__.py")
    }
    assert found - listed == set(), f"packages missing from pyproject: {sorted(found - listed)}"
