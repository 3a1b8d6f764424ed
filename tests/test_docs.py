"""The docs match the code.

The README's configuration table is checked against the schema itself (the pydantic models of
``suite/config.py`` and every project backend's ``Options``), so a key added without a row, a row
for a key that is gone, or a default that drifted fails here. The links, config files, paths,
module names and CLI commands the docs name are checked against the repository and the CLI.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import pytest
from precision_suite.backends import get_backend_class, registry
from precision_suite.cli import main
from precision_suite.config import SuiteConfig, load_config, parse_yaml
from precision_suite.plan import check_backends
from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOC_FILES = [README, *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "README.md"]
# Where the repository's own text lives (docs, code, configs, scripts): the folders path
# references are searched in.
SOURCE_DIRS = ("backends", "benchmarks", "configs", "docs", "suite", "tests")
TEXT_SUFFIXES = {".md", ".py", ".yaml", ".sh", ".toml"}


# ---------------------------------------------------------------- reading markdown
def _without_code(text: str) -> str:
    """Markdown with its fenced code blocks blanked (headings and links inside them are not)."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            out.append("")
            continue
        out.append("" if fenced else line)
    return "\n".join(out)


def _code_lines(text: str) -> list[str]:
    """Every line of a fenced code block and every inline code span: where commands are shown."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif fenced:
            lines.append(line)
    lines += re.findall(r"`([^`\n]+)`", _without_code(text))
    return lines


def _section(text: str, title: str) -> str:
    """The body of the ``## title`` section (up to the next ``##`` heading)."""
    lines = _without_code(text).splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == f"## {title}"]
    assert len(starts) == 1, f'README.md needs exactly one "## {title}" section'
    end = next((i for i in range(starts[0] + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[starts[0] + 1 : end])


def _tables(section: str) -> list[list[list[str]]]:
    """The section's tables: each a list of rows (header and separator dropped), each a list of
    cells. A blank line ends a table, which is why the README's old table broke in two."""
    tables, block = [], []
    for line in [*section.splitlines(), ""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            tables.append([[cell.strip() for cell in row.strip().strip("|").split("|")] for row in block[2:]])
            block = []
    return tables


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _headings(path: Path) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"^#{1,6} (.+)$", _without_code(path.read_text()), re.M)]


# ---------------------------------------------------------------- the schema
def _model_classes(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [cls for arg in typing.get_args(annotation) for cls in _model_classes(arg)]


def _literal_choices(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return [choice for arg in typing.get_args(annotation) for choice in _literal_choices(arg)]


# Dotted key → the (model class, field name) pairs that define it: several where the model kinds
# share a key (models[].name, models[].dropout).
SchemaKeys = dict[str, list[tuple[type[BaseModel], str]]]


def _walk(cls: type[BaseModel], prefix: str, keys: SchemaKeys) -> None:
    for name, field in cls.model_fields.items():
        key = prefix + name
        classes = _model_classes(field.annotation)
        if classes != [field.annotation]:  # a value a user writes, not only a section of keys
            keys.setdefault(key, []).append((cls, name))
        below = "[]." if typing.get_origin(field.annotation) is list else "."
        for sub in classes:
            _walk(sub, key + below, keys)


def project_backends() -> list[str]:
    """The backends this project ships (built in or through its own entry points)."""
    return [name for name, target in registry().items() if target.startswith("precision_suite.")]


def schema_keys() -> SchemaKeys:
    keys: SchemaKeys = {}
    _walk(SuiteConfig, "", keys)
    for backend in project_backends():
        _walk(get_backend_class(backend).Options, f"backends.options.{backend}.", keys)
    return keys


def config_table() -> dict[str, list[str]]:
    """The README's configuration table: key → [type, default, meaning]."""
    tables = _tables(_section(README.read_text(), "Configuration"))
    assert len(tables) == 1, f"the Configuration section must hold one table (every key in it), found {len(tables)}"
    rows: dict[str, list[str]] = {}
    for cells in tables[0]:
        assert len(cells) == 4, f"a configuration row has 4 cells (key, type, default, meaning), got {cells}"
        match = re.fullmatch(r"`([^`]+)`", cells[0])
        assert match, f"the key cell is one `dotted.key`, got {cells[0]!r}"
        assert match.group(1) not in rows, f"{match.group(1)} has two rows"
        assert cells[3], f"{match.group(1)}: no meaning given"
        rows[match.group(1)] = cells[1:]
    return rows


# ---------------------------------------------------------------- configuration table
def test_every_schema_key_has_a_readme_row_and_every_row_a_schema_key():
    documented, schema = set(config_table()), set(schema_keys())
    assert not schema - documented, (
        f"keys without a row in the README's Configuration table: {sorted(schema - documented)}"
    )
    assert not documented - schema, f"README rows for keys the schema does not have: {sorted(documented - schema)}"


def _dumped(instance: BaseModel, name: str) -> Any:
    # A key left out of the dump while it holds its default (models[].keep_fp32) reads as that default.
    return instance.model_dump(mode="json").get(name, getattr(instance, name))


def _default_of(cls: type[BaseModel], name: str) -> Any:
    return _dumped(cls(), name)


def test_readme_defaults_are_the_schema_defaults():
    rows, keys = config_table(), schema_keys()
    for key, owners in keys.items():
        cell = rows[key][1]
        defaults = [_default_of(cls, name) for cls, name in owners]
        literal = re.fullmatch(r"`([^`]+)`", cell)
        if any(d != defaults[0] for d in defaults):
            # Shared by model kinds that default it differently (models[].name): said in words.
            assert not literal, f"{key}: the kinds default it differently ({defaults}); the README says {cell}"
            continue
        assert literal, f"{key}: give the default as one `value`, got {cell!r}"
        value = parse_yaml(literal.group(1), f"README default of {key}")
        for cls, name in owners:
            # Validated as a user's value would be (so `[mlp, cnn, transformer]` is the models' default).
            given = _dumped(cls.model_validate({name: value}), name)
            assert given == _default_of(cls, name), f"{key}: README says {cell}, the schema says {defaults[0]!r}"


def test_readme_names_every_choice_of_a_key():
    rows = config_table()
    for key, owners in schema_keys().items():
        choices = {c for cls, name in owners for c in _literal_choices(cls.model_fields[name].annotation)}
        text = " ".join(rows[key])
        missing = sorted(str(c) for c in choices if f"`{c}`" not in text)
        assert not missing, f"{key}: the README's row does not name the choices {missing}"


def test_readme_says_what_the_default_run_sets_differently():
    """Where configs/default.yaml departs from the schema defaults, the paragraph under the table says so."""
    section = _section(README.read_text(), "Configuration")
    paragraph = next((p for p in section.split("\n\n") if p.startswith("The default run (`configs/default.yaml`)")), "")
    assert paragraph, 'no paragraph starting "The default run (`configs/default.yaml`)" under the table'
    keys = schema_keys()

    def differing(schema: Any, packaged: Any, path: str) -> list[str]:
        """The documented keys at or below ``path`` whose values differ."""
        if path in keys or not (isinstance(schema, dict) and isinstance(packaged, dict)):
            return [path] if schema != packaged else []
        found = []
        for sub in schema.keys() | packaged.keys():
            found += differing(schema.get(sub), packaged.get(sub), f"{path}.{sub}".lstrip("."))
        return found

    changed = differing(SuiteConfig().model_dump(mode="json"), load_config(None).model_dump(mode="json"), "")
    assert changed, "the default run sets nothing differently? (this test would then check nothing)"
    missing = sorted(k for k in changed if f"`{k}`" not in paragraph)
    assert not missing, f"configs/default.yaml sets {missing} differently from the schema; the README does not say so"


def test_schema_default_backends_are_the_default_runs():
    """A config that leaves out backends.names runs what the embedded default runs."""
    assert SuiteConfig().backends.names == load_config(None).backends.names


def test_backends_table_lists_each_backends_options():
    tables = _tables(_section(README.read_text(), "Backends"))
    rows = {re.sub(r"`", "", cells[0]): cells[-1] for cells in tables[0]}
    assert set(rows) == set(project_backends())
    for backend, cell in rows.items():
        options = list(get_backend_class(backend).Options.model_fields)
        listed = re.findall(r"`([^`]+)`", cell)
        assert listed == options, f"Backends table, {backend}: options column lists {listed}, the backend has {options}"


# ---------------------------------------------------------------- links, files and names
def test_relative_links_and_anchors_resolve():
    for doc in DOC_FILES:
        for target in re.findall(r"\]\(([^)\s]+)\)", _without_code(doc.read_text())):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (doc.parent / path).resolve() if path else doc
            assert resolved.exists(), f"{doc.relative_to(REPO)}: link to {target}: no such file"
            if anchor and resolved.suffix == ".md":
                slugs = {_slug(h) for h in _headings(resolved)}
                assert anchor in slugs, f"{doc.relative_to(REPO)}: link to {target}: no such heading in {resolved.name}"


def _repo_text_files() -> list[Path]:
    files = [REPO / "README.md", REPO / "pyproject.toml"]
    for folder in SOURCE_DIRS:
        files += [p for p in (REPO / folder).rglob("*") if p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts]
    # Not this file: its patterns would find themselves.
    return [p for p in files if p != Path(__file__).resolve()]


def test_named_configs_exist_and_load():
    named = set()
    for path in [*DOC_FILES, *(REPO / "benchmarks").iterdir()]:
        if path.suffix in TEXT_SUFFIXES:
            named |= set(re.findall(r"\bconfigs/[\w.-]+\.yaml\b", path.read_text()))
    assert "configs/ci.yaml" in named and "configs/default.yaml" in named
    for name in sorted(named):
        path = REPO / name
        assert path.is_file(), f"{name} is named in the docs but not shipped"
        check_backends(load_config(path), name)  # loads, and names real backends, policies, options


def test_repository_paths_named_in_text_exist():
    """A path like ``tests/helpers/fake_backend.py`` in any doc, docstring, comment or config."""
    pattern = re.compile(r"(?<![\w/.-])(?:" + "|".join(SOURCE_DIRS) + r")/[\w/.-]*\.(?:py|md|yaml|sh|toml)\b")
    stale = []
    for path in _repo_text_files():
        for name in set(pattern.findall(path.read_text())):
            if not (REPO / name).exists():
                stale.append(f"{path.relative_to(REPO)}: {name}")
    assert not stale, "paths that do not exist: " + "; ".join(sorted(stale))


def test_sections_named_in_text_exist():
    """References such as (docs/architecture.md, "Measurement rules") or (README, "Verdicts")."""
    docs = {"README": README, "README.md": README} | {f"docs/{p.name}": p for p in (REPO / "docs").glob("*.md")}
    pattern = re.compile(r"(README(?:\.md)?|docs/[\w-]+\.md),?\s+\"([^\"]+)\"")
    missing = []
    for path in _repo_text_files():
        text = re.sub(r"\n\s*#\s*", " ", path.read_text())  # a reference may wrap onto a comment line
        for doc, title in pattern.findall(text):
            if title not in {h.replace("`", "") for h in _headings(docs[doc])}:
                missing.append(f'{path.relative_to(REPO)}: {doc}, "{title}"')
    assert not missing, "sections that do not exist: " + "; ".join(missing)


def test_module_names_in_docs_resolve():
    import importlib

    for doc in DOC_FILES:
        for dotted in set(re.findall(r"`(precision_suite(?:\.\w+)+)", doc.read_text())):
            parts = dotted.split(".")
            for i in range(len(parts), 0, -1):
                try:
                    obj = importlib.import_module(".".join(parts[:i]))
                except ModuleNotFoundError:
                    continue
                for attr in parts[i:]:
                    assert hasattr(obj, attr), f"{doc.relative_to(REPO)}: {dotted}: {obj.__name__} has no {attr}"
                    obj = getattr(obj, attr)
                break


def _help(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    out = capsys.readouterr()
    assert exit_info.value.code == 0, f"precision-suite {command}: not a command ({out.err.strip()})"
    return out.out


def test_commands_in_the_docs_are_cli_commands(capsys):
    shown: dict[str, set[str]] = {}
    for doc in DOC_FILES:
        for line in _code_lines(doc.read_text()):
            for command, rest in re.findall(r"precision-suite ([a-z][\w-]*)([^#\n]*)", line):
                shown.setdefault(command, set()).update(re.findall(r"(?<![\w-])--[a-z][\w-]*", rest))
    assert {"run", "check", "diff", "advise", "export"} <= set(shown)
    for command, options in sorted(shown.items()):
        helptext = _help(command, capsys)
        unknown = sorted(o for o in options if o not in helptext)
        assert not unknown, f"the docs show precision-suite {command} with {unknown}, which it does not take"


def test_set_keys_in_the_docs_are_config_keys():
    keys = set(config_table())
    mappings = {k for k, row in config_table().items() if row[0].startswith("mapping")}
    for doc in DOC_FILES:
        for key in re.findall(r"--set '?([a-z][\w.-]*)=", doc.read_text()):
            known = key in keys or any(key.startswith(m + ".") for m in mappings)
            assert known, f"{doc.relative_to(REPO)}: --set {key}: not a key of the Configuration table"
