"""The old web front end, in real headless Chromium, served from another origin, against a real
server: what its user sees, read off the page (CONTRACT.md, "What the old web front end reads").

The served model is `colour_model`: the face reads real, the flag's blue field fake, so both
consensus badges are shown. The rate-limit test uses up the server's limit: it runs last
(the `uses_up_rate_limit` marker, see conftest.py).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from preprocessing.augment import VARIANTS
from tests.browser.legacy_page import GREEN, RED, Tab, open_page, percent
from tests.browser.limits import MAX_UPLOAD_BYTES, RATE_LIMIT_PER_MINUTE
from tests.helpers import FIXTURES, image_bytes
from tests.inprocess import ThreadServer

PHOTO = FIXTURES / "astronaut.jpg"  # 512x512, shown at its natural size: displayed = natural pixels
NO_FACE_PHOTO = FIXTURES / "coffee_no_face.jpg"
FACE_CROP = (130, 20, 190)  # (x, y, size): her face, warm -> real
FLAG_CROP = (0, 0, 45)  # the flag's blue field, no face -> fake
# The old service's variant names as the old page shows them: first "_" a space, capitalised.
VARIANT_ROWS = [
    "Grayscale",
    "Rotate Right",
    "Rotate Left",
    "Brightness Up",
    "Brightness Down",
    "Flip Horizontal",
]


@pytest.fixture
def tabs(chrome: Any, legacy_api: ThreadServer, page_origin: str) -> Iterator[tuple[Tab, Tab]]:
    yield open_page(chrome, page_origin, legacy_api.url)


def colour_name(css: str) -> str:
    return {RED: "red", GREEN: "green"}.get(css, css)


def delivered(tab: Tab) -> dict[str, Any]:
    """How the request ended, as the page saw it."""
    return {"status": tab.status, "error": tab.error, "render error": tab.render_error}


@pytest.mark.parametrize(
    ("crop", "label"), [(None, "real"), (FLAG_CROP, "fake")], ids=["whole-photo", "160px-crop"]
)
def test_detect_shows_prediction_and_confidence(
    tabs: tuple[Tab, Tab], crop: tuple[int, int, int] | None, label: str
) -> None:
    general, _ = tabs
    general.upload(PHOTO)
    if crop is None:
        general.direct_analysis()
    else:
        general.crop(*crop)
        general.analyze()
    assert delivered(general) == {"status": 200, "error": "", "render error": None}
    assert general.text("prediction") == label
    confidence = general.text("confidence")
    assert re.fullmatch(r"\d{1,3}\.\d{2}%", confidence)
    assert percent(confidence) >= 50.0  # the predicted label's probability


@pytest.mark.parametrize(
    ("crop", "consensus"), [(FACE_CROP, "REAL"), (FLAG_CROP, "FAKE")], ids=["face", "flag"]
)
def test_augmented_crop_shows_consistent_consensus(
    tabs: tuple[Tab, Tab], legacy_api: ThreadServer, crop: tuple[int, int, int], consensus: str
) -> None:
    _, augmented = tabs
    augmented.upload(PHOTO)
    augmented.crop(*crop)
    augmented.analyze()
    assert delivered(augmented) == {"status": 200, "error": "", "render error": None}

    rows = augmented.variants()
    original = augmented.text("original-prediction")
    fakes = sum(label == "fake" for label in [original, *(row.prediction for row in rows)])
    size = legacy_api.get("/api/v1/model/info").json()["image_size"]
    # Everything a reader compares, in one view, so that a failure lists every disagreement.
    seen = {
        "consensus": augmented.text("consensus"),
        "consensus badge": colour_name(augmented.colour("consensus-badge")),
        "rows": [row.name for row in rows],
        "row badges": [colour_name(row.colour) for row in rows],
        "rows under 50%": [row.name for row in rows if percent(row.confidence) < 50.0],
        "original under 50%": percent(augmented.text("original-confidence")) < 50.0,
        "below threshold": augmented.text("below-threshold"),
        "threshold": augmented.text("threshold"),
        "input shape": augmented.text("input-shape"),
    }
    expected = {
        "consensus": consensus,
        "consensus badge": "red" if consensus == "FAKE" else "green",
        "rows": VARIANT_ROWS,
        "row badges": ["red" if row.prediction == "fake" else "green" for row in rows],
        "rows under 50%": [],
        "original under 50%": False,
        "below threshold": f"{fakes} / {len(VARIANTS)}",
        "threshold": "50%",
        "input shape": " × ".join(map(str, size)),
    }
    assert seen == expected
    assert (fakes > len(VARIANTS) // 2) == (consensus == "FAKE")  # the majority the rows show
    assert re.fullmatch(r"\d{1,3}\.\d{2}%", augmented.text("average-confidence"))
    assert re.fullmatch(r"\d+\.\d{3}s", augmented.text("processing-time"))


@pytest.mark.parametrize("tab", ["general", "augmented"])
def test_a_photo_with_no_face_shows_no_verdict(tabs: tuple[Tab, Tab], tab: str) -> None:
    """The old page can show only real/fake for a 2xx: a whole photo with no face must be a 4xx
    (422 NO_FACE), shown as "Analysis failed", never as "REAL 50 %"."""
    page = dict(zip(("general", "augmented"), tabs, strict=True))[tab]
    page.upload(NO_FACE_PHOTO)
    page.direct_analysis()
    assert delivered(page) == {"status": 422, "error": "Analysis failed", "render error": None}
    assert not page.part("result").is_displayed()


def jpeg_over(n_bytes: int, path: Path) -> Path:
    """A JPEG (noise, quality 95) a little over `n_bytes`."""
    side = int(math.sqrt(n_bytes / 1.2))  # noise at quality 95: ~1.2 bytes a pixel
    while len(data := image_bytes("JPEG", size=(side, side), quality=95)) <= n_bytes:
        side += 16
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("factor", [1.15, 3.0], ids=["just-over", "3x"])
def test_upload_over_byte_limit_shows_analysis_failed(
    tabs: tuple[Tab, Tab], tmp_path: Path, factor: float
) -> None:
    # 1.15x: inside the room today's server leaves for the multipart envelope (64 KiB over the
    # limit), so it reads the body, then refuses the file; 3x: refused from Content-Length
    # before the body is read. Either way a 413 that the page's code must get to see.
    general, _ = tabs
    general.upload(jpeg_over(int(MAX_UPLOAD_BYTES * factor), tmp_path / "large.jpg"))
    general.direct_analysis()
    assert delivered(general) == {"status": 413, "error": "Analysis failed", "render error": None}


def use_up_rate_limit(api: ThreadServer) -> None:
    """Requests from this machine's address (the browser's too) until the server answers 429,
    with at least 5 s left in its window."""
    for _ in range(3):
        for _ in range(RATE_LIMIT_PER_MINUTE + 1):
            answer = api.post("/api/v1/detect/")  # no file: a quick 400, counted all the same
            if answer.status_code == 429:
                break
        assert answer.status_code == 429, answer.text
        retry_after = int(answer.headers.get("retry-after", "60"))
        if retry_after >= 5:
            return
        time.sleep(retry_after)  # the window is about to reset: start on the next one
    raise AssertionError("the rate limit window kept resetting")


@pytest.mark.uses_up_rate_limit
def test_rate_limited_shows_analysis_failed(tabs: tuple[Tab, Tab], legacy_api: ThreadServer) -> None:
    general, _ = tabs
    general.upload(PHOTO)
    use_up_rate_limit(legacy_api)
    general.direct_analysis()
    assert delivered(general) == {"status": 429, "error": "Analysis failed", "render error": None}
