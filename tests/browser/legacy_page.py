"""The test page (page/index.html) as a user meets it: one `Tab` per tab of the old front end,
read through what the page shows (text, badge colours), never through the API's JSON."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

# The old page's badge colours (Tailwind bg-red-900 / bg-green-900), as the browser reports them.
RED = "rgba(127, 29, 29, 1)"
GREEN = "rgba(20, 83, 45, 1)"


@dataclass(frozen=True)
class Variant:
    """One row of "Augmented Analysis"."""

    name: str
    prediction: str
    colour: str
    confidence: str


@dataclass(frozen=True)
class Tab:
    driver: Any  # selenium WebDriver
    tab_id: str  # "general" or "augmented"
    timeout_s: float = 60.0

    @property
    def root(self) -> Any:
        return self.driver.find_element("id", self.tab_id)

    def part(self, role: str) -> Any:
        return self.root.find_element("css selector", f'[data-role="{role}"]')

    def text(self, role: str) -> str:
        return self.part(role).text

    def _wait(self, condition: Any) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(self.driver, self.timeout_s, poll_frequency=0.05).until(lambda _: condition())

    def upload(self, path: Path) -> None:
        """Choose a file in the tab's <input type=file> and wait for its preview."""
        self.driver.execute_script("delete arguments[0].dataset.imageLoaded", self.root)
        self.part("file").send_keys(str(path.resolve()))
        self._wait(lambda: self.root.get_attribute("data-image-loaded") == "true")

    def crop(self, x: float, y: float, size: float) -> None:
        """The square the user would drag, in displayed pixels; waits for the 160x160 JPEG."""
        for role, value in (("crop-x", x), ("crop-y", y), ("crop-size", size)):
            field = self.part(role)
            field.clear()
            field.send_keys(str(value))
        self.driver.execute_script("delete arguments[0].dataset.cropped", self.root)
        self.part("crop").click()
        self._wait(lambda: self.root.get_attribute("data-cropped") == "true")

    def direct_analysis(self) -> None:
        self._submit("direct")

    def analyze(self) -> None:
        self._submit("analyze")

    def _submit(self, button: str) -> None:
        self.part(button).click()
        self._wait(lambda: self.root.get_attribute("data-state") == "done")

    @property
    def error(self) -> str:
        return self.text("error")

    @property
    def status(self) -> int | None:
        """The HTTP status the page's fetch saw (None: no answer reached the page's code)."""
        status = self.root.get_attribute("data-status")
        return int(status) if status else None

    @property
    def render_error(self) -> str | None:
        return self.root.get_attribute("data-render-error")

    def variants(self) -> list[Variant]:
        rows = self.part("variants").find_elements("css selector", '[data-role="variant"]')
        return [
            Variant(
                name=row.find_element("css selector", '[data-role="variant-name"]').text,
                prediction=(badge := row.find_element("css selector", '[data-role="variant-badge"]')).text,
                colour=badge.value_of_css_property("background-color"),
                confidence=row.find_element("css selector", '[data-role="variant-confidence"]').text,
            )
            for row in rows
        ]

    def colour(self, role: str) -> str:
        return self.part(role).value_of_css_property("background-color")


def open_page(driver: Any, page_origin: str, api_url: str) -> tuple[Tab, Tab]:
    """Load the page afresh (no state from an earlier test); returns (general, augmented)."""
    driver.get(f"{page_origin}/index.html?api={quote(api_url, safe='')}")
    return Tab(driver, "general"), Tab(driver, "augmented")


def percent(text: str) -> float:
    """'95.00%' or '95.00% confidence' -> 95.0"""
    return float(text.split("%", 1)[0])
