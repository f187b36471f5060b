"""The browser app in a real browser: Debian's chromium, headless, WebGL through SwiftShader, driven by Playwright.

Scribbles are drawn with real mouse events on NiiVue's canvas; the mask the server returns is saved and read
back through the API and compared with the reference. A screenshot of the app with the mask overlaid is kept
in ``test-artefacts/`` at the repository root. Skips (does not fail) where chromium or Playwright is missing;
every wait is bounded and the server is always shut down.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTEFACTS = Path(__file__).resolve().parents[2] / "test-artefacts"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180),
              pytest.mark.skipif(not CHROMIUM.exists(), reason="no Debian chromium (make test installs it)")]
sync_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("uvicorn")

from server_helpers import dice, running_server, write_study  # noqa: E402

from sarcomakit.server import create_app  # noqa: E402
from sarcomakit.server.app import read_mask  # noqa: E402


def ras_mm(image: sitk.Image, index: tuple[int, int, int]) -> list[float]:
    """NiiVue's world coordinates (RAS mm) of an ITK index (SimpleITK's physical points are LPS)."""
    x, y, z = image.TransformIndexToPhysicalPoint(index)
    return [-x, -y, z]


def drag(page: object, points: list[list[float]]) -> None:
    """A mouse stroke through ``points`` (page pixels) with the left button held."""
    page.mouse.move(*points[0])
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*point, steps=2)
    page.mouse.up()


def test_scribble_segment_save_next_in_chromium(tmp_path: Path) -> None:
    studies = tmp_path / "studies"
    app = create_app(studies, "random_walker")
    references = {}
    for i in range(2):
        path, references[f"case{i}"] = write_study(tmp_path, f"case{i}", seed=i)
        app.state.datastore.add_image(path, path.name, f"case{i}")
    image = sitk.ReadImage(str(tmp_path / "case0.nii.gz"))
    reference = references["case0"]
    zc = int(np.argmax(reference.sum(axis=(1, 2))))
    ys, xs = np.nonzero(reference[zc])
    yc = int(np.median(ys))
    row = xs[ys == yc]
    nx, ny = image.GetSize()[0], image.GetSize()[1]

    with running_server(app) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 700})
            page.set_default_timeout(30_000)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url)
            page.wait_for_function("window.sarcomakit && Object.keys(window.sarcomakit.state.studies).length === 2")
            page.click("#studies li[data-id=case0]")
            page.wait_for_function("window.sarcomakit.state.loaded && window.sarcomakit.state.imageId === 'case0'")
            page.evaluate("mm => window.sarcomakit.goToMM(mm)", ras_mm(image, (int(row.mean()), yc, zc)))

            def stroke(indices: list[tuple[int, int, int]]) -> None:
                points = [page.evaluate("mm => window.sarcomakit.mmToPage(mm)", ras_mm(image, index))
                          for index in indices]
                assert all(points), "a scribble point is off the canvas"
                drag(page, points)

            page.keyboard.press("f")
            stroke([(int(x), yc, zc) for x in (row.min() + 3, row.max() - 3)])
            page.keyboard.press("b")
            stroke([(2, 2, zc), (nx - 3, 2, zc)])
            stroke([(2, ny - 3, zc), (nx - 3, ny - 3, zc)])
            counts = page.evaluate("window.sarcomakit.countValues()")
            assert counts["foreground"] > 5 and counts["background"] > 10, counts

            page.keyboard.press("s")
            page.wait_for_function("window.sarcomakit.state.segmentations === 1")
            assert page.evaluate("window.sarcomakit.countValues()")["mask"] > 0
            assert "latency:" in page.inner_text("#latency") and "ms" in page.inner_text("#latency")
            page.fill("#opacity", "70")
            ARTEFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTEFACTS / "browser_app.png"))

            page.keyboard.press("Control+s")
            page.wait_for_function("window.sarcomakit.state.saves === 1")
            with urllib.request.urlopen(f"{url}/datastore/label?label=case0&tag=final", timeout=10) as answer:
                saved = read_mask(answer.read())
            assert saved.shape == reference.shape
            assert dice(saved, reference) > 0.8, dice(saved, reference)
            with urllib.request.urlopen(f"{url}/datastore/?output=all", timeout=10) as answer:
                assert json.loads(answer.read())["objects"]["case0"]["status"] == "final"

            page.keyboard.press(".")
            page.wait_for_function("window.sarcomakit.state.loaded && window.sarcomakit.state.imageId === 'case1'")
            assert page.inner_text("#error") == "" and not errors, errors
        finally:
            browser.close()
    assert (ARTEFACTS / "browser_app.png").stat().st_size > 10_000
    shutil.copy(ARTEFACTS / "browser_app.png", tmp_path / "browser_app.png")
