"""The page for people (/ui/, serving/ui.py and serving/ui/) in real headless Chromium against
the service over real HTTP, with a small real model (`served_tag`, faces on): what the page
draws and says must be what the API answers for the same file (posted here with httpx).

Two servers for the module: `ui_api` (the page served by it, a byte limit a generated photo
exceeds) and `keyed_api` (an API key and a rate limit), whose page is served from another
origin (tests/browser/page_server.py serving serving/ui/, `?api=`). The heatmap and video tests
check what the server answers today and, once it makes heatmaps or analyses videos, that the
page draws them."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serving.ui import UI_DIR, api_origin, content_security_policy
from tests.browser.conftest import ARTIFACTS
from tests.browser.page_server import serve_page
from tests.browser.test_legacy_front_end import jpeg_over
from tests.browser.ui_page import UiPage, percent_of, ui_url
from tests.helpers import FIXTURES
from tests.inprocess import ThreadServer

MAX_UPLOAD_BYTES = 150_000  # over every fixture photo used here (<= 118 KB)
API_KEY = "ui-test-key"
RATE_LIMIT_PER_MINUTE = 12
GROUP = FIXTURES / "faceapi_sample4.jpg"  # 4 faces
PORTRAIT = FIXTURES / "astronaut.jpg"
NO_FACE = FIXTURES / "coffee_no_face.jpg"
ROTATED = FIXTURES / "astronaut_exif_orientation6.jpg"  # stored sideways, EXIF says turn it
WORDS = {"likely_fake": "Likely fake", "uncertain": "Uncertain", "likely_real": "Likely real"}
URL = re.compile(r"https?://[^\s'\"<>)]+")
VARIANT_NAMES = [
    "Original",
    "Grayscale",
    "Rotate right",
    "Rotate left",
    "Brightness up",
    "Brightness down",
    "Flip horizontal",
]


@pytest.fixture(scope="module")
def ui_api(chrome: Any, served_tag: str) -> Iterator[ThreadServer]:
    """`chrome` first: without a browser the tests skip before a server starts."""
    env = {"DEEPFAKE_MODEL_TAG": served_tag, "DEEPFAKE_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES)}
    with ThreadServer(env=env) as running:
        yield running


@pytest.fixture(scope="module")
def keyed_api(chrome: Any, served_tag: str) -> Iterator[ThreadServer]:
    env = {
        "DEEPFAKE_MODEL_TAG": served_tag,
        "DEEPFAKE_API_KEY": API_KEY,
        "DEEPFAKE_RATE_LIMITS": f"{RATE_LIMIT_PER_MINUTE}/minute",
    }
    with ThreadServer(env=env) as running:
        yield running


@pytest.fixture(scope="module")
def ui_origin() -> Iterator[str]:
    """serving/ui/ as plain static files on another port: the page served from another origin."""
    with serve_page(UI_DIR) as origin:
        yield origin


@pytest.fixture
def page(chrome: Any) -> UiPage:
    return UiPage(chrome)


def answer(api: ThreadServer, path: Path, route: str = "/api/v1/detect/", **kwargs: Any) -> dict[str, Any]:
    response = api.post(route, files={"file": (path.name, path.read_bytes(), "image/jpeg")}, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def model_bands(api: ThreadServer) -> tuple[float, float]:
    bands = api.get("/api/v1/model/info").json()["verdict_bands"]
    return bands["real_up_to"], bands["fake_from"]


def expected_places(result: dict[str, Any], key: str = "box") -> list[tuple[float, ...]]:
    width, height = result["image_size"]
    return [
        (x / width, y / height, w / width, h / height)
        for x, y, w, h in (face[key] if key == "box" else face["heatmap"]["box"] for face in result["faces"])
    ]


def assert_places(
    seen: list[tuple[float, ...]], expected: list[tuple[float, ...]], displayed: tuple[float, float]
) -> None:
    """Each box within 1.5 displayed pixels of where the API's box falls on the displayed image."""
    assert len(seen) == len(expected), (seen, expected)
    scale = (*displayed, *displayed)
    off = [
        max(abs(a - b) * s for a, b, s in zip(got, want, scale, strict=True))
        for got, want in zip(seen, expected, strict=True)
    ]
    assert max(off, default=0.0) <= 1.5, {"seen": seen, "expected": expected, "pixels off": off}


