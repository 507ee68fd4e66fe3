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
    """The vanishing demo as a user runs it: the sick run beside its fix, compared in one TensorBoard."""
    from core.spec import apply_patch
    from gradmon.run import hparam_keys
    from gradmon.scenarios import FIXES

    root = tmp_path_factory.mktemp("browser")
    spec = load_spec(scenario_path("vanishing"), ["train.epochs=4", "monitor.curvature_every=40"])
    fixed = apply_patch(spec, FIXES["vanishing"])
    compared = {"hparams": hparam_keys(spec, fixed)}
    run_spec(spec, root / "vanishing", progress=False, console=False, monitor_options=compared)
    run_spec(fixed, root / "vanishing-fixed", progress=False, console=False, monitor_options=compared)
    return root


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def test_tensorboard_lands_on_the_sick_layer_and_its_fix(run_dir, browser):
    """One screen of CUSTOM SCALARS shows the diagnosis: the first chart names the finding, the layers and
    the fix, and plots every layer's log10 gradient norm in depth order; TEXT has the findings with their
    fixes; HPARAMS compares the two runs on what differs and their outcome."""
    from gradmon.findings import HealthReport

    report = HealthReport.load(run_dir / "vanishing")
    finding = next(f for f in report.findings if f.code == "vanishing_gradients")
    ARTIFACTS.mkdir(exist_ok=True)
    with TensorBoardServer(run_dir) as tb:
        tb.wait_for(lambda: len(tb.get_json("/data/runs")) == 2, "both runs")
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{tb.url}/#custom_scalars")
        page.wait_for_selector("tf-custom-scalar-multi-line-chart-card", timeout=60000)
        cards = page.locator("tf-custom-scalar-multi-line-chart-card")  # Playwright pierces the shadow DOM
        for _ in range(120):
            if cards.count() >= 6:
                break
            page.wait_for_timeout(500)
        title = page.locator("text=/vanishing_gradients .*fix: --set model.activation=relu/").first
        title.wait_for(state="visible", timeout=60000)
        box = title.bounding_box()
        assert box is not None and box["y"] < 400  # on the first screen, near the top
        assert "diagnosis" in page.locator("text=/^diagnosis/").first.inner_text()
        assert finding.severity.upper() in title.inner_text()
        page.wait_for_timeout(2500)  # let the charts draw their lines
        page.screenshot(path=str(ARTIFACTS / "tensorboard-custom-scalars.png"))
        page.goto(f"{tb.url}/#text")
        page.locator("text=/gradmon diagnosis/").first.wait_for(state="visible", timeout=60000)
        assert page.locator("text=/fix: .*--set model.activation=relu/").count() >= 1
        page.screenshot(path=str(ARTIFACTS / "tensorboard-text.png"))
        page.goto(f"{tb.url}/#hparams")
        page.get_by_text("model.activation", exact=True).filter(visible=True).first.wait_for(timeout=60000)
        for _ in range(60):
            if page.locator("text=vanishing-fixed").count() >= 1:
                break
            page.wait_for_timeout(500)
        visible = page.get_by_text
        assert visible("sigmoid", exact=True).filter(visible=True).count() >= 1
        assert visible("relu", exact=True).filter(visible=True).count() >= 1
        assert visible("data.n_samples", exact=True).count() == 0  # constant columns are not listed
        page.wait_for_timeout(1000)
        page.screenshot(path=str(ARTIFACTS / "tensorboard-hparams.png"))
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


def test_notebook_repr_html_renders_compactly(run_dir, browser):
    """What a notebook cell shows for a report: the status banner and one row per finding with its first fix,
    in a small box (the page is the fragment as Jupyter would insert it)."""
    from gradmon.findings import HealthReport

    report = HealthReport.load(run_dir / "vanishing")
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1100, "height": 700})
    page.set_content(f"<html><body style='margin:16px'>{report._repr_html_()}</body></html>")
    box = page.locator(".gradmon-report").bounding_box()
    assert box is not None and box["height"] < 500  # the top of the report, not the whole of it
    assert page.locator(".gradmon-report").get_attribute("data-status") == report.status
    assert page.locator("tr.finding").count() == len(report.findings)
    assert "--set model.activation=relu" in page.locator('tr.finding[data-code="vanishing_gradients"]').inner_text()
    page.screenshot(path=str(ARTIFACTS / "notebook-repr.png"))
    page.close()
