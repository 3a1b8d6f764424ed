"""Terminal tables, report.md / report.html / summary.csv, and the HTML in a real browser."""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import re

import pytest
from precision_suite import report
from precision_suite.report import plots
from precision_suite.report.sections import Image
from precision_suite.verdicts.compare import compare
from precision_suite.verdicts.data_parallel import ScalingRow
from rich.console import Console

from tests.helpers.records import default_run, make_record
from tests.helpers.render import assert_renders_in_chromium, needs_chromium

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_records():
    records = default_run(seeds=(0, 1, 2), models=("mlp",))
    records.append(make_record("tf-keras", "bf16-mixed", 3, status="crashed", error="SIGSEGV x"))
    records.append(make_record("torch-amp", "bf16-pure", 0, status="oom", error="out of memory"))
    records[-1]["metrics"] = None
    return records


def terminal_text(render, comparison, width=200) -> str:
    console = Console(record=True, width=width, color_system=None)
    render(comparison, console)
    return console.export_text()


def test_terminal_table_headlines_and_job_lists():
    comparison = compare(run_records())
    text = terminal_text(report.render_terminal, comparison)
    assert "mlp · digits · cpu" in text
    assert "torch-amp bf16-mixed: 1.7× faster, −0.2 pt, parity PASS" in text
    assert re.search(r"fp16-mixed .*emulated", text)
    assert "fp16-mixed on cpu (Test CPU): emulated (CPU has no avx512_fp16 / amx_fp16)" in text
    assert "95.20 ± 0.50" in text  # torch-amp fp32: mean of 0.950/0.952/0.954, t·s/√3
    assert "cross-framework PASS" in text
    assert "SIGSEGV x" in text and "out of memory" in text
    assert "tf32 needs a CUDA device" in text
    assert "FAILED" in text  # torch-amp bf16-pure: its only seed failed


def test_the_hardware_is_described_once_per_run_not_on_every_row():
    """fp16 emulated on two models and two backends: said once, the rows' own "why not faster"
    lines without it; a sweep of jobs whose framework is missing is one line."""
    records = default_run(models=("mlp", "cnn"))
    records += [
        make_record("torch-manual", "fp16-mixed", s, step_ms=80.0, model=m) for m in ("mlp", "cnn") for s in (0, 1, 2)
    ]
    records += [
        make_record("keras-jax", "fp32", s, model="mlp", status="unavailable", error="jax is not installed")
        for s in range(40)
    ]
    comparison = compare(records)
    no_amx = "CPU has AVX512_BF16 but no AMX for bfloat16: half matmuls gain at most the vector width"
    for group in comparison.groups:
        for row in group.rows:
            if row.policy == "bf16-mixed":
                row.why_not_faster = ["GEMM dims not multiples of 8: classes 10", no_amx]
    lines = terminal_text(report.render_terminal, comparison).splitlines()
    assert [line.strip() for line in lines if "avx512_fp16" in line] == [
        "fp16-mixed on cpu (Test CPU): emulated (CPU has no avx512_fp16 / amx_fp16): speedups shown, never claimed"
    ]
    assert [line.strip() for line in lines if "no AMX" in line] == [f"bf16-mixed on cpu (Test CPU): {no_amx}"]
    # Each row keeps its own causes: torch-amp and torch-manual, on two models.
    assert [line.strip() for line in lines if line.strip().startswith("why not faster")] == [
        f"why not faster — {backend} bf16-mixed: GEMM dims not multiples of 8: classes 10"
        for _model in ("cnn", "mlp")
        for backend in ("torch-amp", "torch-manual", "tf-keras")
    ]
    assert [line.strip() for line in lines if "jax is not installed" in line] == [
        "keras-jax — unavailable: jax is not installed (40 jobs)"
    ]