def csp_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]


# ---- Headers and the ?api= origin (no browser)


@pytest.mark.parametrize(
    ("given", "origin"),
    [
        ("http://127.0.0.1:3000", "http://127.0.0.1:3000"),
        ("https://api.example.org/", "https://api.example.org"),
        ("https://api.example.org:443", "https://api.example.org:443"),
        ("http://[::1]:3000", "http://[::1]:3000"),
        ("javascript:alert(1)", None),
        ("https://api.example.org/path", None),
        ("https://user:pw@api.example.org", None),
        ("https://host:notaport", None),
        ("https://a.org; script-src *", None),
        ("", None),
    ],
)
def test_api_origin_takes_only_a_bare_http_origin(given: str, origin: str | None) -> None:
    assert api_origin(given) == origin


def test_page_headers_allow_nothing_from_outside(ui_api: ThreadServer) -> None:
    moved = ui_api.get("/ui?api=http%3A%2F%2F127.0.0.1%3A1")
    assert (moved.status_code, moved.headers["location"]) == (307, "/ui/?api=http%3A%2F%2F127.0.0.1%3A1")
    own = ui_api.get("/ui/")
    other = ui_api.get("/ui/", params={"api": "http://127.0.0.1:1"})
    hostile = ui_api.get("/ui/", params={"api": "https://x.org; script-src *"})
    script = ui_api.get("/ui/assets/app.js")
    seen = {
        "page": (own.status_code, own.headers["content-type"], own.headers["x-content-type-options"]),
        "csp": own.headers["content-security-policy"],
        "csp with ?api=": other.headers["content-security-policy"],
        "csp with a hostile ?api=": hostile.headers["content-security-policy"],
        "script": (
            script.status_code,
            script.headers["content-type"],
            script.headers["x-content-type-options"],
        ),
    }
    assert seen == {
        "page": (200, "text/html; charset=utf-8", "nosniff"),
        "csp": content_security_policy(),
        "csp with ?api=": content_security_policy(),  # an origin the operator did not allow
        "csp with a hostile ?api=": content_security_policy(),
        "script": (200, "text/javascript; charset=utf-8", "nosniff"),
    }
    assert "connect-src 'self';" in seen["csp with ?api="]
    assert "script-src 'self';" in seen["csp"] and "'unsafe-inline'" not in seen["csp"]
    # No URL of another host in the page's files: the SVG namespace is a name, not a fetch; the
    # other is the server field's placeholder.
    urls = {url for path in UI_DIR.rglob("*.*") for url in URL.findall(path.read_text(encoding="utf-8"))}
    assert urls <= {"http://www.w3.org/2000/svg", "https://host:port"}, urls


# ---- Photos


@pytest.mark.parametrize("photo", [GROUP, PORTRAIT, ROTATED], ids=["group-of-4", "portrait", "exif-rotated"])
def test_boxes_verdicts_and_probabilities_match_the_api(
    page: UiPage, ui_api: ThreadServer, photo: Path, chrome: Any
) -> None:
    expected = answer(ui_api, photo)
    page.open(ui_url(ui_api.url))
    assert page.upload(photo) == "done", page.error
    displayed, boxes = page.geometry()
    assert_places([b.place for b in boxes], expected_places(expected), displayed)
    faces = page.faces()
    fake = sum(face["prediction"] == "fake" for face in expected["faces"])
    seen = {
        "status": page.status,
        "image verdict": page.part("image-verdict").get_attribute("data-verdict"),
        "image verdict words": page.text("image-verdict"),
        "fake count": page.text("fake-count"),
        "box verdicts": [b.verdict for b in boxes],
        "box labels": [b.text for b in boxes],
        "face verdicts": [f.verdict for f in faces],
        "face words": [f.verdict_words for f in faces],
    }
    n = len(expected["faces"])
    assert seen == {
        "status": 200,
        "image verdict": expected["verdict"],
        "image verdict words": WORDS[expected["verdict"]],
        "fake count": f"{fake} of {n} face{'s' if n > 1 else ''} looked fake.",
        "box verdicts": [f["verdict"] for f in expected["faces"]],
        "box labels": [f"{i + 1} {WORDS[f['verdict']].lower()}" for i, f in enumerate(expected["faces"])],
        "face verdicts": [f["verdict"] for f in expected["faces"]],
        "face words": [WORDS[f["verdict"]] for f in expected["faces"]],
    }
    shown = [percent_of(f.p_fake) for f in faces]
    want = [100 * f["fake_probability"] for f in expected["faces"]]
    assert all(abs(a - b) <= 0.05 + 1e-9 for a, b in zip(shown, want, strict=True)), (shown, want)
    low, high = model_bands(ui_api)
    assert all(abs(left - low) < 0.01 and abs(right - high) < 0.01 for left, right in page.bands()), (
        page.bands()
    )
    assert csp_errors(chrome) == []


