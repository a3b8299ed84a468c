"""The page for people (serving/ui/) as its user meets it, read through what the page shows: the
boxes drawn over the photo (where they are on the displayed image), the words and numbers of
each face, the errors and notices. Never through the API's JSON."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

# One script: every box's place on the displayed photo (or video), as fractions of its size.
_GEOMETRY = """
const media = [...document.querySelectorAll('[data-role="photo"], [data-role="video"]')]
  .find((m) => !m.hidden);
const frame = media.getBoundingClientRect();
const rel = (node) => {
  const r = node.getBoundingClientRect();
  return [(r.left - frame.left) / frame.width, (r.top - frame.top) / frame.height,
          r.width / frame.width, r.height / frame.height];
};
return {
  displayed: [frame.width, frame.height],
  boxes: [...document.querySelectorAll(arguments[0])].map((node) => ({
    index: Number(node.dataset.index), verdict: node.dataset.verdict || '', text: node.textContent,
    place: rel(node), visible: getComputedStyle(node).display !== 'none',
  })),
};
"""


@dataclass(frozen=True)
class Box:
    index: int
    verdict: str
    text: str
    place: tuple[float, float, float, float]  # x, y, w, h as fractions of the displayed media
    visible: bool


@dataclass(frozen=True)
class Face:
    verdict: str  # data-verdict
    verdict_words: str
    p_fake: str  # "P(fake) 34.5 %"
    vote: str | None  # in-depth: "3 of 7 variants judged fake; ..."


@dataclass(frozen=True)
class Track:
    track_id: str
    verdict_words: str
    frames: str
    p_fake: str
    points: int  # frames drawn on its timeline


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    p_fake: str


@dataclass(frozen=True)
class UiPage:
    driver: Any  # selenium WebDriver
    timeout_s: float = 60.0

    # ---- finding things
    @property
    def app(self) -> Any:
        return self.driver.find_element("id", "app")

    def part(self, role: str) -> Any:
        return self.driver.find_element("css selector", f'[data-role="{role}"]')

    def parts(self, role: str, root: Any = None) -> list[Any]:
        return (root or self.driver).find_elements("css selector", f'[data-role="{role}"]')

    def text(self, role: str) -> str:
        return self.part(role).text

    def attr(self, name: str) -> str | None:
        return self.app.get_attribute(f"data-{name}")

    def wait(self, condition: Any, timeout_s: float | None = None) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(self.driver, timeout_s or self.timeout_s, poll_frequency=0.05).until(
            lambda _: condition()
        )

    # ---- doing things
    def open(self, url: str) -> UiPage:
        self.driver.get(url)
        self.wait(lambda: self.attr("ready") == "true")
        return self

    def check(self, role: str, on: bool = True) -> None:
        box = self.part(role)
        if box.is_selected() != on:
            box.click()

    def upload(self, path: Path) -> str:
        """Choose `path` in the file input; waits for the answer and the media; returns the state."""
        self.driver.execute_script("delete arguments[0].dataset.state", self.app)
        self.part("file").send_keys(str(path.resolve()))
        return self.settle()

    def settle(self) -> str:
        """Waits until the page shows an answer (or an error); returns data-state."""
        self.wait(lambda: self.attr("state") in ("done", "error"))
        if self.attr("state") == "done":
            self.wait(lambda: self.attr("media-loaded") in ("true", "failed"))
        return self.attr("state") or ""

    def enter_key(self, key: str) -> str:
        self.driver.execute_script("delete arguments[0].dataset.state", self.app)
        field = self.part("key-field")
        field.clear()
        field.send_keys(key)
        self.part("key-save").click()
        return self.settle()

    def seek(self, time_s: float) -> None:
        """Moves the video to `time_s` and waits until the page has drawn that moment."""
        video = self.part("video")
        script = """
        const video = arguments[0];
        delete video.dataset.seeked;
        video.addEventListener('seeked', () => { video.dataset.seeked = 'true'; }, { once: true });
        video.currentTime = arguments[1];"""
        self.driver.execute_script(script, video, time_s)
        self.wait(lambda: video.get_attribute("data-seeked") == "true")

    # ---- reading things
    @property
    def status(self) -> int | None:
        status = self.attr("status")
        return int(status) if status else None

    @property
    def error(self) -> str:
        node = self.part("error")
        return node.text if node.is_displayed() else ""

    @property
    def notice(self) -> str:
        node = self.part("notice")
        return node.text if node.is_displayed() else ""

    def geometry(self, selector: str = '[data-role="face-box"]') -> tuple[tuple[float, float], list[Box]]:
        found = self.driver.execute_script(_GEOMETRY, selector)
        boxes = [
            Box(b["index"], b["verdict"], b["text"], tuple(b["place"]), b["visible"]) for b in found["boxes"]
        ]
        return tuple(found["displayed"]), sorted(boxes, key=lambda b: b.index)

    def faces(self) -> list[Face]:
        def vote(item: Any) -> str | None:
            found = self.parts("face-vote", item)
            return found[0].text if found else None

        return [
            Face(
                verdict=item.get_attribute("data-verdict"),
                verdict_words=self.parts("face-verdict", item)[0].text,
                p_fake=self.parts("face-bar-value", item)[0].text,
                vote=vote(item),
            )
            for item in self.parts("face")
        ]

    def bands(self) -> list[tuple[float, float]]:
        """Each drawn uncertain band's (left, right) as fractions of its bar."""
        script = """
        return [...document.querySelectorAll('[data-role="band"]')].map((band) => {
          const bar = band.parentElement.getBoundingClientRect(), r = band.getBoundingClientRect();
          return [(r.left - bar.left) / bar.width, (r.right - bar.left) / bar.width];
        });"""
        return [tuple(b) for b in self.driver.execute_script(script)]

    def variants(self) -> list[Variant]:
        return [
            Variant(
                name=self.parts("variant-name", row)[0].text,
                label=self.parts("variant-label", row)[0].text,
                p_fake=self.parts("variant-bar-value", row)[0].text,
            )
            for row in self.parts("variant")
        ]

    def tracks(self) -> list[Track]:
        return [
            Track(
                track_id=item.get_attribute("data-track-id"),
                verdict_words=self.parts("track-verdict", item)[0].text,
                frames=self.parts("track-frames", item)[0].text,
                p_fake=self.parts("track-bar-value", item)[0].text,
                points=len(item.find_elements("css selector", "circle")),
            )
            for item in self.parts("track")
        ]


def ui_url(origin: str, api: str | None = None, path: str = "/ui/") -> str:
    return f"{origin}{path}" + (f"?api={quote(api, safe='')}" if api else "")


def shown_percent(p: float) -> str:
    """How the page writes a P(fake): 'P(fake) 34.5 %' (JavaScript's toFixed(1) of p * 100)."""
    return f"P(fake) {p * 100:.1f} %"


def percent_of(text: str) -> float:
    """'P(fake) 34.5 %' -> 34.5"""
    match = re.search(r"(\d+(?:\.\d+)?) %", text)
    assert match, text
    return float(match.group(1))
