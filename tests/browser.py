"""Headless Debian Chromium for browser tests, driven by selenium through /usr/bin/chromedriver.

`browser` (a pytest fixture; import it into a test module) is a fresh Chromium per test, with its
own throwaway profile. Where chromium or chromedriver is missing or cannot start, the test skips
and says why, unless BROWSER_TESTS=required (set by .ci/run once both are installed): then it fails.

`wait_for(driver, script, within)` polls a JavaScript expression until it is truthy (and returns
its value); `page_errors(driver)` is what the page logged at SEVERE level (uncaught errors).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

__all__ = ["browser", "page_errors", "start_chromium", "wait_for"]

CHROMEDRIVER = "/usr/bin/chromedriver"
#: Without the background-networking flags Chromium waits on a closed network for minutes.
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1100",
)


def _unavailable(reason: str) -> NoReturn:
    """Skip with `reason`, or fail when BROWSER_TESTS=required."""
    if os.environ.get("BROWSER_TESTS") == "required":
        pytest.fail(f"BROWSER_TESTS=required but {reason}")
    print(f"browser tests skipped: {reason}")
    pytest.skip(reason)


def start_chromium(profile: str) -> webdriver.Chrome:
    """A headless Chromium with its profile in `profile`; raises WebDriverException if it can't start."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # A driver path and a browser binary: selenium never runs Selenium Manager (no downloads).
    service = Service(CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    return driver


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    if not shutil.which("chromium") and not os.path.exists("/usr/bin/chromium"):
        _unavailable("chromium is not installed (apt-get install chromium)")
    if not os.path.exists(CHROMEDRIVER):
        _unavailable(f"{CHROMEDRIVER} is missing (apt-get install chromium-driver)")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        try:
            driver = start_chromium(profile)
        except WebDriverException as exc:
            _unavailable(f"chromium did not start: {exc.msg or exc}".splitlines()[0])
        try:
            yield driver
        finally:
            driver.quit()


def wait_for(driver: webdriver.Chrome, script: str, within: float = 30.0, what: str | None = None) -> Any:
    """Poll `return (<script>)` until truthy; its value. Fails the test after `within` seconds, with
    the page's `window.dashboard.error` if it has one."""
    try:
        return WebDriverWait(driver, within, poll_frequency=0.1).until(
            lambda d: d.execute_script(f"return ({script});")
        )
    except TimeoutException:
        error = driver.execute_script("return window.dashboard ? window.dashboard.error : 'no dashboard'")
        pytest.fail(f"not within {within} s: {what or script} (page error: {error})")


def page_errors(driver: webdriver.Chrome) -> list[str]:
    """Messages the page logged at SEVERE level since the last call (uncaught errors, failed loads)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
