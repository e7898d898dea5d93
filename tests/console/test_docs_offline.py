"""`/docs` and `/redoc` render in a browser that has no network: their scripts and styles are served locally."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import Server
from tests.console.conftest import screenshot


def resources(driver: Any) -> list[str]:
    """Scripts, styles and data the page loaded (ReDoc's decorative sidebar logo is an image from its CDN; it
    fails to load offline and the page does not need it)."""
    script = "return performance.getEntriesByType('resource').filter(e => e.initiatorType !== 'img').map(e => e.name)"
    return list(driver.execute_script(script))


def test_swagger_ui_renders_offline(browser: Any, console_server: Server, tmp_path: Path) -> None:
    browser.get(f"{console_server.base_url}/docs")
    wait = WebDriverWait(browser, 60)
    title = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".swagger-ui .info .title")))
    assert "TuneForge" in title.text
    # the operations of the API are listed, from the served OpenAPI document
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) > 10)
    paths = " ".join(e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
    assert "/v1/fine_tuning/jobs" in paths and "/v1/files" in paths
    loaded = resources(browser)
    assert loaded and all(url.startswith(console_server.base_url) for url in loaded), loaded
    screenshot(browser, tmp_path, "docs")


def test_redoc_renders_offline(browser: Any, console_server: Server, tmp_path: Path) -> None:
    browser.get(f"{console_server.base_url}/redoc")
    wait = WebDriverWait(browser, 60)
    heading = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".api-info h1")))
    assert "TuneForge" in heading.text
    wait.until(lambda d: "/v1/fine_tuning/jobs" in d.find_element(By.TAG_NAME, "body").text)
    loaded = resources(browser)
    assert loaded and all(url.startswith(console_server.base_url) for url in loaded), loaded
    screenshot(browser, tmp_path, "redoc")
