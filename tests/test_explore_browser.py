"""The explorer page in a real browser: Playwright driving the system's Chromium (Debian's `chromium` package;
never `playwright install`). Skipped where no Chromium is found, except with CHYVAE_EXT_REQUIRE_BROWSER=1
(.ci/run sets it after installing Chromium), where a missing browser fails."""

import io
import os
import shutil

import numpy as np
import pytest

from chyvae_ext.train import TrainConfig, train

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
REQUIRED = os.environ.get("CHYVAE_EXT_REQUIRE_BROWSER") == "1"
if CHROMIUM is None and REQUIRED:
    raise RuntimeError("CHYVAE_EXT_REQUIRE_BROWSER=1 but no chromium is on PATH (apt-get install chromium)")
if CHROMIUM is None:
    pytest.skip("no Chromium on PATH (apt-get install chromium)", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api") if not REQUIRED else __import__(
    "playwright.sync_api", fromlist=["sync_playwright"])
pytest.importorskip("uvicorn") if not REQUIRED else __import__("uvicorn")

from PIL import Image  # noqa: E402

from chyvae_ext.explore import Served, create_app, load_runs  # noqa: E402

TINY = dict(steps=60, batch_size=16, log_every=20, eval_every=60, ckpt_every=60, precision="fp32", z_dim=4,
            hidden=32, metrics="none")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The explorer serving two runs (CHyVAE and beta-VAE) on a free port, in a thread."""
    root = tmp_path_factory.mktemp("browser")
    train(TrainConfig(model="chyvae", nu=10.0, out=str(root / "chyvae"), **TINY))
    train(TrainConfig(model="betavae", out=str(root / "betavae"), **TINY))
    served = Served(create_app(load_runs([str(root / "chyvae"), str(root / "betavae")])))
    yield served.url
    served.stop()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture()
def page(server, browser):
    """A fresh page on the explorer, loaded, both runs' first images drawn; ``page.errors``: console errors."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server)
    page.wait_for_selector("body[data-ready='1']")
    for run in (0, 1):
        wait_frames(page, run, 1)
    page.errors = errors
    yield page
    page.close()


def frames(page, run: int) -> int:
    return int(page.locator(f"#decoded-{run}").get_attribute("data-frames") or 0)


def wait_frames(page, run: int, at_least: int) -> None:
    page.wait_for_function(f"Number(document.querySelector('#decoded-{run}').dataset.frames || 0) >= {at_least}"
                           f" && document.querySelector('#decoded-{run}').complete")


def pixels(page, selector: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(page.locator(selector).screenshot())).convert("L"), dtype=np.float64)


def settle(page, run: int) -> None:
    """Until the run's decoded image stops changing (the newest slider position has been drawn)."""
    last = -1
    while frames(page, run) != last:
        last = frames(page, run)
        page.wait_for_timeout(300)
    wait_frames(page, run, last)


def move_slider(page, run: int, dim: int, to: str) -> None:
    slider = page.locator(f"#slider-{run}-{dim}")
    value = slider.get_attribute("max" if to == "max" else "min")
    slider.fill(value)


def test_the_page_loads_without_console_errors(page, tmp_path):
    assert page.locator(".run").count() == 2
    assert page.locator("#sliders-0 input[type=range]").count() == 4
    assert page.locator("#heatmap-0").count() == 1 and page.locator("#heatmap-1").count() == 0  # CHyVAE only
    page.screenshot(path=str(tmp_path / "explorer.png"), full_page=True)
    assert (tmp_path / "explorer.png").stat().st_size > 10_000
    assert page.errors == []


def test_moving_a_slider_changes_the_decoded_image(page):
    page.locator("#link").uncheck()
    settle(page, 0)
    before = pixels(page, "#decoded-0")
    other = pixels(page, "#decoded-1")
    dim = int(page.locator("#sliders-0 input[type=range]").first.get_attribute("data-dim"))  # the most active
    move_slider(page, 0, dim, "max")
    settle(page, 0)
    after = pixels(page, "#decoded-0")
    assert np.abs(after - before).mean() > 0.5  # grey levels 0..255
    settle(page, 1)
    assert np.array_equal(pixels(page, "#decoded-1"), other)  # not linked: the other run stays
    assert page.errors == []


def test_clicking_a_dataset_image_updates_the_reconstruction(page):
    page.wait_for_function("document.querySelector('#reconstruction-0').complete")
    before = pixels(page, "#reconstruction-0")
    page.locator("#strip-0 img").nth(5).click()
    page.wait_for_function("document.querySelector('#reconstruction-0').src.includes('/reconstruction/5.png')"
                           " && document.querySelector('#reconstruction-0').complete")
    assert np.abs(pixels(page, "#reconstruction-0") - before).mean() > 0.5
    assert "chosen" in page.locator("#strip-0 img").nth(5).get_attribute("class")
    assert page.errors == []


def test_two_runs_side_by_side_both_follow_a_linked_slider(page):
    assert page.locator("#link").is_checked()
    settle(page, 0)
    settle(page, 1)
    before = [pixels(page, f"#decoded-{run}") for run in (0, 1)]
    seen = [frames(page, run) for run in (0, 1)]
    for dim in range(4):  # every dimension to its low end, in run 0 only: run 1 is sent the same values
        move_slider(page, 0, dim, "min")
    for run in (0, 1):
        wait_frames(page, run, seen[run] + 1)
        settle(page, run)
    after = [pixels(page, f"#decoded-{run}") for run in (0, 1)]
    assert all(np.abs(a - b).mean() > 0.5 for a, b in zip(after, before, strict=True))
    assert page.errors == []


def test_animate_sweeps_the_dimension_under_the_pointer(page):
    settle(page, 0)
    dim = page.locator("#sliders-0 input[type=range]").first
    dim.hover()
    page.wait_for_function("document.querySelector('#traversal-0').complete"
                           " && document.querySelector('#traversal-0').naturalWidth === 9 * 64")
    start, value = frames(page, 0), dim.input_value()
    page.locator("#animate").check()
    wait_frames(page, 0, start + 3)  # new frames with no slider moved by hand
    assert dim.input_value() != value
    page.locator("#animate").uncheck()
    assert page.errors == []
