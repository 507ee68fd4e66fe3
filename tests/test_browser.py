"""What users see, in a real browser: TensorBoard's custom-scalars page and alerts for a gradmon run, and
the HTML health report.  Headless Chromium driven by Playwright; screenshots go to ``test-artifacts/``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip("headless Chromium is not installed (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

from core.spec import load_spec  # noqa: E402
from gradmon.run import run_spec  # noqa: E402
from gradmon.scenarios import scenario_path  # noqa: E402
from tests.tbutil import TensorBoardServer  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    spec = load_spec(scenario_path("vanishing"), ["train.epochs=4", "monitor.curvature_every=40"])
    run_spec(spec, root / "vanishing", progress=False, console=False)
    return root


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def test_tensorboard_custom_scalars_and_alerts_render(run_dir, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    with TensorBoardServer(run_dir) as tb:
        tb.wait_for(lambda: tb.get_json("/data/runs"), "the run")
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{tb.url}/#custom_scalars")
        page.wait_for_selector("tf-custom-scalar-multi-line-chart-card", timeout=60000)
        cards = page.locator("tf-custom-scalar-multi-line-chart-card")  # Playwright pierces the shadow DOM
        for _ in range(120):
            if cards.count() >= 6:
                break
            page.wait_for_timeout(500)
        assert page.locator("tf-custom-scalar-multi-line-chart-card").count() >= 6
        for title in ("log10_grad_norm", "grad_norm", "update_ratio", "saturation", "loss", "curvature"):
            assert page.locator(f"text={title}").count() >= 1, title
        page.wait_for_timeout(1500)  # let the charts draw their lines
        page.screenshot(path=str(ARTIFACTS / "tensorboard-custom-scalars.png"))
        page.goto(f"{tb.url}/#text")
        page.locator("text=vanishing_gradients").first.wait_for(state="attached", timeout=60000)
        assert page.locator("text=/ERROR/").count() >= 1
        page.screenshot(path=str(ARTIFACTS / "tensorboard-alerts.png"))
        page.close()


def test_html_report_renders_status_findings_and_plots(run_dir, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto((run_dir / "vanishing" / "report.html").as_uri())
    assert page.get_attribute("#status", "data-status") == "error"
    assert "Training is broken" in page.inner_text("#status")
    assert page.locator('.finding[data-code="vanishing_gradients"]').count() == 1
    assert page.locator(".suggestion").count() >= 3
    for plot in ("heatmap", "loss", "activations", "curvature"):  # every plot decoded and drawn
        image = page.locator(f"#{plot}")
        assert image.count() == 1, plot
        assert image.evaluate("img => img.complete && img.naturalWidth") > 200, plot
        assert image.bounding_box()["width"] > 300, plot
    assert "zero gradient" in page.inner_text("figure:has(#heatmap) figcaption")  # how to read it
    assert page.locator("#heatmap").bounding_box()["y"] < 1000  # status, summary and heatmap above the fold
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    page.close()
