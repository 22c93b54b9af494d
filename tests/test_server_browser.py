"""The `ddpm serve` page in a real browser: headless Chromium (Debian's `chromium`, driven by the
`playwright` package with `executable_path`, no browser download) against a server on the tiny random SD
folder. Type a prompt, click Generate, see the progress bar move and the image appear with its seed in its
alt text; reuse settings from the gallery; draw a mask on an uploaded image and inpaint. A screenshot of the
page is saved as a test artefact (and to $DDPM_SCREENSHOT when set: docs/server-screenshot.png)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("diffusers")
playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
expect = playwright_api.expect
CHROMIUM = os.environ.get("DDPM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; `make` does it where apt works)",
                allow_module_level=True)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

from ddpm.pipelines.stable_diffusion import StableDiffusion  # noqa: E402
from ddpm.server.app import create_app  # noqa: E402
from tiny_sd import shared_tiny_sd_folder  # noqa: E402
from tiny_server import running  # noqa: E402

RECORD_PROGRESS = """() => {
  window.__seen = [];
  const bar = document.querySelector('progress');
  new MutationObserver(() => window.__seen.push(bar.value)).observe(bar, {attributes: true});
}"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    torch.set_num_threads(1)
    pipe = StableDiffusion.load(shared_tiny_sd_folder(tmp_path_factory), device="cpu")
    app = create_app(pipe, outputs=tmp_path_factory.mktemp("browser") / "outputs")
    with running(app) as (url, _), playwright_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        except Exception as e:  # a browser that cannot start here: say why
            pytest.skip(f"Chromium at {CHROMIUM} did not start: {str(e).splitlines()[0]}")
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(url)
        page.get_by_role("button", name="Generate").wait_for()
        yield dict(url=url, page=page, jobs=app.app.state.jobs, base=tmp_path_factory.getbasetemp())
        browser.close()


def test_generate_shows_progress_and_the_image_with_its_seed(site):
    page = site["page"]
    page.get_by_role("textbox", name="Prompt", exact=True).fill("a red fox in the snow")
    page.get_by_role("textbox", name="Negative prompt", exact=True).fill("blurry")
    page.get_by_role("textbox", name="Seed", exact=True).fill("42")
    page.get_by_label("Steps", exact=True).fill("12")
    page.get_by_label("Batch size").fill("2")
    page.evaluate(RECORD_PROGRESS)
    page.get_by_role("button", name="Generate").click()
    first = page.locator("#results img").first
    first.wait_for(timeout=60_000)
    assert page.locator("#results img").count() == 2
    alts = [page.locator("#results img").nth(i).get_attribute("alt") for i in range(2)]
    assert alts[0].startswith("seed 42: a red fox") and alts[1].startswith("seed 43: a red fox")
    assert page.locator("#results img").first.evaluate("img => img.complete && img.naturalWidth") == 32
    seen = page.evaluate("window.__seen")
    assert any(0 < v < 1 for v in seen), f"the progress bar never showed a value between 0 and 1: {seen}"
    assert page.locator("progress").evaluate("p => p.value") == 1
    assert page.get_by_role("status").inner_text().startswith("Done: 2 image(s)")
    shot = site["base"] / "server-screenshot.png"
    page.screenshot(path=str(shot), full_page=True)
    assert Image.open(shot).size[0] >= 1000
    if os.environ.get("DDPM_SCREENSHOT"):
        shutil.copy(shot, os.environ["DDPM_SCREENSHOT"])


def test_reuse_settings_from_the_gallery(site):
    page = site["page"]
    item = page.get_by_role("button", name="Reuse these settings (seed 43)")
    item.wait_for(timeout=10_000)
    page.get_by_role("textbox", name="Prompt", exact=True).fill("something else")
    page.get_by_role("textbox", name="Seed", exact=True).fill("7")
    page.get_by_label("Steps", exact=True).fill("3")
    item.click()
    assert page.get_by_role("textbox", name="Prompt", exact=True).input_value() == "a red fox in the snow"
    assert page.get_by_role("textbox", name="Negative prompt", exact=True).input_value() == "blurry"
    assert page.get_by_role("textbox", name="Seed", exact=True).input_value() == "43"
    assert page.get_by_label("Steps", exact=True).input_value() == "12"
    download = page.get_by_role("link", name="Download PNG").first.get_attribute("href")
    assert download.startswith("/api/outputs/") and download.endswith(".png?download=1")


def test_draw_a_mask_and_inpaint(site, tmp_path):
    page = site["page"]
    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(photo)
    page.get_by_label("Inpaint").check()
    page.get_by_label("Init image").set_input_files(str(photo))
    canvas = page.get_by_label("Mask: draw on the image where it should be repainted")
    expect(page.locator("#mask")).to_have_attribute("width", "32")
    page.get_by_label("Brush size").fill("64")
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.6, steps=8)
    page.mouse.up()
    page.get_by_role("textbox", name="Seed", exact=True).fill("5")
    page.get_by_label("Steps", exact=True).fill("4")
    page.get_by_label("Batch size").fill("1")
    page.get_by_label("Denoising strength").fill("1")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#results img[alt^='seed 5:']")).to_be_visible(timeout=60_000)
    job = site["jobs"].last
    assert job.state == "done" and job.request.mode == "inpaint"
    mask = np.asarray(job.request.mask)
    assert mask.shape == (32, 32) and mask[12, 16] == 255 and mask[0, 0] == 0 and mask[31, 31] == 0
    assert job.metadata[0]["inpainting"] == "latent blending"
