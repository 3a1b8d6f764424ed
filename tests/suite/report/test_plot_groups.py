"""report.plot_groups: which model groups' plots a report draws when a sweep has more groups than
that, what the page says about the others, and what stays in plots/."""

from __future__ import annotations

import re

import pytest
import yaml
from precision_suite import report
from precision_suite.cli import main
from precision_suite.report import plots
from precision_suite.results import CONFIG_FILE, RESULTS_FILE, append_record
from precision_suite.verdicts.compare import FAIL, INCONCLUSIVE, PASS, compare

from tests.helpers.records import make_record

MODELS = ("m0", "m1", "m2", "m3", "m4", "m5")
FAILED_JOB, FAILING, UNSURE = "m1", "m3", "m4"  # the groups that need attention, set up below


def sweep_records() -> list[dict]:
    """Six model groups, each fp32 and bf16-mixed on torch-amp over three seeds: m1 has a
    crashed job, m3's bf16 loses 15 points (parity FAIL), m4's bf16 seeds scatter by ±3 points
    around fp32 (parity INCONCLUSIVE); the others pass."""
    records = []
    for model in MODELS:
        for seed in (0, 1, 2):
            fp32 = 0.95 + 0.002 * seed
            bf16 = {FAILING: fp32 - 0.15, UNSURE: fp32 + (-0.03, 0.03, 0.0)[seed]}.get(model, fp32 - 0.001)
            records.append(make_record("torch-amp", "fp32", seed, accuracy=fp32, model=model))
            records.append(make_record("torch-amp", "bf16-mixed", seed, accuracy=bf16, model=model))
    records.append(make_record("torch-amp", "bf16-mixed", 3, status="crashed", error="SIGSEGV", model=FAILED_JOB))
    return records


def parity_of(comparison, model: str) -> str:
    (group,) = [g for g in comparison.groups if g.model == model]
    (row,) = [r for r in group.rows if r.policy == "bf16-mixed"]
    return row.verdict("parity").outcome


def test_the_sweep_is_what_the_tests_below_assume():
    comparison = compare(sweep_records())
    assert [g.model for g in comparison.groups] == list(MODELS)
    outcomes = {model: parity_of(comparison, model) for model in MODELS}
    assert outcomes == {"m0": PASS, "m1": PASS, "m2": PASS, "m3": FAIL, "m4": INCONCLUSIVE, "m5": PASS}
    (failed,) = [g for g in comparison.groups if any(r.seeds_failed for r in g.rows)]
    assert failed.model == FAILED_JOB


@pytest.mark.parametrize(
    ("limit", "shown"),
    [
        (None, MODELS),
        (6, MODELS),
        (0, ()),
        (1, ("m1",)),  # both need attention equally: the first in table order
        (2, ("m1", "m3")),
        (3, ("m1", "m3", "m4")),
        (4, ("m0", "m1", "m3", "m4")),
        (5, ("m0", "m1", "m2", "m3", "m4")),
    ],
)
def test_groups_that_need_attention_get_their_plots_first_and_stay_in_table_order(limit, shown):
    assert [g.model for g in plots.shown_groups(compare(sweep_records()), limit)] == list(shown)


def images_by_section(markdown: str) -> dict[str, list[str]]:
    """Per `## ` section title's first word, the plot files it shows."""
    out: dict[str, list[str]] = {}
    for section in markdown.split("\n## ")[1:]:
        title, _, body = section.partition("\n")
        out[title.split(" ")[0]] = re.findall(r"\]\(plots/([^)]+\.png)\)", body)
    return out


def write_run(path, records, plot_groups=None):
    path.mkdir(parents=True)
    for record in records:
        append_record(path / RESULTS_FILE, record)
    if plot_groups is not None:
        (path / CONFIG_FILE).write_text(yaml.safe_dump({"report": {"plot_groups": plot_groups}}))
    return path


