"""``junit.xml``: the run's verdicts as test cases, in the JUnit XML dialect CI systems read.

The layout follows the schema Jenkins' xUnit plugin validates against (``junit-10.xsd``;
GitHub, GitLab and Azure read the same subset): ``testsuites`` > one ``testsuite`` per
(model, dataset, device) group > one ``testcase`` per verdict (``classname`` = the group,
``name`` = the verdict's subject and kind) and per job that produced no result.

- an enforced FAIL / FAILED verdict is a ``failure``; an information-only one passes and says
  so in ``system-out`` (it never fails ``check`` either);
- an INCONCLUSIVE verdict (and one with no baseline, or not comparable) is ``skipped`` with
  the reason: nothing was shown either way;
- an ``unavailable`` job is ``skipped`` with its reason; a crashed / timed-out / oom / error /
  diverged job is an ``error`` with its message — except a ``-pure`` policy diverging, which
  the run treats as information (exit code and ``check`` alike): ``skipped``, saying so.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from precision_suite.results import is_job_failure
from precision_suite.verdicts.compare import PASS, Comparison, JobNote, Verdict

JUNIT_FILE = "junit.xml"
SUITES_NAME = "precision-suite"

# XML 1.0 cannot carry most control characters, which a crashed worker's message may contain.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def xml_text(text: Any) -> str:
    return _XML_INVALID.sub("?", str(text))


@dataclass
class Case:
    """One test case: ``kind`` is "" (passed), "failure", "error" or "skipped"."""

    classname: str
    name: str
    kind: str = ""
    message: str = ""
    type: str = ""
    output: str = ""
    time_s: float = 0.0


@dataclass
class Suite:
    name: str
    cases: list[Case] = field(default_factory=list)
    properties: dict[str, str] = field(default_factory=dict)

    def count(self, kind: str) -> int:
        return sum(case.kind == kind for case in self.cases)


def verdict_case(group_key: str, verdict: Verdict) -> Case:
    case = Case(group_key, f"{verdict.subject} [{verdict.name}]", output=verdict.detail)
    outcome = verdict.outcome
    if verdict.is_failure:
        case.kind, case.type = "failure", f"{verdict.name} {outcome}"
        case.message = f"{verdict.name} {outcome.upper()}: {verdict.detail}"
    elif outcome == PASS:
        pass
    elif not verdict.enforced:
        case.output = f"information only ({verdict.name} {outcome.upper()}): {verdict.detail}"
    else:
        # INCONCLUSIVE, no baseline, not comparable, or an outcome this file does not know: the
        # claim was neither shown nor refuted — a skip that says why, never a silent pass.
        case.kind, case.type = "skipped", f"{verdict.name} {outcome}"
        case.message = f"{verdict.name} {outcome.upper()}: {verdict.detail}"
    return case


def job_case(note: JobNote, kind: str, wall_s: float | None) -> Case:
    seed = "" if note.seed is None else f" seed {note.seed}"
    return Case(
        f"{note.model}/{note.dataset}/{note.device}",
        f"{note.model}/{note.dataset}/{note.device} {note.backend} {note.policy}{seed} [job]",
        kind=kind,
        type=note.status,
        message=f"{note.status}: {note.message}",
        time_s=wall_s or 0.0,
    )


def build_suites(comparison: Comparison, records: list[dict[str, Any]]) -> list[Suite]:
    wall_s = {str(r.get("job_id")): (r.get("metrics") or {}).get("wall_s") for r in records}
    suites: dict[str, Suite] = {}
    for group in comparison.groups:
        suite = suites.setdefault(group.key, Suite(group.key))
        if group.device_name:
            suite.properties["device_name"] = group.device_name
        suite.properties["tolerance_pts"] = f"{group.tolerance_pts:g}"
        for row in group.rows:
            suite.cases.extend(verdict_case(group.key, v) for v in row.verdicts)
        suite.cases.extend(verdict_case(group.key, v) for v in group.verdicts)
    by_id = {str(r.get("job_id")): r for r in records}
    notes: dict[str, list[Case]] = defaultdict(list)
    for note in comparison.failed_jobs:
        record = by_id.get(note.job_id, {"status": note.status})
        # A -pure policy diverging is information (it does not fail the run), so not a CI error.
        failure = is_job_failure(record, comparison.check_pure)
        case = job_case(note, "error" if failure else "skipped", wall_s.get(note.job_id))
        if not failure:
            case.message = f"information only, not checked: {case.message}"
        notes[f"{note.model}/{note.dataset}/{note.device}"].append(case)
    for note in comparison.unavailable:
        notes[f"{note.model}/{note.dataset}/{note.device}"].append(job_case(note, "skipped", wall_s.get(note.job_id)))
    for key, cases in notes.items():
        suites.setdefault(key, Suite(key)).cases.extend(cases)
    return list(suites.values())


def _seconds(value: float) -> str:
    return f"{max(value, 0.0):.3f}"


def junit_xml(comparison: Comparison, records: list[dict[str, Any]]) -> str:
    suites = build_suites(comparison, records)
    root = ET.Element("testsuites", name=SUITES_NAME)
    totals = {"tests": 0, "failures": 0, "errors": 0}
    total_s = 0.0
    for suite in suites:
        suite_s = sum(case.time_s for case in suite.cases)
        counts = {
            "tests": len(suite.cases),
            "failures": suite.count("failure"),
            "errors": suite.count("error"),
        }
        for key, value in counts.items():
            totals[key] += value
        total_s += suite_s
        node = ET.SubElement(
            root,
            "testsuite",
            name=xml_text(suite.name),
            **{key: str(value) for key, value in counts.items()},
            skipped=str(suite.count("skipped")),
            time=_seconds(suite_s),
        )
        if suite.properties:
            props = ET.SubElement(node, "properties")
            for name, value in suite.properties.items():
                ET.SubElement(props, "property", name=xml_text(name), value=xml_text(value))
        for case in suite.cases:
            case_node = ET.SubElement(
                node,
                "testcase",
                classname=xml_text(case.classname),
                name=xml_text(case.name),
                time=_seconds(case.time_s),
            )
            if case.kind:
                child = ET.SubElement(case_node, case.kind, message=xml_text(case.message), type=xml_text(case.type))
                child.text = xml_text(case.message)
            if case.output:
                ET.SubElement(case_node, "system-out").text = xml_text(case.output)
    for key, value in totals.items():
        root.set(key, str(value))
    root.set("time", _seconds(total_s))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(out_dir: Path, comparison: Comparison, records: list[dict[str, Any]]) -> Path:
    path = Path(out_dir) / JUNIT_FILE
    path.write_text(junit_xml(comparison, records), encoding="utf-8")
    return path