def test_no_face_photo_is_shown_as_such(page: UiPage, ui_api: ThreadServer) -> None:
    """The legacy route answers a photo with no face 422 NO_FACE by default (for the old front
    end); the page asks for the answer that says so (require_face=false) and shows it."""
    refused = ui_api.post(
        "/api/v1/detect/", files={"file": (NO_FACE.name, NO_FACE.read_bytes(), "image/jpeg")}
    )
    assert (refused.status_code, refused.json()["error_code"]) == (422, "NO_FACE")
    assert answer(ui_api, NO_FACE, data={"require_face": "false"})["verdict"] == "no_face"
    page.open(ui_url(ui_api.url))
    assert page.upload(NO_FACE) == "done", page.error
    _, boxes = page.geometry()
    assert {
        "verdict": page.text("image-verdict"),
        "hint": page.text("summary-hint"),
        "boxes": boxes,
        "faces": page.faces(),
        "error": page.error,
    } == {
        "verdict": "No face found",
        "hint": "No face was found in this image, so nothing was judged.",
        "boxes": [],
        "faces": [],
        "error": "",
    }


def test_in_depth_shows_the_seven_variants_and_each_face_vote(page: UiPage, ui_api: ThreadServer) -> None:
    expected = answer(ui_api, GROUP, "/api/v1/detect/augmented")
    page.open(ui_url(ui_api.url))
    page.check("in-depth")
    assert page.upload(GROUP) == "done", page.error
    assert page.attr("kind") == "augmented"
    rows = page.variants()
    original = expected["original_prediction"]
    variants = [original, *expected["augmented_predictions"]]
    info = expected["debug_info"]
    assert {
        "names": [r.name for r in rows],
        "labels": [r.label for r in rows],
        "votes": [f.vote for f in page.faces()],
        "vote": page.text("vote"),
        "verdict": page.part("image-verdict").get_attribute("data-verdict"),
    } == {
        "names": VARIANT_NAMES,
        "labels": [v["prediction"] for v in variants],
        "votes": [
            f"{f['variants_fake']} of 7 variants judged fake; spread of P(fake) {100 * f['spread']:.1f} %."
            for f in expected["faces"]
        ],
        "vote": f"{info['predictions_below_threshold']} of {info['total_predictions']} variants say fake: "
        f"the vote is {expected['consensus_prediction']}, "
        f"mean confidence {100 * expected['average_confidence']:.1f} %.",
        "verdict": expected["verdict"],
    }
    shown = [percent_of(r.p_fake) for r in rows]
    want = [100 * v["fake_probability"] for v in variants]
    assert all(abs(a - b) <= 0.05 + 1e-9 for a, b in zip(shown, want, strict=True)), (shown, want)


def test_heatmap_toggle_asks_for_heatmaps_and_lays_them_over_the_faces(
    page: UiPage, ui_api: ThreadServer
) -> None:
    files = {"file": (GROUP.name, GROUP.read_bytes(), "image/jpeg")}
    direct = ui_api.post("/api/v1/detect/", files=files, data={"explain": "true"})
    page.open(ui_url(ui_api.url))
    page.check("heatmaps")
    assert page.upload(GROUP) == "done", page.error
    _, boxes = page.geometry()
    assert len(boxes) == 4
    if direct.status_code == 400:
        # Today's server refuses the field it does not take: the page saw that refusal (so it
        # sent explain=true), said so, and showed the answer without heatmaps.
        assert "explain" in direct.json()["error"]
        assert page.notice == "This server does not make heatmaps: the result is shown without them."
        assert page.attr("explain-sent") == "false"
        assert page.geometry('[data-role="heatmap"]')[1] == []
        return
    expected = direct.json()
    assert direct.status_code == 200 and all("heatmap" in f for f in expected["faces"]), expected
    displayed, maps = page.geometry('[data-role="heatmap"]')
    assert page.attr("explain-sent") == "true" and all(m.visible for m in maps)
    assert_places([m.place for m in maps], expected_places(expected, "heatmap"), displayed)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.driver.save_screenshot(str(ARTIFACTS / "test_ui_heatmaps_on.png"))
    page.check("heatmaps", on=False)
    assert not any(m.visible for m in page.geometry('[data-role="heatmap"]')[1])