def test_report_draws_the_groups_the_run_config_names_and_says_how_to_draw_the_rest(tmp_path, capsys):
    run = write_run(tmp_path / "run", sweep_records(), plot_groups=2)
    assert main(["report", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "plots: 2 of 6 model groups" in printed and f"report {run} --plot-groups all" in printed

    markdown = (run / "report.md").read_text()
    shown = images_by_section(markdown)
    assert [title for title, images in shown.items() if images] == ["m1", "m3"]
    assert all(image.endswith(("_m1_digits_cpu.png", "_m3_digits_cpu.png")) for image in shown["m1"] + shown["m3"])
    assert "Plots are drawn for 2 of 6 model groups" in markdown and "--plot-groups all" in markdown
    assert markdown.count("No plots drawn for this group") == 4
    page = (run / "report.html").read_text()
    assert len(re.findall(r"<img ", page)) == len(shown["m1"]) + len(shown["m3"])
    assert "Plots are drawn for 2 of 6 model groups" in page
    on_disk = sorted(p.name for p in (run / "plots").glob("*.png"))
    assert on_disk == sorted(shown["m1"] + shown["m3"])

    # --plot-groups all: every group's, the two drawn before read back, no note.
    assert main(["report", str(run), "--plot-groups", "all"]) == 0
    markdown = (run / "report.md").read_text()
    assert all(images_by_section(markdown)[model] for model in MODELS)
    assert "No plots drawn" not in markdown and "Plots are drawn for" not in markdown
    assert len(list((run / "plots").glob("*.png"))) == sum(map(len, images_by_section(markdown).values()))


def test_plots_of_groups_not_shown_stay_while_current_and_go_when_stale(tmp_path, monkeypatch):
    """A report that shows fewer groups than the last one leaves those groups' PNGs (still
    current: a later report that shows them reads them back) but removes a group's PNGs once its
    records changed; every PNG left is the one a fresh report draws."""
    records = sweep_records()
    out = tmp_path / "run"
    report.write_reports(out, compare(records), records)  # every group's
    everything = {p.name: p.read_bytes() for p in (out / "plots").glob("*.png")}

    drawn = []  # drawn here (one worker: this process), so a patched draw_group counts them
    draw_group = plots.draw_group
    monkeypatch.setattr(plots, "draw_group", lambda inputs: drawn.append(inputs.group.model) or draw_group(inputs))
    comparison = compare(records)
    paths = report.write_reports(
        out, comparison, records, report.start_plots(comparison, records, 1, out / "plots", limit=2)
    )
    assert drawn == []  # both read back
    assert sorted(p.name for p in paths if p.suffix == ".png") == sorted(
        name for name in everything if name.endswith(("_m1_digits_cpu.png", "_m3_digits_cpu.png"))
    )
    assert {p.name: p.read_bytes() for p in (out / "plots").glob("*.png")} == everything

    # m0 (not shown) changes: its PNGs are stale and go; the rest stay.
    records = [r for r in records if not (r["model"] == "m0" and r["policy"] == "bf16-mixed" and r["seed"] == 2)]
    comparison = compare(records)
    report.write_reports(out, comparison, records, report.start_plots(comparison, records, 1, out / "plots", limit=2))
    left = {p.name: p.read_bytes() for p in (out / "plots").glob("*.png")}
    assert left == {name: png for name, png in everything.items() if "_m0_" not in name}

    # Shown again: m0 drawn (once), the others read back, the same bytes as a fresh report's.
    drawn.clear()
    report.write_reports(out, comparison, records, report.start_plots(comparison, records, 1, out / "plots"))
    assert drawn == ["m0"]
    fresh = tmp_path / "fresh"
    report.write_reports(fresh, comparison, records, report.start_plots(comparison, records, 1))
    assert {p.name: p.read_bytes() for p in (out / "plots").glob("*.png")} == {
        p.name: p.read_bytes() for p in (fresh / "plots").glob("*.png")
    }


@pytest.mark.parametrize("value", ["-1", "x", "2.5", ""])
def test_a_bad_plot_groups_value_is_a_usage_error(tmp_path, capsys, value):
    run = write_run(tmp_path / "run", sweep_records()[:2])
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(run), "--plot-groups", value])
    assert exit_info.value.code == 2
    assert "--plot-groups: expected a number of model groups >= 0 or 'all'" in capsys.readouterr().err
    assert not (run / "report.md").exists()
