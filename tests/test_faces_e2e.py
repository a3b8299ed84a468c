"""Faces first: real photos with known face counts through the service (its ASGI app, in
process, with the real detector and a small real model)."""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from tests.helpers import FIXTURES

EXPECTED = json.loads((FIXTURES / "faces.json").read_text())
# MTCNN misses a face in profile and one looking down on sample2 (see tests/test_faces.py).
FOUND = {**EXPECTED, "faceapi_sample2.jpg": 1}


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
    assert body["face_detected"] is bool(faces)
    # all faces of the photo went to the model as one batch
    assert body["debug_info"]["input_shape"][0] == max(len(faces), 1)
    if faces:
        most_fake = max(faces, key=lambda f: f["fake_probability"])
        assert body["fake_probability"] == pytest.approx(most_fake["fake_probability"])
        assert body["prediction"] == most_fake["prediction"]
        for face in faces:
            x, y, w, h = face["box"]
            assert x >= 0 and y >= 0 and w > 0 and h > 0 and face["detector_score"] >= 0.9
            assert face["confidence"] == pytest.approx(
                face["fake_probability"] if face["prediction"] == "fake" else 1 - face["fake_probability"]
            )


def test_exif_rotated_portrait_is_found_upright(app: TestClient) -> None:
    rotated = _post(app, "astronaut_exif_orientation6.jpg")["faces"]
    upright = _post(app, "astronaut.jpg")["faces"]
    assert len(rotated) == len(upright) == 1
    # the same face, at the same place of the upright image
    assert rotated[0]["box"] == pytest.approx(upright[0]["box"], abs=6)


def test_no_face_falls_back_or_refuses(app: TestClient) -> None:
    fallback = _post(app, "coffee_no_face.jpg")
    assert fallback["face_detected"] is False and fallback["prediction"] in ("real", "fake")
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
    assert body["consensus_prediction"] == deciding["prediction"]
    assert body["average_confidence"] == pytest.approx(deciding["confidence"])
    assert body["debug_info"]["total_predictions"] == 7 and len(body["augmented_predictions"]) == 6
