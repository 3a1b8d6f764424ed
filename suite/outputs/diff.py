"""``precision-suite diff OLD NEW``: the same jobs in two runs (before and after a framework
upgrade, on two machines, with an option changed), row by row.

A change is only called a change when it is beyond noise (``intervals``): accuracy, mean train
loss and peak memory by the paired per-seed difference and its 95 % interval; speedup by the
speedup of the row in each run (``compare.row_speed``: the speed phase where it ran, training jobs
only where they were timed alone), a change when the two intervals do not overlap — so step times
of training jobs that ran side by side never make a speed change. Verdicts are compared as
the comparison states them. ``diff`` exits 1 when a verdict that passed in OLD fails in NEW,
or a claimed (not emulated) speedup regressed beyond its interval.

Two runs are comparable when every job in both trained the same thing: the keys of the job
config other than how it was run (``runner``) and the backend ``options`` (which a diff may be
about, e.g. ``compile: true``; listed in the report) must be equal.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from precision_suite.outputs.intervals import Interval, metric, paired_change, speedup_of
from precision_suite.outputs.rundir import RunDir, RunDirError, baseline_key, ok_records_by_row, row_key, versions
from precision_suite.verdicts.compare import FAILED, PASS, Row, Verdict

# Job-config keys that say how a job was run, not what it trained: free to differ.
RUN_ONLY_KEYS = ("job_id", "runner", "config_hash")
# Keys that may differ and are reported: what a diff is often about.
NOTED_KEYS = ("options",)
MAX_KEYS_SHOWN = 10


@dataclass
class Change:
    """One quantity of one row in both runs; ``delta`` is NEW − OLD (or the interval of it)."""

    quantity: str  # accuracy | train loss | speedup | memory
    unit: str
    old: float | None
    new: float | None
    delta: Interval
    beyond_noise: bool
    note: str = ""


@dataclass
class RowDiff:
    group: str
    label: str
    changes: list[Change] = field(default_factory=list)
    verdicts: list[tuple[str, str, str]] = field(default_factory=list)  # name, OLD outcome, NEW outcome
    regressions: list[str] = field(default_factory=list)
    regressed_verdicts: set[str] = field(default_factory=set)

    @property
    def subject(self) -> str:
        return f"{self.group} {self.label}"


@dataclass
class RunDiff:
    old_dir: Path
    new_dir: Path
    rows: list[RowDiff]
    only_old: list[str]
    only_new: list[str]
    noted_differences: list[str]
    environment_differences: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[str]:
        return [f"{row.subject}: {text}" for row in self.rows for text in row.regressions]

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions else 0


# --- comparability -------------------------------------------------------------------------------


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def config_differences(old: dict[str, Any], new: dict[str, Any], ignore: tuple[str, ...]) -> list[str]:
    """Dotted keys whose values differ, as ``key: OLD vs NEW``, top-level ``ignore`` keys left out."""
    a, b = _flatten(old), _flatten(new)
    out = []
    for key in sorted(set(a) | set(b)):
        if key.split(".", 1)[0] in ignore:
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            out.append(f"{key}: {a.get(key, '<absent>')!r} vs {b.get(key, '<absent>')!r}")
    return out


def check_comparable(old: RunDir, new: RunDir) -> tuple[list[str], list[str], list[str]]:
    """Job ids only in OLD, only in NEW, and the noted (allowed) differences; raises
    ``RunDirError`` naming the differing keys when the runs are not comparable."""
    old_jobs = {str(r["job_id"]): r for r in old.records}
    new_jobs = {str(r["job_id"]): r for r in new.records}
    old_ids = set(old_jobs) | {str(r["job_id"]) for r in old.speed_records}
    new_ids = set(new_jobs) | {str(r["job_id"]) for r in new.speed_records}
    shared = sorted(set(old_jobs) & set(new_jobs))
    if not old_ids & new_ids:
        raise RunDirError(
            f"{old.path} and {new.path} have no job in common (e.g. {min(old_ids)} vs "
            f"{min(new_ids)}): not runs of the same config"
        )
    differing: dict[str, list[str]] = {}
    noted: list[str] = []
    for job_id in shared:
        old_config = old_jobs[job_id].get("config") or {}
        new_config = new_jobs[job_id].get("config") or {}
        for difference in config_differences(old_config, new_config, RUN_ONLY_KEYS + NOTED_KEYS):
            differing.setdefault(difference, []).append(job_id)
        for difference in config_differences(
            {k: old_config.get(k) for k in NOTED_KEYS}, {k: new_config.get(k) for k in NOTED_KEYS}, ()
        ):
            line = f"{old_jobs[job_id].get('backend')} {difference}"
            if line not in noted:
                noted.append(line)
    if differing:
        shown = [f"{key} ({len(jobs)} job(s))" for key, jobs in list(differing.items())[:MAX_KEYS_SHOWN]]
        more = f"; and {len(differing) - MAX_KEYS_SHOWN} more" if len(differing) > MAX_KEYS_SHOWN else ""
        raise RunDirError(
            f"{old.path} and {new.path} are not comparable: the job configs differ in " + "; ".join(shown) + more
        )
    return sorted(old_ids - new_ids), sorted(new_ids - old_ids), noted


# --- per row -------------------------------------------------------------------------------------


def _by_seed(records: list[dict[str, Any]], key: str, scale: float = 1.0) -> dict[Any, float]:
    return {r.get("seed"): v * scale for r in records if (v := metric(r, key)) is not None}


def _mean_loss(record: dict[str, Any]) -> float | None:
    values = [v for v in (record.get("curves") or {}).get("train_loss") or [] if v is not None and math.isfinite(v)]
    return float(np.mean(values)) if values else None


def _loss_curve_note(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> str:
    """Where the per-step losses of the same seed first differ (information: rounding makes
    curves on two machines drift apart however small the difference)."""
    new_by_seed = {r.get("seed"): r for r in new}
    worst, first = 0.0, None
    for record in old:
        other = new_by_seed.get(record.get("seed"))
        if other is None:
            continue
        a = np.array([np.nan if v is None else v for v in (record.get("curves") or {}).get("train_loss") or []])
        b = np.array([np.nan if v is None else v for v in (other.get("curves") or {}).get("train_loss") or []])
        if a.shape != b.shape or not a.size:
            return "curves of different lengths"
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.where(a == b, 0.0, np.abs(a - b) / np.maximum(np.abs(a), np.abs(b)))
        rel = np.where(np.isnan(rel) & ~(np.isnan(a) & np.isnan(b)), np.inf, np.nan_to_num(rel, nan=0.0))
        worst = max(worst, float(rel.max()))
        if (rel > 0).any():
            step = int(np.argmax(rel > 0))
            first = step if first is None else min(first, step)
    if first is None:
        return "per-step losses identical"
    return f"per-step losses differ from step {first} (max {worst:.1e} relative)"


def _parity_metric(records: list[dict[str, Any]]) -> str:
    """The ``parity.metric`` the records ran with (accuracy when none says)."""
    found = (((r.get("config") or {}).get("parity") or {}).get("metric") for r in records)
    return next((str(m) for m in found if m), "accuracy")


def _change(quantity: str, unit: str, old_value: float | None, new_value: float | None, delta: Interval) -> Change:
    note = ""
    if delta.estimate is not None and not delta.defined:
        note = "one seed: no noise estimate, not called a change"
    return Change(quantity, unit, old_value, new_value, delta, delta.excludes(0.0), note)


def _speed_note(row: Row, speed: Interval) -> str:
    if row.speed is None:
        return row.speed_unmeasured or "n/a"
    return f"{speed.format('×')} {row.speed.source}"


def _verdict_map(row: Row) -> dict[str, Verdict]:
    return {v.name: v for v in row.verdicts}


def diff_row(
    old_row: Row,
    new_row: Row,
    old_records: dict[Any, list[dict[str, Any]]],
    new_records: dict[Any, list[dict[str, Any]]],
) -> RowDiff:
    out = RowDiff(f"{old_row.model}/{old_row.dataset}/{old_row.device}", old_row.label)
    old_ok, new_ok = old_records.get(row_key(old_row), []), new_records.get(row_key(new_row), [])

    out.changes.append(
        _change(
            "accuracy",
            "pt",
            None if old_row.accuracy_mean is None else 100 * old_row.accuracy_mean,
            None if new_row.accuracy_mean is None else 100 * new_row.accuracy_mean,
            paired_change(_by_seed(old_ok, "test_accuracy", 100), _by_seed(new_ok, "test_accuracy", 100)),
        )
    )
    if _parity_metric(old_ok + new_ok) == "loss":
        # parity.metric: loss (a language model): the test loss is the quantity parity judged.
        old_test, new_test = _by_seed(old_ok, "test_loss"), _by_seed(new_ok, "test_loss")
        out.changes.append(
            _change(
                "test loss",
                "nats",
                float(np.mean(list(old_test.values()))) if old_test else None,
                float(np.mean(list(new_test.values()))) if new_test else None,
                paired_change(old_test, new_test),
            )
        )
    old_loss = {r.get("seed"): v for r in old_ok if (v := _mean_loss(r)) is not None}
    new_loss = {r.get("seed"): v for r in new_ok if (v := _mean_loss(r)) is not None}
    loss = _change(
        "train loss",
        "",
        float(np.mean(list(old_loss.values()))) if old_loss else None,
        float(np.mean(list(new_loss.values()))) if new_loss else None,
        paired_change(old_loss, new_loss),
    )
    loss.note = "; ".join(filter(None, [loss.note, _loss_curve_note(old_ok, new_ok) if old_ok and new_ok else ""]))
    out.changes.append(loss)
    out.changes.append(
        _change(
            "memory",
            "bytes",
            old_row.peak_memory_bytes,
            new_row.peak_memory_bytes,
            paired_change(_by_seed(old_ok, "peak_memory_bytes"), _by_seed(new_ok, "peak_memory_bytes")),
        )
    )
    if baseline_key(old_row) is not None and baseline_key(new_row) is not None:
        old_speed, new_speed = speedup_of(old_row), speedup_of(new_row)
        changed = new_speed.below(old_speed) or new_speed.above(old_speed)
        emulated = old_row.emulated or new_row.emulated
        note = f"OLD {_speed_note(old_row, old_speed)}; NEW {_speed_note(new_row, new_speed)}"
        if emulated:
            note += "; emulated: no speed claim"
        delta = Interval(
            None
            if old_speed.estimate is None or new_speed.estimate is None
            else new_speed.estimate / old_speed.estimate
        )
        out.changes.append(
            Change("speedup", "×", old_speed.estimate, new_speed.estimate, delta, changed and not emulated, note)
        )
        if not emulated and new_speed.below(old_speed):
            out.regressions.append(
                f"speedup regressed beyond its interval: {old_speed.format('×')} → {new_speed.format('×')}"
            )

    old_verdicts, new_verdicts = _verdict_map(old_row), _verdict_map(new_row)
    old_all_pass = bool(old_verdicts) and all(v.outcome == PASS for v in old_verdicts.values() if v.enforced)
    for name in list(dict.fromkeys([*old_verdicts, *new_verdicts])):
        old_v, new_v = old_verdicts.get(name), new_verdicts.get(name)
        old_outcome = old_v.outcome if old_v else "—"
        new_outcome = new_v.outcome if new_v else "—"
        out.verdicts.append((name, old_outcome, new_outcome))
        if new_v is None or not new_v.is_failure:
            continue
        passed_before = (old_v is not None and old_v.outcome == PASS) or (
            old_v is None and new_v.outcome == FAILED and old_all_pass
        )
        if passed_before:
            out.regressed_verdicts.add(name)
            out.regressions.append(f"{name} {old_outcome.upper()} → {new_outcome.upper()}: {new_v.detail}")
    return out


def _environment(records: list[dict[str, Any]]) -> dict[str, str]:
    """Software versions and hardware, from the first ok record that names each."""
    out: dict[str, str] = {}
    for record in records:
        environ = record.get("environ") or {}
        if record.get("status") != "ok" or not environ:
            continue
        facts = {**versions(environ), "device_name": environ.get("device_name"), "cpu_model": environ.get("cpu_model")}
        for key, value in facts.items():
            if value is not None:
                out.setdefault(key, str(value))
    return out


def environment_differences(old: RunDir, new: RunDir) -> list[str]:
    """What changed about the machine and software between the runs (often the diff's point)."""
    a, b = _environment(old.records), _environment(new.records)
    return [f"{key}: {a[key]} vs {b[key]}" for key in sorted(set(a) & set(b)) if a[key] != b[key]]


def diff_runs(old: RunDir, new: RunDir) -> RunDiff:
    only_old, only_new, noted = check_comparable(old, new)
    old_rows = {row_key(r): r for r in old.comparison.rows}
    new_rows = {row_key(r): r for r in new.comparison.rows}
    old_records, new_records = ok_records_by_row(old.records), ok_records_by_row(new.records)
    rows = [diff_row(old_rows[k], new_rows[k], old_records, new_records) for k in old_rows if k in new_rows]
    return RunDiff(old.path, new.path, rows, only_old, only_new, noted, environment_differences(old, new))


# --- rendering -----------------------------------------------------------------------------------


def _fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "bytes":
        return f"{value / 2**20:.3f} MiB"
    if unit == "pt":
        return f"{value:.2f}%"
    if unit == "×":
        return f"{value:.2f}×"
    return f"{value:.4g}"


def _fmt_delta(change: Change) -> str:
    d = change.delta
    if change.quantity == "speedup":
        return "n/a" if d.estimate is None else f"×{d.estimate:.2f}"
    if d.estimate is None:
        return "n/a"
    scale, unit = (1 / 2**20, " MiB") if change.unit == "bytes" else (1.0, f" {change.unit}" if change.unit else "")
    text = f"{d.estimate * scale:+.3g}{unit}"
    if d.defined:
        text += f" ({d.low * scale:+.3g} to {d.high * scale:+.3g})"
    return text.replace("-", "−")


def table_rows(result: RunDiff) -> list[list[str]]:
    rows = []
    for row in result.rows:
        for change in row.changes:
            rows.append(
                [
                    row.group,
                    row.label,
                    change.quantity,
                    _fmt_value(change.old, change.unit),
                    _fmt_value(change.new, change.unit),
                    _fmt_delta(change),
                    "**changed**" if change.beyond_noise else "within noise",
                    change.note,
                ]
            )
    return rows


HEADER = ["group", "row", "quantity", "OLD", "NEW", "Δ (95% interval)", "change", "note"]


def summary_lines(result: RunDiff) -> list[str]:
    lines = []
    if result.regressions:
        lines.append(f"REGRESSED ({len(result.regressions)}):")
        lines += [f"- {text}" for text in result.regressions]
    else:
        lines.append(
            "No regression: no verdict that passed in OLD fails in NEW, no speedup regressed beyond its interval."
        )
    changed = [f"{row.subject} {c.quantity}" for row in result.rows for c in row.changes if c.beyond_noise]
    lines.append(
        ("Changes beyond noise: " + ", ".join(changed)) if changed else "No change beyond noise in any compared row."
    )
    if result.environment_differences:
        lines.append("Environment differs: " + "; ".join(result.environment_differences))
    if result.noted_differences:
        lines.append("Backend options differ (compared anyway): " + "; ".join(result.noted_differences))
    if result.only_old:
        lines.append(f"Jobs only in OLD ({len(result.only_old)}): " + ", ".join(result.only_old))
    if result.only_new:
        lines.append(f"Jobs only in NEW ({len(result.only_new)}): " + ", ".join(result.only_new))
    return lines


def verdict_rows(result: RunDiff) -> list[list[str]]:
    return [
        [row.subject, name, old.upper(), new.upper(), "REGRESSED" if name in row.regressed_verdicts else ""]
        for row in result.rows
        for name, old, new in row.verdicts
        if old != new
    ]


def render_markdown(result: RunDiff) -> str:
    def table(header: list[str], rows: list[list[str]]) -> list[str]:
        esc = [[cell.replace("|", "\\|") for cell in row] for row in rows]
        return [
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in esc),
        ]

    lines = ["# precision-suite diff", "", f"OLD: `{result.old_dir}`  ", f"NEW: `{result.new_dir}`", ""]
    lines += summary_lines(result) + [""]
    changed_verdicts = verdict_rows(result)
    lines += ["## Verdicts that changed", ""]
    lines += table(["row", "verdict", "OLD", "NEW", ""], changed_verdicts) if changed_verdicts else ["none"]
    lines += ["", "## Rows", ""] + table(HEADER, table_rows(result))
    lines += [
        "",
        "Δ = NEW − OLD: mean of per-seed paired differences with its 95% t interval (accuracy, mean train "
        "loss, memory); speedup: each run's speedup as its report shows it (the paired speed phase, or training "
        "jobs timed alone) with its 95% interval, a change when the intervals do not overlap (Δ is NEW/OLD).",
    ]
    return "\n".join(lines) + "\n"


def render_html(result: RunDiff) -> str:
    def table(header: list[str], rows: list[list[str]]) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c.replace('**', ''))}</td>" for c in row) + "</tr>" for row in rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    summary = "".join(f"<p>{html.escape(line)}</p>" for line in summary_lines(result))
    verdicts = verdict_rows(result)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>precision-suite diff</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}</style></head><body>"
        f"<h1>precision-suite diff</h1><p>OLD: <code>{html.escape(str(result.old_dir))}</code><br>"
        f"NEW: <code>{html.escape(str(result.new_dir))}</code></p>{summary}"
        "<h2>Verdicts that changed</h2>"
        + (table(["row", "verdict", "OLD", "NEW", ""], verdicts) if verdicts else "<p>none</p>")
        + "<h2>Rows</h2>"
        + table(HEADER, table_rows(result))
        + "</body></html>\n"
    )


def write_diff_reports(result: RunDiff, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md, page = out_dir / "diff.md", out_dir / "diff.html"
    md.write_text(render_markdown(result), encoding="utf-8")
    page.write_text(render_html(result), encoding="utf-8")
    return [md, page]
