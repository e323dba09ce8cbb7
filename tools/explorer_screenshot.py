"""A screenshot of the explorer on the given runs (docs/explorer.png, in docs/explorer.md), with Chromium.

    python tools/explorer_screenshot.py RUN_DIR [RUN_DIR ...] --out docs/explorer.png [--image 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--out", default="docs/explorer.png")
    parser.add_argument("--image", type=int, default=3, help="the held-out image to click first")
    parser.add_argument("--width", type=int, default=1500)
    args = parser.parse_args(argv)
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if chromium is None:
        print("error: no Chromium on PATH (apt-get install chromium)", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    from chyvae_ext.explore import Served, create_app, load_runs

    served = Served(create_app(load_runs(args.runs)))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": args.width, "height": 900})
            page.goto(served.url)
            page.wait_for_selector("body[data-ready='1']")
            for i in range(len(args.runs)):
                page.locator(f"#strip-{i} img").nth(args.image).click()
                page.wait_for_function(f"document.querySelector('#reconstruction-{i}').complete")
            page.locator("#sliders-0 input[type=range]").first.hover()  # the most active dimension's traversal
            page.wait_for_function("document.querySelector('#traversal-0').complete"
                                   " && document.querySelector('#traversal-0').naturalWidth > 0")
            page.wait_for_timeout(800)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        served.stop()
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