def test_terminal_marks_a_failing_policy():
    records = [make_record("torch-amp", "fp32", s, accuracy=0.95) for s in (0, 1)]
    records += [make_record("torch-amp", "bf16-mixed", s, accuracy=0.90) for s in (0, 1)]
    console = Console(record=True, width=200, force_terminal=True, color_system="truecolor")
    report.render_terminal(compare(records), console)
    styled = console.export_text(styles=True)
    # The parity failure is drawn in red (rich's "red" is ANSI 31).
    assert re.search(r"\x1b\[31m[^\x1b]*parity FAIL", styled)


def test_print_verdicts_lists_each_verdict_and_the_outcome():
    failing = compare(
        [make_record("torch-amp", "fp32", s, accuracy=0.95) for s in (0, 1)]
        + [make_record("torch-amp", "fp16-mixed", s, accuracy=0.90) for s in (0, 1)]
    )
    text = terminal_text(report.print_verdicts, failing)
    assert re.search(r"FAIL\s+parity\s+mlp/digits/cpu torch-amp fp16-mixed", text)
    assert re.search(r"PASS\s+precision-active\s+mlp/digits/cpu torch-amp fp32", text)
    assert text.strip().splitlines()[-1].startswith("FAIL: ")
    passing = terminal_text(report.print_verdicts, compare(default_run()))
    assert passing.strip().splitlines()[-1].startswith("PASS: ")


def test_write_reports_files(tmp_path):
    records = run_records()
    comparison = compare(records)
    paths = report.write_reports(tmp_path, comparison, records)
    names = [p.name for p in paths]
    assert names[:3] == ["report.md", "report.html", "summary.csv"]
    pngs = [p for p in paths if p.suffix == ".png"]
    assert {p.name.split("_mlp")[0] for p in pngs} == {
        "loss",
        "loss_scale",
        "speed_memory",
        "accuracy",
        "equivalence",
    }
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in pngs)

    markdown = (tmp_path / "report.md").read_text()
    for png in pngs:
        assert f"(plots/{png.name})" in markdown
    assert "## Environment" in markdown and "avx512_bf16" in markdown
    assert "## Failed jobs (2)" in markdown and "SIGSEGV x" in markdown

    page = (tmp_path / "report.html").read_text()
    sources = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert len(sources) == len(pngs)
    # Self-contained: every image inline, nothing fetched from anywhere.
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert all(base64.b64decode(s.split(",", 1)[1]).startswith(PNG_MAGIC) for s in sources)
    assert not re.search(r'(src|href)="(https?:|//|file:)', page)
    assert "<script" not in page


def test_plots_drawn_in_worker_processes_change_nothing(tmp_path):
    """Drawing the plots in worker processes (as ``report`` does for several groups) writes the
    same files, byte for byte, as drawing them here: report.md, report.html, every PNG."""
    records = default_run(seeds=(0, 1), models=("mlp", "cnn"))
    comparison = compare(records)
    written = {}
    for workers in (1, 2):
        out = tmp_path / f"workers{workers}"
        paths = report.write_reports(out, comparison, records, report.start_plots(comparison, records, workers))
        written[workers] = {p.relative_to(out): p.read_bytes() for p in paths}
    assert list(written[1]) == list(written[2])
    assert {p.stem for p in written[1] if p.suffix == ".png"} == {
        f"{kind}_{model}_digits_cpu"
        for kind in ("loss", "loss_scale", "speed_memory", "accuracy", "equivalence")
        for model in ("mlp", "cnn")
    }
    assert written[1] == written[2]


def test_plots_are_the_bytes_savefig_writes(monkeypatch):
    """The report saves a plot through the canvas in one draw; matplotlib's own savefig (a
    dry-run draw for the constrained layout, then the real one) writes the same bytes."""
    records = default_run(seeds=(0, 1), models=("mlp",))
    (inputs,) = plots.plot_inputs(compare(records), records)
    drawn = plots.draw_group(inputs)

    def savefig_png(figure) -> bytes:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        return buffer.getvalue()

    monkeypatch.setattr(plots, "_png", savefig_png)
    reference = plots.draw_group(inputs)
    assert [p.name for p in drawn] == [p.name for p in reference] and len(drawn) == 5
    assert [p.png for p in drawn] == [p.png for p in reference]


