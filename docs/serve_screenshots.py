"""The README's screenshots of ``precision-suite serve`` (docs/img/serve-*.png): each page of a
server over RUNS_DIR, in the system Chromium, through Playwright.

    python docs/serve_screenshots.py RUNS_DIR [OLD NEW [RUN]]

OLD and NEW (run names under RUNS_DIR) are the pair the compare page shows (default: the two
newest runs), RUN the run whose page is shown (default: NEW). PNGs are palette-quantized so the set stays small.
"""

from __future__ import annotations

import shutil
import sys
import threading
from pathlib import Path
from urllib.parse import quote, urlencode

from playwright.sync_api import sync_playwright
from precision_suite.serve.server import make_server

OUT = Path(__file__).resolve().parent / "img"
ROW = "mlp/digits/cpu/torch-amp/bf16-mixed"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def shrink(path: Path) -> None:
    from PIL import Image

    image = Image.open(path).convert("RGB").quantize(colors=64)
    image.save(path, optimize=True)


def main(root: str, old: str | None = None, new: str | None = None, run: str | None = None) -> None:
    OUT.mkdir(exist_ok=True)
    server = make_server(root, "127.0.0.1", 0, token="screenshot")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    names = [s.name for s in server.app.runs.summaries()]
    old, new = old or names[1], new or names[0]
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 760})
            shots = {
                "runs": "/",
                "run": f"/run/{run or new}",
                "compare": "/compare?" + urlencode({"old": old, "new": new}),
                "history": "/history",
                "start": "/start?token=screenshot",
            }
            for name, path in shots.items():
                page.goto(base + path)
                if name == "history":
                    # the row every run has (smoke and default): torch-amp bf16-mixed of the mlp
                    page.locator(f'a[href*="row={quote(ROW, safe="")}"]').first.click()
                    page.wait_for_url("**row=**")
                if name == "run" and page.locator("#report").count():
                    page.frame_locator("#report").locator("img").first.wait_for()
                target = OUT / f"serve-{name}.png"
                page.screenshot(path=str(target))
                shrink(target)
                print(target, target.stat().st_size)
            browser.close()
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main(*sys.argv[1:])
