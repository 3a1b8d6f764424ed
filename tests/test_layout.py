"""The layout of suite/ is its architecture: what runs where may import only what it must.

* ``verdicts/``, ``report/`` and ``outputs/`` only read records and decide: they never import
  ``execution/`` or a framework (torch, tensorflow, keras, jax, ray) — not at module level, not
  inside a function, and not through the modules they import at module level — so a results
  file is judged on any machine.
* ``measure/`` never imports ``verdicts/``: what is measured does not depend on how it is judged.
* suite/ itself keeps few modules at its top; the rest lives in the packages above.

A static scan (``ast``) of every import statement, outside ``if TYPE_CHECKING:`` blocks.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.test_imports import PACKAGE_DIRS, ROOT, _is_type_checking, package_modules

FRAMEWORKS = ("torch", "tensorflow", "keras", "jax", "jaxlib", "ray")
JUDGING = ("precision_suite.verdicts", "precision_suite.report", "precision_suite.outputs")
EXECUTION = "precision_suite.execution"
MEASURE = "precision_suite.measure"
VERDICTS = "precision_suite.verdicts"
MAX_TOP_MODULES = 12


def imported_names(module: str, source: str, is_package: bool, anywhere: bool) -> set[str]:
    """Every dotted name ``source`` imports (``from a.b import c`` gives ``a.b`` and ``a.b.c``):
    with ``anywhere``, in functions and classes too; without, only what runs at import time."""
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and _is_type_checking(node):
                visit(node.orelse)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = module.split(".") if is_package else module.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if anywhere:
                    visit(node.body)
            else:  # compound statements (if, try, with, for, class bodies, match) run their bodies
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, ast.stmt):
                        visit([child])
                    elif isinstance(child, ast.excepthandler | ast.match_case):
                        visit(child.body)

    visit(ast.parse(source).body)
    return found


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _framework(name: str) -> bool:
    return name.split(".")[0] in FRAMEWORKS


def forbidden_imports(modules: dict[str, Path], rules: dict[str, list]) -> list[str]:
    """Every import that breaks ``rules`` (package → predicates a name must not satisfy), each
    as ``module imports name`` (``via a -> b`` when it comes through other modules)."""
    direct = {}
    at_import = {}
    for module, path in modules.items():
        source = path.read_text()
        is_package = path.name == "__init__.py"
        direct[module] = imported_names(module, source, is_package, anywhere=True)
        at_import[module] = imported_names(module, source, is_package, anywhere=False)
    problems = []
    for module in sorted(modules):
        banned = [test for package, tests in rules.items() if _in(module, package) for test in tests]
        if not banned:
            continue
        for name in sorted(direct[module]):
            if any(test(name) for test in banned):
                problems.append(f"{module} imports {name}")
        # What importing the module loads: its module-level imports, followed through the package.
        seen, path_to = {module}, {module: [module]}
        queue = [module]
        while queue:
            current = queue.pop(0)
            for name in sorted(at_import[current]):
                if current != module and any(test(name) for test in banned):
                    problems.append(f"{module} imports {name} via {' -> '.join(path_to[current])}")
                if name in modules and name not in seen:
                    seen.add(name)
                    path_to[name] = [*path_to[current], name]
                    queue.append(name)
    # ``from a.b import c`` names both a.b and a.b.c: say it once.
    unique = set(problems)
    return sorted(p for p in unique if not _names_a_member_of_another(p, unique))


def _names_a_member_of_another(problem: str, problems: set[str]) -> bool:
    module, _, rest = problem.partition(" imports ")
    name, via = rest.partition(" via ")[0], rest.partition(" via ")[2]
    parent = name.rpartition(".")[0]
    return bool(parent) and f"{module} imports {parent}" + (f" via {via}" if via else "") in problems


RULES = {
    **{package: [lambda n: _in(n, EXECUTION), _framework] for package in JUDGING},
    MEASURE: [lambda n: _in(n, VERDICTS)],
}


def test_verdicts_reports_and_outputs_import_no_execution_and_no_framework_and_measure_no_verdicts():
    modules = package_modules()
    assert any(_in(m, VERDICTS) for m in modules) and any(_in(m, MEASURE) for m in modules)
    problems = forbidden_imports(modules, RULES)
    assert not problems, "imports that break the layout:\n" + "\n".join(problems)


def test_the_scan_finds_planted_forbidden_imports(tmp_path):
    """The checker itself: a forbidden import at module level, one inside a function, one through
    another module, and one under TYPE_CHECKING (allowed: it never runs)."""
    files = {
        "verdicts_a.py": "import torch\n",
        "verdicts_b.py": "def f():\n    from precision_suite.execution.runner import run_suite\n",
        "verdicts_c.py": "from precision_suite.results import x\n",
        "results.py": "import precision_suite.execution.local\n",
        "verdicts_d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import jax\n",
        "measure_e.py": "try:\n    from precision_suite.verdicts.compare import compare\nexcept OSError:\n    pass\n",
    }
    modules = {}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        dotted = {"results.py": "precision_suite.results"}.get(name)
        package = VERDICTS if name.startswith("verdicts") else MEASURE
        modules[dotted or f"{package}.{name[:-3]}"] = tmp_path / name
    assert forbidden_imports(modules, RULES) == [
        "precision_suite.measure.measure_e imports precision_suite.verdicts.compare",
        "precision_suite.verdicts.verdicts_a imports torch",
        "precision_suite.verdicts.verdicts_b imports precision_suite.execution.runner",
        "precision_suite.verdicts.verdicts_c imports precision_suite.execution.local via "
        "precision_suite.verdicts.verdicts_c -> precision_suite.results",
    ]


def test_suite_keeps_few_modules_at_its_top():
    top = sorted(p.stem for p in (ROOT / "suite").glob("*.py") if p.stem != "__init__")
    assert len(top) <= MAX_TOP_MODULES, f"suite/ has {len(top)} modules at its top: {top}"
    assert PACKAGE_DIRS["suite"] == "precision_suite"