def _written(out, paths) -> dict:
    return {p.relative_to(out): p.read_bytes() for p in paths}


def test_a_report_written_again_draws_only_the_groups_whose_inputs_changed(tmp_path, monkeypatch):
    """Written again into the same folder, a report reads back the PNGs of every group whose
    inputs are unchanged and draws the others; every file is what a report written from scratch
    holds."""
    drawn_groups = []
    draw_group = plots.draw_group

    def counting_draw_group(inputs):
        drawn_groups.append(inputs.group.model)
        return draw_group(inputs)

    monkeypatch.setattr(plots, "draw_group", counting_draw_group)
    records = default_run(seeds=(0, 1), models=("mlp", "cnn"))
    out = tmp_path / "run"
    first = _written(out, report.write_reports(out, compare(records), records))
    assert sorted(drawn_groups) == ["cnn", "mlp"] and (out / "plots" / plots.DRAWN_FROM_FILE).is_file()

    drawn_groups.clear()
    assert _written(out, report.write_reports(out, compare(records), records)) == first
    assert drawn_groups == []

    # One cnn record changes: cnn is drawn again, mlp read back; the same files as from scratch.
    changed = next(r for r in records if (r["model"], r["backend"], r["policy"]) == ("cnn", "tf-keras", "fp32"))
    changed["metrics"]["test_accuracy"] = 0.9
    again = _written(out, report.write_reports(out, compare(records), records))
    assert drawn_groups == ["cnn"]
    fresh = tmp_path / "fresh"
    assert again == _written(fresh, report.write_reports(fresh, compare(records), records))
    assert again != first

    # A PNG gone, or other drawing code: drawn again.
    drawn_groups.clear()
    (out / "plots" / "loss_mlp_digits_cpu.png").unlink()
    assert _written(out, report.write_reports(out, compare(records), records)) == again
    assert drawn_groups == ["mlp"]
    drawn_groups.clear()
    monkeypatch.setattr(plots, "drawing_version", lambda: "other code")
    assert _written(out, report.write_reports(out, compare(records), records)) == again
    assert sorted(drawn_groups) == ["cnn", "mlp"]


def test_a_damaged_drawn_from_file_means_draw_again(tmp_path):
    records = default_run(seeds=(0, 1), models=("mlp",))
    out = tmp_path / "run"
    first = _written(out, report.write_reports(out, compare(records), records))
    (out / "plots" / plots.DRAWN_FROM_FILE).write_text('{"groups": ["not", "a", "dict"')
    assert _written(out, report.write_reports(out, compare(records), records)) == first
    (out / "plots" / plots.DRAWN_FROM_FILE).write_text('{"groups": {"mlp/digits/cpu": {"inputs": 1}}}')
    assert _written(out, report.write_reports(out, compare(records), records)) == first


@pytest.mark.parametrize(
    ("cores", "groups", "workers"), [(2, 1, 1), (2, 3, 1), (2, 4, 2), (2, 120, 2), (1, 120, 1), (16, 9, 4)]
)
def test_plots_are_drawn_by_a_worker_per_core_and_two_groups(monkeypatch, cores, groups, workers):
    """A small run is drawn in the report's own process (a worker costs as much to start as two
    groups to draw); a large one by one worker per core."""
    monkeypatch.setattr(plots, "available_cores", lambda: cores)
    assert plots.plot_workers(groups) == workers


def test_each_section_shows_its_own_groups_plots():
    """A model whose name ends another's ("mlp", "big_mlp") gets its own plots only."""
    records = [make_record("torch-amp", "fp32", 0, model=model) for model in ("mlp", "big_mlp")]
    comparison = compare(records)
    drawn = [plots.Plot(f"loss_{m}_digits_cpu", m, PNG_MAGIC, f"{m}/digits/cpu") for m in ("mlp", "big_mlp")]
    shown = {
        section.title.split(" ")[0]: [block.plot.name for block in section.blocks if isinstance(block, Image)]
        for section in report.view(report.build_report(comparison, records, drawn).sections, report.DOCUMENTS)
    }
    assert shown["mlp"] == ["loss_mlp_digits_cpu"] and shown["big_mlp"] == ["loss_big_mlp_digits_cpu"]


