"""The HTML report in a real browser: headless Chromium decodes every plot and the page is
neither blank nor colourless."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (Debian: apt-get install -y chromium)",
)

# Set on `load`, after every image has decoded or failed: naturalWidth is 0 for a broken image.
PROBE = (
    '<script>window.addEventListener("load",()=>{for(const i of document.images)'
    '{i.setAttribute("data-natural-width",String(i.naturalWidth));}'
    'document.body.setAttribute("data-loaded","1");});</script>'
)


def chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_renders_in_chromium(tmp_path, page, n_plots: int) -> None:
    """``page`` opens in headless Chromium with its ``n_plots`` images decoded, and the
    screenshot is neither blank nor colourless."""
    # The report carries no script; a probe copy reports what the browser decoded.
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-loaded="1"' in dom.stdout
    widths = [int(w) for w in re.findall(r'data-natural-width="(\d+)"', dom.stdout)]
    assert len(widths) == n_plots and all(w > 0 for w in widths), widths

    shot = tmp_path / "report.png"
    result = chromium(tmp_path, "--window-size=1280,2400", f"--screenshot={shot}", page.as_uri())
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
    not_white = (pixels < 0.95).any(axis=-1).mean()
    coloured = (np.ptp(pixels, axis=-1) > 0.3).mean()  # plot lines/bars, pass/fail text
    assert not_white > 0.05, f"screenshot nearly blank ({not_white:.1%} non-white)"
    assert coloured > 0.005, f"screenshot has no colour ({coloured:.2%})"
