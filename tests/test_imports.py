"""No import cycles among the package's modules: a static scan of module-level imports, and
every module imported alone (the package's other modules unloaded first) in a fresh interpreter.
Every import statement anywhere in suite/, backends/ and benchmarks/ — inside functions too, where
the frameworks are imported lazily and a stale name only fails when that code path runs — names a
module that exists and a name that module defines."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Repository folder → installed package (pyproject's package-dir).
PACKAGE_DIRS = {
    "suite": "precision_suite",
    "backends": "precision_suite.backends",
    "configs": "precision_suite.configs",
}
FRAMEWORKS = ("torch", "tensorflow", "keras", "jax", "ray", "tensorboardX", "mlflow", "wandb")
# Folders whose every import statement must resolve (benchmarks/ holds scripts, not a package).
SCANNED = ("suite", "backends", "benchmarks")
PACKAGE = "precision_suite"


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


# --- every import statement resolves -----------------------------------------------------------


@dataclass(frozen=True)
class ImportRef:
    """One imported module, or one name imported from a module, with where it is written."""

    path: Path
    line: int
    module: str  # absolute
    name: str | None  # None for ``import module``

    def __str__(self) -> str:
        what = self.module if self.name is None else f"{self.name} from {self.module}"
        return f"{self.path.relative_to(ROOT)}:{self.line}: {what}"


def import_refs(path: Path, module: str | None) -> list[ImportRef]:
    """Every import in ``path`` (the file of ``module``; None for a script), at any depth:
    functions, ``TYPE_CHECKING``, try/except."""
    refs: list[ImportRef] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            refs += [ImportRef(path, node.lineno, alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                if module is None:  # a script has no package to be relative to
                    refs += [ImportRef(path, node.lineno, "." * node.level + base, a.name) for a in node.names]
                    continue
                anchor = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            refs += [ImportRef(path, node.lineno, base, alias.name) for alias in node.names]
    return refs


def _target_names(target: ast.expr) -> set[str]:
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, ast.Tuple | ast.List):
        return set().union(*(_target_names(t) for t in target.elts))
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    return set()


def defined_names(path: Path) -> set[str] | None:
    """The names a module defines at module level (defs, classes, assignments, imports, also in
    if/try/with blocks), read from its source without importing it; None when it defines a
    module ``__getattr__`` or star-imports (then any name may resolve)."""
    names: set[str] = set()
    open_ended = False

    def visit(body: list[ast.stmt]) -> None:
        nonlocal open_ended
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
                open_ended |= node.name == "__getattr__"
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    names.update(_target_names(target))
            elif isinstance(node, ast.AnnAssign | ast.AugAssign):
                names.update(_target_names(node.target))
            elif isinstance(node, ast.Import):
                names.update(alias.asname or alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                open_ended |= any(alias.name == "*" for alias in node.names)
                names.update(alias.asname or alias.name for alias in node.names)
            else:
                for field in ("body", "orelse", "finalbody"):
                    visit(getattr(node, field, []) or [])
                for handler in getattr(node, "handlers", []) or []:
                    visit(handler.body)

    visit(ast.parse(path.read_text(), str(path)).body)
    return None if open_ended else names


def unresolved_package_import(ref: ImportRef, modules: dict[str, Path]) -> str | None:
    """Why ``ref`` (into this package) does not resolve, or None; decided from the source."""
    if ref.module not in modules:
        return f"{ref}: no module {ref.module}"
    if ref.name is None or ref.name == "*" or f"{ref.module}.{ref.name}" in modules:
        return None
    names = defined_names(modules[ref.module])
    if names is None or ref.name in names:
        return None
    return f"{ref}: {ref.module} ({modules[ref.module].relative_to(ROOT)}) defines no {ref.name}"


def scanned_files() -> list[Path]:
    return [path for folder in SCANNED for path in sorted((ROOT / folder).rglob("*.py"))]


def all_import_refs() -> list[ImportRef]:
    module_of = {path: name for name, path in package_modules().items()}
    return [ref for path in scanned_files() for ref in import_refs(path, module_of.get(path))]


def test_every_import_of_the_package_resolves():
    """Function-level imports included: benchmarks/harness_overhead.py once imported
    ``TORCH_POLICIES`` from backends/torch/base.py after a restructuring removed it, and only
    failed when run. Read statically, so no framework is imported."""
    modules = package_modules()
    refs = [ref for ref in all_import_refs() if ref.module.split(".")[0] in (PACKAGE, "")]
    assert len(refs) > 300 and any(ref.path.parent.name == "benchmarks" for ref in refs)
    problems = [problem for ref in refs if (problem := unresolved_package_import(ref, modules))]
    assert problems == [], "\n".join(problems)


def test_every_other_import_names_an_installed_or_optional_module():
    """The standard library and dependencies are found (without importing them); only the
    optional frameworks may be missing from this environment."""
    tops = {ref.module.split(".")[0] for ref in all_import_refs()} - {PACKAGE}
    missing = sorted(top for top in tops if importlib.util.find_spec(top) is None)
    assert {"torch", "numpy", "matplotlib", "json"} <= tops
    assert set(missing) <= set(FRAMEWORKS), f"imported but neither installed nor an optional framework: {missing}"


def test_resolver_finds_a_planted_stale_name(tmp_path, monkeypatch):
    """The checker itself: a lazy import of a removed name, a missing module and a relative
    import are reported; a defined name, a submodule and a conditional definition are not."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "base.py").write_text(
        "import os\nfrom typing import Any as Anything\nPOLICY_SPECS = {}\n"
        "try:\n    FAST = True\nexcept ImportError:\n    pass\ndef torch_dtype(name): ...\n"
    )
    script = tmp_path / "script.py"
    script.write_text(
        "def main():\n"
        "    from pkg.base import POLICY_SPECS, FAST, Anything, os, torch_dtype\n"
        "    from pkg import base\n"
        "    from pkg.base import TORCH_POLICIES\n"
        "    import pkg.gone\n"
        "    from . import sibling\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    modules = {"pkg": package / "__init__.py", "pkg.base": package / "base.py"}
    problems = [p for ref in import_refs(script, None) if (p := unresolved_package_import(ref, modules))]
    assert problems == [
        "script.py:4: TORCH_POLICIES from pkg.base: pkg.base (pkg/base.py) defines no TORCH_POLICIES",
        "script.py:5: pkg.gone: no module pkg.gone",
        "script.py:6: sibling from .: no module .",
    ]


IMPORT_NAMES = """
import importlib, json, sys
failed = []
for module, name, where in json.loads(sys.argv[1]):
    try:
        imported = importlib.import_module(module)
        if name is not None and name != "*" and not hasattr(imported, name):
            importlib.import_module(f"{module}.{name}")
    except ImportError as exc:
        failed.append(f"{where}: {name or module} from {module}: {exc!r}")
print(json.dumps(failed))
"""


@pytest.mark.slow
@pytest.mark.parametrize("framework", [*FRAMEWORKS, None])
def test_every_other_import_names_an_existing_name(framework):
    """Names imported from the standard library and dependencies exist (imported for real,
    in a fresh interpreter per framework so each starts clean; skipped where not installed)."""
    refs = [ref for ref in all_import_refs() if ref.module.split(".")[0] not in (PACKAGE, "")]
    if framework is None:
        refs = [ref for ref in refs if ref.module.split(".")[0] not in FRAMEWORKS]
    else:
        if importlib.util.find_spec(framework) is None:
            pytest.skip(f"{framework} is not installed")
        refs = [ref for ref in refs if ref.module.split(".")[0] == framework]
    wanted = [(ref.module, ref.name, str(ref)) for ref in sorted(set(refs), key=str)]
    env = {**os.environ, "KERAS_BACKEND": "jax" if framework == "jax" else "tensorflow"}
    command = [sys.executable, "-c", IMPORT_NAMES, json.dumps(wanted)]
    # From the repository root: benchmarks/ import the tests' record builder (tests.helpers).
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1]) == []