def test_summary_csv_has_one_row_per_backend_policy(tmp_path):
    records = default_run(seeds=(0, 1), models=("mlp", "cnn"))
    comparison = compare(records)
    report.write_reports(tmp_path, comparison, records)
    with open(tmp_path / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    keys = [(r["model"], r["dataset"], r["device"], r["backend"], r["policy"]) for r in rows]
    assert len(keys) == len(set(keys)) == len(comparison.rows) == 14
    bf16 = next(r for r in rows if (r["model"], r["backend"], r["policy"]) == ("cnn", "torch-amp", "bf16-mixed"))
    assert float(bf16["delta_pts"]) == pytest.approx(-0.2)
    assert float(bf16["speedup"]) == pytest.approx(math.sqrt(10.0 / 6.0 * 10.1 / 6.1))  # per-seed ratios' geomean
    assert bf16["parity"] == "pass" and bf16["compute_dtype"] == "bfloat16"
    fp16 = next(r for r in rows if r["policy"] == "fp16-mixed")
    assert fp16["emulated"] == "True"


def test_reports_survive_only_failed_records(tmp_path):
    records = [
        make_record("torch-amp", "fp32", 0, status="crashed", error="boom"),
        make_record("tf-keras", "fp32", 0, status="error", error="bad"),
    ]
    records[1]["metrics"] = None
    comparison = compare(records)
    paths = report.write_reports(tmp_path, comparison, records)
    assert [p.name for p in paths] == ["report.md", "report.html", "summary.csv"]
    assert "check FAILS" in (tmp_path / "report.html").read_text()
    assert "boom" in terminal_text(report.render_terminal, comparison)


def test_terminal_markdown_and_html_show_the_models_sections_in_the_same_order():
    records = run_records()
    comparison = compare(records)
    comparison.scaling = [
        ScalingRow("mlp", "digits", "cpu", "torch-amp", "fp32", n, 1000.0 * n, 1000.0, 1.0, None, None, None)
        for n in (1, 2)
    ]
    model = report.build_report(comparison, records)
    in_terminal = [s.title for s in report.view(model.sections, report.TERMINAL)]
    in_documents = [s.title for s in report.view(model.sections, report.DOCUMENTS)]
    assert in_terminal == [
        "mlp · digits · cpu — Test CPU",
        "Data-parallel weak scaling",
        "Half precision on this hardware",
        "Failed jobs (2)",
        "Unavailable jobs (not failures) (1)",
    ]
    # The documents show the terminal's sections, in the same order, and the long-form ones.
    assert [t for t in in_documents if t in in_terminal] == in_terminal
    assert {"Verdicts", "Environment"} <= set(in_documents) - set(in_terminal)

    text = "\n" + terminal_text(report.render_terminal, comparison)
    markdown = report.render_markdown(comparison, records, [])
    page = report.render_html(comparison, records, [])
    for rendered, titles, heading in (
        (text, in_terminal, "\n{}\n"),
        (markdown, in_documents, "\n## {}\n"),
        (page, [html.escape(t) for t in in_documents], ">{}</h2>"),
    ):
        positions = [rendered.find(heading.format(title)) for title in titles]
        assert -1 not in positions and positions == sorted(positions), (titles, positions)
    assert "\nVerdicts\n" not in text and "\nEnvironment\n" not in text
    # One table, two forms: the terminal's short headers without the dtype columns.
    assert "acc %" in text and "final scale" not in text
    assert "| accuracy % (95% CI) |" in markdown and "<th>final scale</th>" in page


# --- the HTML in a real browser --------------------------------------------------------------


@needs_chromium
def test_report_html_renders_in_headless_chromium_with_all_plots(tmp_path):
    records = run_records()
    paths = report.write_reports(tmp_path / "out", compare(records), records)
    assert_renders_in_chromium(tmp_path, tmp_path / "out" / "report.html", sum(p.suffix == ".png" for p in paths))