def test_phone_width_fits_and_keeps_boxes_on_faces(page: UiPage, ui_api: ThreadServer, chrome: Any) -> None:
    expected = answer(ui_api, GROUP)
    size = chrome.get_window_size()
    try:
        chrome.set_window_size(360, 800)
        page.open(ui_url(ui_api.url))
        assert page.upload(GROUP) == "done", page.error
        width = chrome.execute_script("return [window.innerWidth, document.documentElement.scrollWidth]")
        displayed, boxes = page.geometry()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        chrome.save_screenshot(str(ARTIFACTS / "test_ui_phone_width_360.png"))
        assert width[0] <= 400 and width[1] <= width[0], width  # no sideways scrolling
        assert displayed[0] <= width[0]
        assert_places([b.place for b in boxes], expected_places(expected), displayed)
    finally:
        chrome.set_window_size(size["width"], size["height"])


def test_keyboard_reaches_the_labelled_file_input_with_visible_focus(
    page: UiPage, ui_api: ThreadServer
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    page.open(ui_url(ui_api.url))
    reached: list[str] = []
    while len(reached) < 6 and reached[-1:] != ["file"]:  # skip link, docs link, then the file input
        ActionChains(page.driver).send_keys(Keys.TAB).perform()
        active = page.driver.switch_to.active_element
        reached.append(active.get_attribute("id") or active.text)
    focused = page.driver.switch_to.active_element
    outline = focused.value_of_css_property("outline-style"), focused.value_of_css_property("outline-width")
    label = page.driver.execute_script("return arguments[0].labels[0].textContent", focused)
    assert reached[-1] == "file", reached
    assert outline[0] != "none" and outline[1] != "0px", outline
    assert label == "Choose a file, or drop one here"
    assert page.part("docs-link").get_attribute("href") == f"{ui_api.url}/api/v1/docs"


# ---- Errors in plain words


def truncated_jpeg(path: Path) -> Path:
    path.write_bytes(PORTRAIT.read_bytes()[:2000])
    return path


@pytest.mark.parametrize(
    ("make", "status", "message"),
    [
        (
            lambda tmp: jpeg_over(int(MAX_UPLOAD_BYTES * 1.3), tmp / "large.jpg"),
            413,
            "This file is too large for the server (it takes files up to 146 KB). Choose a smaller file.",
        ),
        (
            lambda tmp: (tmp / "notes.txt").write_text("not a photo") and tmp / "notes.txt",
            415,
            "This is not an image the server can read. Use a JPEG, PNG, WebP, BMP or GIF file.",
        ),
        (
            lambda tmp: truncated_jpeg(tmp / "cut.jpg"),
            400,
            "This image is damaged or cut short: the server cannot decode it.",
        ),
    ],
    ids=["too-large", "not-an-image", "truncated"],
)
def test_api_errors_are_said_in_plain_words(
    page: UiPage, ui_api: ThreadServer, tmp_path: Path, make: Any, status: int, message: str
) -> None:
    upload = make(tmp_path)
    page.open(ui_url(ui_api.url))
    assert page.upload(upload) == "error"
    assert (page.status, page.text("error-text")) == (status, message)
    assert "Traceback" not in page.error


def test_a_video_is_sent_to_the_video_route(page: UiPage, ui_api: ThreadServer) -> None:
    from tests.videos import clip

    video = clip("moving.mp4")
    files = {"file": (video.name, video.read_bytes(), "video/mp4")}
    direct = ui_api.post("/api/v1/detect/video", files=files, data={"explain": "true"})
    page.open(ui_url(ui_api.url))
    page.check("heatmaps")
    state = page.upload(video)
    assert page.attr("kind") == "video"
    if direct.status_code == 404:  # a server without the video route
        assert (state, page.text("error-text")) == ("error", "This server does not analyse videos.")
        return
    expected = direct.json()
    assert direct.status_code == 200 and state == "done", (direct.text, page.error)
    tracks = page.tracks()
    assert [(t.track_id, t.verdict_words, t.points) for t in tracks] == [
        (str(t["track_id"]), WORDS[t["verdict"]], len(t["frames"])) for t in expected["tracks"]
    ]
    shown = [percent_of(t.p_fake) for t in tracks]
    want = [100 * t["fake_probability"] for t in expected["tracks"]]
    assert all(abs(a - b) <= 0.05 + 1e-9 for a, b in zip(shown, want, strict=True)), (shown, want)
    # At the frame a track's heatmap is of: its box and its heatmap where the answer puts them.
    index, track = next((i, t) for i, t in enumerate(expected["tracks"]) if t.get("heatmap"))
    frame = min(track["frames"], key=lambda f: abs(f["time"] - track["heatmap_time"]))
    page.seek(frame["time"])
    size = (expected["video"]["width"], expected["video"]["height"]) * 2
    displayed, boxes = page.geometry()
    _, maps = page.geometry('[data-role="heatmap"]')
    seen = [b.place for b in boxes if b.index == index] + [m.place for m in maps if m.index == index]
    places = [
        tuple(v / s for v, s in zip(box, size, strict=True))
        for box in (frame["box"], track["heatmap"]["box"])
    ]
    assert_places(seen, places, displayed)


# ---- Another origin, an API key, a rate limit (keyed_api)


def test_from_another_origin_asks_for_the_key_and_sends_it(
    page: UiPage, keyed_api: ThreadServer, ui_origin: str, chrome: Any
) -> None:
    expected = answer(keyed_api, GROUP, headers={"Authorization": f"Bearer {API_KEY}"})
    page.open(ui_url(ui_origin, keyed_api.url, path="/index.html"))
    assert page.part("api-origin").get_attribute("textContent") == keyed_api.url  # in the closed panel
    assert page.part("docs-link").get_attribute("href") == f"{keyed_api.url}/api/v1/docs"
    assert page.upload(GROUP) == "error"
    asked = (page.status, page.text("error-text"), page.driver.switch_to.active_element.get_attribute("id"))
    assert asked == (401, "This server needs an API key. Enter it in the API key field below.", "api-key")
    assert page.enter_key("wrong-key") == "error"
    assert (page.status, page.text("error-text")) == (
        401,
        "The server refused this API key. Check it and enter it again in the field below.",
    )
    assert page.enter_key(API_KEY) == "done", page.error
    displayed, boxes = page.geometry()
    assert_places([b.place for b in boxes], expected_places(expected), displayed)
    assert [b.verdict for b in boxes] == [f["verdict"] for f in expected["faces"]]
    stored = chrome.execute_script(
        "return sessionStorage.getItem(arguments[0])", f"deepfake-ui:key:{keyed_api.url}"
    )
    assert stored == API_KEY


def test_rate_limited_says_when_to_try_again(page: UiPage, keyed_api: ThreadServer, ui_origin: str) -> None:
    page.open(ui_url(ui_origin, keyed_api.url, path="/index.html"))
    page.driver.execute_script(
        "sessionStorage.setItem(arguments[0], arguments[1])", f"deepfake-ui:key:{keyed_api.url}", API_KEY
    )
    page.open(ui_url(ui_origin, keyed_api.url, path="/index.html"))
    retry_after = use_up_rate_limit(keyed_api)
    assert page.upload(PORTRAIT) == "error"
    text = page.text("error-text")
    assert page.status == 429, text
    wait = int(
        text.removeprefix("Too many requests from this address for now: try again in ").removesuffix(" s.")
    )
    assert retry_after - 10 <= wait <= retry_after, (text, retry_after)


def use_up_rate_limit(api: ThreadServer) -> int:
    """Requests until the server answers 429 with at least 10 s left in its window; its Retry-After."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    for _ in range(3):
        for _ in range(RATE_LIMIT_PER_MINUTE + 1):
            answered = api.post("/api/v1/detect/", headers=headers)  # no file: a quick 400, counted
            if answered.status_code == 429:
                break
        assert answered.status_code == 429, answered.text
        retry_after = int(answered.headers["retry-after"])
        if retry_after >= 10:
            return retry_after
        time.sleep(retry_after)
    raise AssertionError("the rate limit window kept resetting")
