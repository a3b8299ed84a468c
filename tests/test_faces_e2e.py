"""Faces first: real photos with known face counts through the service (its ASGI app, in
process, with the real detector and a small real model)."""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from tests.helpers import FIXTURES

EXPECTED = json.loads((FIXTURES / "faces.json").read_text())
# What the served detector finds (BlazeFace: this test model's metadata names none).
FOUND = {name: len(entry["blazeface"]) for name, entry in EXPECTED.items()}


def _post(app: TestClient, name: str, path: str = "/api/v1/detect/", **fields: str) -> dict:
    response = app.post(
        path, files={"file": (name, (FIXTURES / name).read_bytes(), "image/jpeg")}, data=fields
    )
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_face_is_judged(app: TestClient, name: str) -> None:
    body = _post(app, name)
    faces = body["faces"]
    assert len(faces) == FOUND[name]
    assert body["face_detected"] is bool(faces) and body["input_kind"] == "photo"
    assert body["face_count"] == len(faces) == body["debug_info"]["input_shape"][0]  # one batch
    assert body["fake_faces"] == sum(face["prediction"] == "fake" for face in faces)
    if faces:
        most_fake = max(faces, key=lambda f: f["fake_probability"])
        # This test model has no group rule (imported without real faces' statistics): the
        # image is its most-fake face (tests/test_verdicts.py checks the rule itself).
        assert body["fake_probability"] == pytest.approx(most_fake["fake_probability"])
        assert body["prediction"] == most_fake["prediction"]
        for face in faces:
            x, y, w, h = face["box"]
            assert x >= 0 and y >= 0 and w > 0 and h > 0 and face["detector_score"] >= 0.6
            assert face["confidence"] == pytest.approx(
                face["fake_probability"] if face["prediction"] == "fake" else 1 - face["fake_probability"]
            )
            assert face["confidence"] >= 0.5 and face["verdict"] in (
                "likely_fake",
                "uncertain",
                "likely_real",
            )
    else:  # nothing judged: never a verdict without a face
        assert body["verdict"] == "no_face" and body["fake_probability"] is None
        assert (body["prediction"], body["confidence"]) == ("real", 0.5)


def test_exif_rotated_portrait_is_found_upright(app: TestClient) -> None:
    rotated = _post(app, "astronaut_exif_orientation6.jpg")["faces"]
    upright = _post(app, "astronaut.jpg")["faces"]
    assert len(rotated) == len(upright) == 1
    # the same face, at the same place of the upright image
    assert rotated[0]["box"] == pytest.approx(upright[0]["box"], abs=6)


def test_no_face_falls_back_or_refuses(app: TestClient) -> None:
    fallback = _post(app, "coffee_no_face.jpg")
    assert fallback["face_detected"] is False and fallback["verdict"] == "no_face"
    assert fallback["prediction"] == "real" and fallback["confidence"] == 0.5  # accuses no one
    augmented = _post(app, "coffee_no_face.jpg", "/api/v1/detect/augmented")
    assert (augmented["verdict"], augmented["consensus_prediction"]) == ("no_face", "REAL")
    response = app.post(
        "/api/v1/detect/",
        files={"file": ("c.jpg", (FIXTURES / "coffee_no_face.jpg").read_bytes(), "image/jpeg")},
        data={"require_face": "true"},
    )
    assert response.status_code == 422
    assert response.json()["error_code"] == "NO_FACE"


def test_augmented_votes_per_face(app: TestClient) -> None:
    body = _post(app, "faceapi_sample4.jpg", "/api/v1/detect/augmented")
    assert body["face_detected"] is True and len(body["faces"]) == 4
    assert len(body["original_prediction"]["faces"]) == 4
    deciding = max(body["faces"], key=lambda f: f["fake_probability"])
    assert body["consensus"] == deciding["prediction"]
    assert body["consensus_prediction"] == deciding["prediction"].upper()  # the old casing
    assert body["average_confidence"] == pytest.approx(deciding["confidence"])
    assert body["debug_info"]["total_predictions"] == 7 and len(body["augmented_predictions"]) == 6


def test_a_face_crop_upload_is_judged_as_one(app: TestClient) -> None:
    """The old front end sends a 160x160 crop it cut around a face (twice this test model's 64 px
    input): judged as it is, even when the detector finds no face in it (a crop of the cat)."""
    from PIL import Image

    from tests.helpers import encode

    cat = Image.open(FIXTURES / "chelsea_cat_no_face.jpg").convert("RGB").crop((100, 20, 228, 148))
    response = app.post("/api/v1/detect/", files={"file": ("crop.jpg", encode(cat, "JPEG"), "image/jpeg")})
    body = response.json()
    assert (body["input_kind"], body["face_count"], body["face_detected"]) == ("face_crop", 1, False)
    assert body["verdict"] != "no_face" and body["faces"][0]["box"] == [0, 0, 128, 128]
    assert body["debug_info"]["input_shape"][0] == 1
