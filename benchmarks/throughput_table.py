#!/usr/bin/env python
"""One throughput table from one or more run directories (e.g. an eager and a compiled run of
configs/gpu-throughput.yaml): samples/s, speedup vs fp32 and vs tf32, peak memory, achieved
TFLOP/s and MFU against the datasheet peak and, if given, measured matmul ceilings.

    python benchmarks/throughput_table.py runs/gpu runs/gpu-compiled \\
        [--ceilings ceilings.json] [--markdown]

Speedups are against the *eager* fp32 / tf32 run of the same backend and model (a compiled
bf16 row says how much compile + bf16 buys over the plain baseline). ``--ceilings`` is a JSON
object {"bf16": TFLOP/s, ...} as ``precision_suite.measure.flops.measure_matmul_tflops`` measured it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from precision_suite.measure.flops import device_peak, peak_dtype, record_mfu  # noqa: E402
from precision_suite.results import RESULTS_FILE, read_run  # noqa: E402

COLUMNS = (
    "model",
    "backend",
    "policy",
    "compiled",
    "samples/s",
    "vs fp32",
    "vs tf32",
    "peak GiB",
    "TFLOP/s",
    "MFU",
    "MFU meas.",
    "status",
)


def compiled(record: dict[str, Any]) -> bool:
    options = (record.get("config") or {}).get("options") or {}
    return bool(options.get("compile") or options.get("jit_compile"))


def load(run_dirs: list[Path]) -> tuple[list[dict[str, Any]], list[str]]:
    records, warnings = [], []
    for run_dir in run_dirs:
        result = read_run(run_dir)
        warnings += result.warnings
        if not result.records:
            warnings.append(f"{run_dir}: no records in {RESULTS_FILE}")
        records += result.records
    return records, warnings


def rows(records: list[dict[str, Any]], ceilings: dict[str, float]) -> list[list[str]]:
    def samples(record: dict[str, Any]) -> float | None:
        return (record.get("metrics") or {}).get("samples_per_s") if record.get("status") == "ok" else None

    baselines = {
        (r["model"], r["backend"], r["policy"]): samples(r)
        for r in records
        if not compiled(r) and r["policy"] in ("fp32", "tf32")
    }
    out = []
    for r in sorted(records, key=lambda r: (r["model"], r["backend"], compiled(r), r["policy"])):
        metrics = r.get("metrics") or {}
        sps = samples(r)
        cells = [r["model"], r["backend"], r["policy"], "yes" if compiled(r) else "no"]
        cells.append(f"{sps:,.0f}" if sps else "-")
        for base in ("fp32", "tf32"):
            ref = baselines.get((r["model"], r["backend"], base))
            cells.append(f"{sps / ref:.2f}x" if sps and ref else "-")
        peak_bytes = metrics.get("peak_memory_bytes")
        cells.append(f"{peak_bytes / 2**30:.1f}" if peak_bytes and sps else "-")
        figures = record_mfu(r) if sps else None
        ceiling = ceilings.get(peak_dtype(r["policy"])) if figures else None
        if ceiling and figures:
            figures = record_mfu(r, measured_peak_tflops=ceiling)
        cells.append(f"{figures['achieved_tflops']:.3g}" if figures else "-")
        cells.append(f"{figures['mfu']:.1%}" if figures and "mfu" in figures else "-")
        cells.append(f"{figures['mfu_measured']:.1%}" if figures and "mfu_measured" in figures else "-")
        status = r.get("status") or "?"
        cells.append(status if status == "ok" else f"{status}: {(r.get('error') or '')[:48]}")
        out.append(cells)
    return out


def render(table: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(row) + " |" for row in table]
        return "\n".join(lines)
    widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in table]
    return "\n".join(lines)


def footer(records: list[dict[str, Any]], ceilings: dict[str, float]) -> list[str]:
    env = next((r.get("environ") or {} for r in records if r.get("status") == "ok"), {})
    lines = []
    name = env.get("device_name")
    versions = ", ".join(
        f"{k.removesuffix('_version')} {env[k]}"
        for k in (
            "torch_version",
            "tensorflow_version",
            "jax_version",
            "keras_version",
            "cuda_version",
            "cudnn_version",
        )
        if env.get(k)
    )
    lines.append(f"device: {name or 'unknown'}; {versions}")
    peak = device_peak(name)
    if peak is not None:
        listed = ", ".join(f"{k} {v:g}" for k, v in sorted(peak.tflops.items()))
        lines.append(f"MFU peak (dense TFLOP/s): {peak.name}: {listed}; source: {peak.source}")
    else:
        lines.append("MFU peak: device not in suite/measure/flops.py's table, datasheet MFU not computed")
    if ceilings:
        listed = ", ".join(f"{k} {v:.0f}" for k, v in sorted(ceilings.items()))
        lines.append(f"MFU meas.: against a measured 8192^3 matmul ceiling (TFLOP/s): {listed}")
    lines.append(
        "model FLOPs: matmul/conv only, 3x forward per training step (suite/measure/flops.py); "
        "speedups vs the eager fp32/tf32 run of the same backend and model"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--ceilings", type=Path, help="JSON {dtype: measured TFLOP/s}")
    parser.add_argument("--markdown", action="store_true", help="a Markdown table (for README)")
    args = parser.parse_args(argv)
    ceilings: dict[str, float] = {}
    if args.ceilings and args.ceilings.exists():
        ceilings = {k: float(v) for k, v in json.loads(args.ceilings.read_text()).items()}
    records, warnings = load(args.run_dirs)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not records:
        print("no result records found in " + ", ".join(map(str, args.run_dirs)), file=sys.stderr)
        return 1
    print(render(rows(records, ceilings), args.markdown))
    for line in footer(records, ceilings):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
