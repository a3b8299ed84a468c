"""The page (/ui/) shows what a file declares, in real headless Chromium against the service
over real HTTP with a trust list (the tests' own CA): for each signed file the words the page
shows must be what the API answers for the same file (posted here with httpx)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import ARTIFACTS
from tests.browser.ui_page import UiPage, ui_url
from tests.inprocess import ThreadServer
from tests.provenance_fixtures import ProvenanceFiles, make_provenance_files

WORDS = {"likely_fake": "Likely fake", "uncertain": "Uncertain", "likely_real": "Likely real"}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> ProvenanceFiles:
    return make_provenance_files(tmp_path_factory.mktemp("provenance-page"))


@pytest.fixture(scope="module")
def trusting_api(chrome: Any, served_tag: str, files: ProvenanceFiles) -> Iterator[ThreadServer]:
    """`chrome` first: without a browser the tests skip before a server starts."""
    env = {"DEEPFAKE_MODEL_TAG": served_tag, "DEEPFAKE_PROVENANCE_TRUST_ANCHORS": str(files.trust)}
    with ThreadServer(env=env) as running:
        yield running


@pytest.fixture
def page(chrome: Any) -> UiPage:
    return UiPage(chrome)


def answer(api: ThreadServer, path: Path) -> dict[str, Any]:
    response = api.post(
        "/api/v1/detect/",
        files={"file": (path.name, path.read_bytes(), "image/jpeg")},
        data={"require_face": "false"},
    )
    assert response.status_code == 200, response.text
    return response.json()


def shown(page: UiPage) -> dict[str, Any]:
    section = page.part("provenance")
    c2pa = page.parts("provenance-c2pa")
    return {
        "visible": section.is_displayed(),
        "state": section.get_attribute("data-c2pa"),
        "ai": section.get_attribute("data-ai"),
        "decides": section.get_attribute("data-decides"),
        "c2pa": c2pa[0].text if c2pa else "",
        "xmp": [item.text for item in page.parts("provenance-xmp")],
        "reason": page.text("verdict-reason") if page.part("verdict-reason").is_displayed() else "",
        "verdict": page.part("image-verdict").get_attribute("data-verdict"),
    }


@pytest.mark.parametrize(
    ("name", "state"),
    [
        ("ai_generated.jpg", "trusted"),
        ("camera.jpg", "trusted"),
        ("ai_edited.jpg", "trusted"),
        ("edited_after_signing.jpg", "invalid"),
        ("untrusted_ai.jpg", "untrusted"),
        ("xmp_claim.jpg", "absent"),
    ],
)
def test_the_page_says_what_each_signed_file_declares(
    page: UiPage, trusting_api: ThreadServer, files: ProvenanceFiles, name: str, state: str
) -> None:
    expected = answer(trusting_api, files[name])
    page.open(ui_url(trusting_api.url))
    assert page.upload(files[name]) == "done", page.error
    seen = shown(page)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.driver.save_screenshot(str(ARTIFACTS / f"test_provenance_page_{name}.png"))
    c2pa = expected["provenance"]["c2pa"]
    assert (seen["visible"], seen["state"], seen["verdict"]) == (True, state, expected["verdict"])
    assert (
        seen["ai"] == (c2pa["ai"] or "") and seen["decides"] == str(expected["provenance"]["decides"]).lower()
    )
    assert seen["reason"] == (expected["reason"] or "")
    if c2pa["present"]:
        assert c2pa["signer"]["subject"] in seen["c2pa"] and c2pa["signer"]["issuer"] in seen["c2pa"]
    words = {
        "trusted": "Content Credentials: valid,",
        "untrusted": "but not on this server's trust list: reported, not trusted.",
        "invalid": "Content Credentials: invalid (assertion.dataHash.mismatch): not to be relied on.",
        "absent": "Content Credentials: none in this file.",
    }
    assert words[state] in seen["c2pa"], seen["c2pa"]
    declared = {
        "ai_generated.jpg": "They declare the image AI-generated (trainedAlgorithmicMedia)",
        "camera.jpg": "They declare the image (digitalCapture)",
        "ai_edited.jpg": "They declare the image AI-edited (compositeWithTrainedAlgorithmicMedia)",
        "untrusted_ai.jpg": "They declare the image AI-generated (trainedAlgorithmicMedia)",
    }
    if name in declared:
        assert declared[name] in seen["c2pa"], seen["c2pa"]
    if name == "xmp_claim.jpg":
        assert seen["xmp"] == [
            "XMP says trainedAlgorithmicMedia (AI-generated): an unsigned claim, anyone can write it."
        ]


def test_a_trusted_ai_declaration_shows_as_the_verdict_with_its_reason(
    page: UiPage, trusting_api: ThreadServer, files: ProvenanceFiles
) -> None:
    expected = answer(trusting_api, files["ai_generated.jpg"])
    page.open(ui_url(trusting_api.url))
    assert page.upload(files["ai_generated.jpg"]) == "done", page.error
    assert page.text("image-verdict") == WORDS["likely_fake"] == WORDS[expected["verdict"]]
    assert page.text("verdict-reason") == expected["reason"] and "trusted" in expected["reason"]
    # The model's own view is still shown face by face.
    assert [f.verdict for f in page.faces()] == [f["verdict"] for f in expected["faces"]]
