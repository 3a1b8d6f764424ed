from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from precision_suite.outputs.junit import junit_xml, write_junit
from precision_suite.verdicts.compare import compare

from tests.helpers.records import default_run, make_record

xmlschema = pytest.importorskip("xmlschema")
SCHEMA = Path(__file__).resolve().parent.parent / "data" / "junit-10.xsd"


def _run_with_problems() -> list[dict]:
    records = default_run(seeds=(0, 1))
    # A parity failure, a crashed job and an unavailable one, with a control character that XML
    # cannot carry in the crash message.
    records += [make_record("torch-manual", "fp16-mixed", s, accuracy=0.80) for s in (0, 1)]
    records.append(
        make_record("tf-keras", "fp16-mixed", 0, status="crashed", error="worker killed by SIGKILL\x07 at step 3")
    )
    return records


def _parse(text: str) -> ET.Element:
    return ET.fromstring(text.encode("utf-8"))


def test_junit_validates_against_the_jenkins_schema_and_maps_outcomes():
    records = _run_with_problems()
    comparison = compare(records)
    text = junit_xml(comparison, records)
    xmlschema.XMLSchema(str(SCHEMA)).validate(text)  # raises on any deviation

    root = _parse(text)
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert all(c.get("classname") == "mlp/digits/cpu" for c in cases.values())
    failed = cases["mlp/digits/cpu torch-manual fp16-mixed [parity]"]
    assert failed.find("failure") is not None and "parity FAIL" in failed.find("failure").get("message")
    assert cases["mlp/digits/cpu torch-amp bf16-mixed [parity]"].find("failure") is None
    crashed = cases["mlp/digits/cpu tf-keras fp16-mixed seed 0 [job]"].find("error")
    assert crashed.get("type") == "crashed" and "SIGKILL? at step 3" in crashed.get("message")
    unavailable = cases["mlp/digits/cpu torch-amp tf32 seed 0 [job]"].find("skipped")
    assert "CUDA" in unavailable.get("message")
    # An information-only failure (-pure parity) passes but says so.
    pure = cases["mlp/digits/cpu torch-manual bf16-pure [parity]"]
    assert pure.find("failure") is None and "information only" in pure.find("system-out").text

    suite = root.find("testsuite")
    assert int(suite.get("tests")) == len(cases)
    assert int(suite.get("failures")) == sum(c.find("failure") is not None for c in cases.values())
    assert int(suite.get("errors")) == 1 and int(suite.get("skipped")) == 1
    assert root.get("failures") == suite.get("failures")


def test_inconclusive_and_unknown_outcomes_are_skipped_with_the_reason(tmp_path):
    records = default_run(seeds=(0, 1))
    comparison = compare(records)
    parity = comparison.groups[0].rows[1].verdict("parity")
    parity.outcome, parity.detail = "inconclusive", "CI of Δ straddles the band; about 4 more seeds needed"
    path = write_junit(tmp_path, comparison, records)
    xmlschema.XMLSchema(str(SCHEMA)).validate(str(path))
    case = next(c for c in _parse(path.read_text()).iter("testcase") if c.get("name") == f"{parity.subject} [parity]")
    skipped = case.find("skipped")
    assert skipped is not None and case.find("failure") is None
    assert skipped.get("message") == "parity INCONCLUSIVE: CI of Δ straddles the band; about 4 more seeds needed"


def test_a_schema_violation_would_be_caught():
    # The check above means something only if the schema rejects what CI readers reject.
    bad = '<testsuites><testsuite name="x" tests="1"><testcase name="y"/></testsuite></testsuites>'
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        xmlschema.XMLSchema(str(SCHEMA)).validate(bad)


def test_a_diverged_pure_policy_is_information_not_a_ci_error():
    records = default_run(seeds=(0,))
    records += [
        make_record("torch-manual", "fp16-pure", 0, status="diverged", error="loss non-finite from step 2"),
        make_record("torch-amp", "bf16-mixed", 1, status="diverged", error="loss non-finite from step 7"),
    ]
    comparison = compare(records)
    text = junit_xml(comparison, records)
    xmlschema.XMLSchema(str(SCHEMA)).validate(text)
    cases = {c.get("name"): c for c in _parse(text).iter("testcase")}
    pure = cases["mlp/digits/cpu torch-manual fp16-pure seed 0 [job]"]
    assert pure.find("error") is None
    assert pure.find("skipped").get("message").startswith("information only, not checked: diverged")
    mixed = cases["mlp/digits/cpu torch-amp bf16-mixed seed 1 [job]"].find("error")
    assert mixed.get("message") == "diverged: loss non-finite from step 7"
