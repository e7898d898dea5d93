"""Headless Chromium (Debian's chromium + chromium-driver) driven by Selenium, with no network but loopback."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Server, start_server
from tests.jobs.helpers import FAST_ENV

REQUIRE_BROWSER = os.environ.get("TUNEFORGE_REQUIRE_BROWSER") == "1"
CHROMIUM = os.environ.get("TUNEFORGE_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = os.environ.get("TUNEFORGE_TEST_CHROMEDRIVER") or shutil.which("chromedriver")


def new_browser(width: int = 1280, height: int = 800) -> Any:
    """A headless Chromium that cannot resolve any host name: only 127.0.0.1 answers, so no CDN can load.

    Downloads land, without a prompt, in the folder named by the driver's `download_dir` attribute.
    """
    if not (CHROMIUM and CHROMEDRIVER):
        message = "chromium and chromium-driver are needed for the browser tests (apt-get install, see .ci/run)"
        if REQUIRE_BROWSER:
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--no-proxy-server",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    download_dir = Path(tempfile.mkdtemp(prefix="tf-console-downloads-"))
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(download_dir), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    driver.download_dir = download_dir
    driver.set_window_size(width, height)
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = new_browser()
    yield driver
    driver.quit()
    shutil.rmtree(driver.download_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(Path(tmp_path_factory.mktemp("console")), dict(FAST_ENV))
    yield server
    server.stop()


def screenshot(driver: Any, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
