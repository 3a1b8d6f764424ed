"""bisect.md: per model, the answer, the lines that apply it (our config, PyTorch, Keras), the
ranked sensitivity table, the search as a short story, every trial, and the verdict."""

from __future__ import annotations

from pathlib import Path

from precision_suite.bisect.record import BisectResult, ModelBisect

BISECT_MD = "bisect.md"


def _error(value: float | None) -> str:
    if value is None:
        return "—"
    return "inf" if value == float("inf") else f"{value:.2e}"


def apply_lines(model: ModelBisect, backend: str) -> dict[str, str]:
    """The exact lines that keep ``model.keep_fp32`` in fp32, per tool."""
    keep = model.keep_fp32 or []
    names = ", ".join(keep)
    torch_amp = (
        "# PyTorch (autocast): in the model's forward, an autocast-disabled region around each block\n"
        + "\n".join(
            f"with torch.autocast(device_type=x.device.type, enabled=False):\n    x = self.{name}(x.float())"
            for name in keep
        )
    )
    torch_half = "# PyTorch (a half model: .half() / .bfloat16()): the block's weights stay fp32, cast at its edges\n"
    torch_half += "\n".join(
        f'block = model.get_submodule("{name}").float()\n'
        "block.register_forward_pre_hook(lambda m, args: tuple(a.float() for a in args))\n"
        "block.register_forward_hook(lambda m, args, out: out.to(torch.float16))  # or torch.bfloat16"
        for name in keep
    )
    keras = "# Keras: the layer's dtype policy (when building it, or before compile)\n" + "\n".join(
        f'model.get_layer("{name}").dtype_policy = "float32"  # or: ..., dtype="float32")' for name in keep
    )
    config = f"models:\n  - name: {model.model}  # the model's entry as it is, plus:\n    keep_fp32: [{names}]"
    lines = {"precision-suite config": config, "Keras": keras}
    lines["PyTorch"] = torch_half if backend == "torch-manual" else torch_amp
    return lines


def model_markdown(result: BisectResult, model: ModelBisect) -> list[str]:
    out = [f"## {model.model}", ""]
    if model.keep_fp32 is None:
        out.append(
            f"**No answer**: even keeping every block in fp32 does not pass ({model.verdict}: {model.verdict_detail})."
        )
    elif not model.keep_fp32:
        out.append(f"**Nothing needs keeping** (`keep_fp32: []`): {model.verdict.upper()}, {model.verdict_detail}.")
    else:
        kept = ", ".join(f"`{name}`" for name in model.keep_fp32)
        out.append(
            f"**Keep {len(model.keep_fp32)} block(s) in fp32: {kept}** — paired verdict over the seeds "
            f"{model.verdict.upper()}: {model.verdict_detail}."
        )
    out.append("")
    if model.keep_fp32:
        for tool, text in apply_lines(model, result.backend).items():
            out += [f"{tool}:", "", "```" + ("yaml" if "config" in tool else "python"), text, "```", ""]
    if model.story:
        out += ["### The search", ""] + [f"{i}. {line}" for i, line in enumerate(model.story, 1)] + [""]
    if model.ranking:
        out += [
            "### Sensitivity (the proxy: each block's own error against fp32 on the first steps)",
            "",
            "| rank | block | activation rel. error | gradient rel. error | non-finite | first divergent step |",
            "|---|---|---|---|---|---|",
        ]
        for i, s in enumerate(model.ranking, 1):
            step = "—" if s["first_divergent_step"] is None else str(s["first_divergent_step"])
            out.append(
                f"| {i} | `{s['name']}` | {_error(s['activation_rel_error'])} | {_error(s['gradient_rel_error'])} "
                f"| {s['nonfinite']} | {step} |"
            )
        out.append("")
    if model.trials:
        out += ["### Trials", "", "| # | what | kept | outcome | detail | runs |", "|---|---|---|---|---|---|"]
        for i, t in enumerate(model.trials, 1):
            kept = ", ".join(t.kept) if len(t.kept) <= 6 else f"{len(t.kept)} blocks"
            out.append(f"| {i} | {t.kind} | {kept or '—'} | {t.outcome} | {t.detail} | {t.runs} |")
        out.append("")
    return out


def write_markdown(result: BisectResult, out_dir: Path) -> Path:
    lines = [
        f"# bisect: {result.backend} {result.policy}",
        "",
        f"Config `{result.config}`. Cost: {sum(len(m.trials) for m in result.models)} trial(s), "
        f"{result.runs} training run(s).",
        "",
    ]
    for model in result.models:
        lines += model_markdown(result, model)
    path = out_dir / BISECT_MD
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path
