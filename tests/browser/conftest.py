"""Real headless Chromium (one per session) against the service over real HTTP, with the test
page served from another origin. Missing browser: the tests skip, or fail under CI=true (where
scripts/setup-browser.sh must have installed it). Each test leaves a screenshot and the
browser's console log under $BROWSER_ARTIFACTS (default tests/browser/artifacts/)."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.colour_model import build_colour_model
from tests.browser.limits import SERVER_ENV
from tests.browser.page_server import serve_page
from tests.inprocess import ThreadServer

ARTIFACTS = Path(os.environ.get("BROWSER_ARTIFACTS") or Path(__file__).parent / "artifacts")

# Seen to work on this project's machines (no GPU, no network but loopback, running as root).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1800",  # the whole augmented result fits in one screenshot
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "uses_up_rate_limit: runs after every other test of the session")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A test that uses up the shared server's rate limit would fail any test after it (for
    # up to a minute): it runs last, whatever the file order.
    items.sort(key=lambda item: item.get_closest_marker("uses_up_rate_limit") is not None)


# Debian's chromium (what scripts/setup-browser.sh installs), or a Chrome already there (the
# GitHub runners ship google-chrome and chromedriver).
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser_binary() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def missing_browser() -> str | None:
    """What of the browser, chromedriver and selenium is missing, or None."""
    missing = [] if browser_binary() else ["chromium"]
    missing += [] if shutil.which("chromedriver") else ["chromedriver"]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium")
    return f"{', '.join(missing)} not installed" if missing else None


@pytest.fixture(scope="session")
def chrome() -> Iterator[Any]:
    reason = missing_browser()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}: scripts/setup-browser.sh installs them (as root)", pytrace=False)
        pytest.skip(f"{reason} (scripts/setup-browser.sh installs them, as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.binary_location = browser_binary()
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Both paths given: Selenium Manager has nothing to look up or download.
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def colour_model_tag(tmp_path_factory: pytest.TempPathFactory) -> str:
    from model_import import import_model

    path = tmp_path_factory.mktemp("browser-model") / "colour_classifier.keras"
    build_colour_model().save(path)
    return import_model(path, output="p_real", description="browser tests: the verdict follows colour")


@pytest.fixture(scope="session")
def legacy_api(chrome: Any, colour_model_tag: str) -> Iterator[ThreadServer]:
    """The service over real HTTP (uvicorn in a thread: page tests need no process start).
    `chrome` first: without a browser the tests skip before a server starts."""
    with ThreadServer(env={"DEEPFAKE_MODEL_TAG": colour_model_tag, **SERVER_ENV}) as running:
        yield running


@pytest.fixture(scope="session")
def page_origin() -> Iterator[str]:
    with serve_page() as origin:
        yield origin


@pytest.fixture(autouse=True)
def browser_artifacts(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that drove the browser: its screenshot and console log."""
    yield
    if "chrome" not in request.fixturenames or missing_browser():
        return
    driver = request.getfixturevalue("chrome")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^\w.-]+", "_", request.node.name)
    driver.save_screenshot(str(ARTIFACTS / f"{stem}.png"))
    console = driver.get_log("browser")
    (ARTIFACTS / f"{stem}.console.json").write_text(json.dumps(console, indent=1))
