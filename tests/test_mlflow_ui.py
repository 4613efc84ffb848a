"""The MLflow UI in a real headless Chromium: a sweep's child runs and curve metric are on the page.

Slow, and needs Debian's ``chromium`` and ``chromium-driver`` plus ``selenium`` (the ``ui-test`` extra).
Set ``ADAPTIVE_EXIT_SCREENSHOT_DIR`` to keep the screenshots (the README's come from ``docs/``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import mlflow
import pytest

from conftest import TINY, http_server

pytestmark = pytest.mark.slow


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.fail("install Debian's chromium and chromium-driver to run the UI test")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--window-size=1600,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def page_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def wait_for(driver, condition, what: str, path) -> None:
    """Wait until ``condition(driver)``; on timeout fail with the page's text, and keep a screenshot at ``path``."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, 120).until(condition)
    except TimeoutException:
        driver.save_screenshot(str(path))
        pytest.fail(f"the page never showed {what}; it shows: {page_text(driver)[:1500]!r} (screenshot {path})")


def test_sweep_in_the_mlflow_ui(cli, tmp_path, browser):
    from selenium.webdriver.common.by import By

    done = cli("sweep", *TINY, "--weighting", "cosee,uniform", "--signal", "entropy", "--seed", "1,2",
               "--max-train-samples", "32", "--max-eval-samples", "32", "--output-dir", "sweep")
    assert done.returncode == 0, done.stderr[-2000:]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["movie-reviews"])
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    names = sorted(children["tags.mlflow.runName"])
    assert len(names) == 4
    def server(port: int) -> list[str]:
        return [os.path.join(os.path.dirname(sys.executable), "mlflow"), "server", "--backend-store-uri",
                f"sqlite:///{tmp_path / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port)]

    shots = []
    with http_server(server, "/health", tmp_path, timeout=120) as port:
        experiment = runs.experiment_id.iloc[0]
        browser.get(f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs")
        wait_for(browser, lambda d: "sweep over" in page_text(d), "the sweep's run", tmp_path / "failed.png")
        for close in browser.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
            close.click()  # the assistant side panel
        expand = browser.find_elements(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']")
        assert len(expand) == 1  # only the sweep's run has children
        expand[0].click()
        wait_for(browser, lambda d: all(name in page_text(d) for name in names), f"the child runs {names}",
                 tmp_path / "failed.png")
        shots.append(tmp_path / "mlflow-sweep-runs.png")
        browser.save_screenshot(str(shots[-1]))
        ids = json.dumps(sorted(children.run_id))
        browser.get(f"http://127.0.0.1:{port}/#/compare-runs?runs={ids}&experiments=[\"{experiment}\"]")
        # the metrics table scrolls, so the curve metric is looked for in the page, not only in its visible text
        wait_for(browser, lambda d: "curve_accuracy" in d.page_source and all(name in page_text(d) for name in names),
                 "the curve metric and the child runs", tmp_path / "failed.png")
        shots.append(tmp_path / "mlflow-compare-runs.png")
        browser.save_screenshot(str(shots[-1]))
    keep = os.environ.get("ADAPTIVE_EXIT_SCREENSHOT_DIR")
    if keep:
        for shot in shots:
            shutil.copy(shot, keep)
