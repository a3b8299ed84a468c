"""Faces first: real photos with known face counts through the service (its ASGI app, in
process, with the real detector and a small real model)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from starlette.testclient import TestClient

from preprocessing.augment import VARIANTS
from tests.helpers import FIXTURES

EXPECTED = json.loads((FIXTURES / "faces.json").read_text())
# What the served detector finds (BlazeFace: this test model's metadata names none).
FOUND = {name: len(entry["blazeface"]) for name, entry in EXPECTED.items()}


def _post(app: TestClient, name: str, path: str = "/api/v1/detect/", **fields: str) -> dict:
    """The answer for a photo, also when no face is found in it (require_face=false)."""
    fields = {"require_face": "false", **fields}
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


def _no_face(app: TestClient, path: str, **fields: str) -> Any:
    photo = (FIXTURES / "coffee_no_face.jpg").read_bytes()
    return app.post(path, files={"file": ("c.jpg", photo, "image/jpeg")}, data=fields)


def _assert_no_face_refused(response: Any) -> None:
    """422 NO_FACE in the legacy shape, whose `error` says what happened and what to do."""
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error_code"] == "NO_FACE" and body["timestamp"]
    assert body["error"].startswith("No face was found") and "crop the face" in body["error"]


def _assert_no_face_answer(response: Any) -> dict:
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["verdict"], body["face_detected"], body["faces"]) == ("no_face", False, [])
    return body


def test_no_face_is_a_422_for_old_clients_and_an_answer_for_new_ones(app: TestClient) -> None:
    """The old front end reads any 200 as a verdict ("REAL", 50 %): its routes answer a photo
    with no face 422 NO_FACE; the Python client's routes answer `verdict: "no_face"`; the form
    field `require_face` decides either way."""
    for legacy in ("/api/v1/detect/", "/api/v1/detect/augmented"):
        _assert_no_face_refused(_no_face(app, legacy))
    fallback = _assert_no_face_answer(_no_face(app, "/api/v1/detect/", require_face="false"))
    assert fallback["prediction"] == "real" and fallback["confidence"] == 0.5  # accuses no one
    augmented = _assert_no_face_answer(_no_face(app, "/api/v1/detect/augmented", require_face="false"))
    assert augmented["consensus_prediction"] == "REAL" and augmented["augmented_predictions"] == []

    for client in ("/detect", "/detect_augmented"):
        _assert_no_face_answer(_no_face(app, client))
        _assert_no_face_refused(_no_face(app, client, require_face="true"))


@pytest.mark.parametrize("setting", ["true", "false"])
def test_require_face_setting_sets_every_route_and_a_request_overrides_it(
    served_tag: str, setting: str
) -> None:
    """DEEPFAKE_REQUIRE_FACE, for operators who want one answer everywhere: true, 422 on every
    route; false, the answer on every route (the behaviour before old clients got the 422)."""
    from tests.inprocess import service_app

    refused = setting == "true"
    with service_app({"DEEPFAKE_MODEL_TAG": served_tag, "DEEPFAKE_REQUIRE_FACE": setting}) as app:
        for path in ("/api/v1/detect/", "/detect"):
            default, overridden = (
                _no_face(app, path),
                _no_face(app, path, require_face=str(not refused).lower()),
            )
            _assert_no_face_refused(default) if refused else _assert_no_face_answer(default)
            _assert_no_face_answer(overridden) if refused else _assert_no_face_refused(overridden)


def test_augmented_votes_per_face(app: TestClient) -> None:
    body = _post(app, "faceapi_sample4.jpg", "/api/v1/detect/augmented")
    assert body["face_detected"] is True and len(body["faces"]) == FOUND["faceapi_sample4.jpg"]
    assert len(body["original_prediction"]["faces"]) == FOUND["faceapi_sample4.jpg"]
    deciding = max(body["faces"], key=lambda f: f["fake_probability"])
    assert body["consensus"] == deciding["prediction"]
    assert body["consensus_prediction"] == deciding["prediction"].upper()  # the old casing
    assert body["average_confidence"] == pytest.approx(deciding["confidence"])
    assert body["debug_info"]["total_predictions"] == len(VARIANTS)
    assert len(body["augmented_predictions"]) == len(VARIANTS) - 1  # all but the original


def _crop_upload(app: TestClient, size: tuple[int, int]) -> dict:
    """A crop of the cat photo (no face in it), resized to `size`, through the legacy route."""
    from PIL import Image

    from tests.helpers import encode

    cat = Image.open(FIXTURES / "chelsea_cat_no_face.jpg").convert("RGB").crop((100, 20, 260, 180))
    data = encode(cat.resize(size), "JPEG")
    response = app.post("/api/v1/detect/", files={"file": ("crop.jpg", data, "image/jpeg")})
    return {"status": response.status_code, **response.json()}


def test_a_face_crop_upload_is_judged_as_one(app: TestClient) -> None:
    """The old front end sends a 160x160 crop it cut around a face: judged as it is, even when
    the detector finds no face in it (a crop of the cat), up to FACE_CROP_MAX_SIDE. The rule is
    the clients', not the model's: this test model's input is 64 px, and a 160 px crop is a crop."""
    from serving.pipeline import FACE_CROP_MAX_SIDE

    legacy_crop = 160  # the old front end's canvas (CONTRACT.md)
    for side in (legacy_crop, FACE_CROP_MAX_SIDE):
        body = _crop_upload(app, (side, side))
        assert (body["status"], body["input_kind"], body["face_count"], body["face_detected"]) == (
            200, "face_crop", 1, False,
        ), side  # fmt: skip
        assert body["verdict"] != "no_face" and body["faces"][0]["box"] == [0, 0, side, side]
        assert body["debug_info"]["input_shape"][0] == 1
    # One pixel larger, or far from square: a photo, in which no face is found.
    for size in ((FACE_CROP_MAX_SIDE + 1, FACE_CROP_MAX_SIDE + 1), (legacy_crop * 2, legacy_crop)):
        assert (_crop_upload(app, size)["status"], size) == (422, size)


def test_the_face_crop_rule_does_not_follow_the_model_input() -> None:
    """A fact of the clients, written once: a model with a larger input (224 px, say) must not
    make larger photos face crops, as a rule of "twice the model's input" did."""
    import inspect

    from serving.pipeline import FACE_CROP_MAX_ASPECT, FACE_CROP_MAX_SIDE, is_face_crop

    assert list(inspect.signature(is_face_crop).parameters) == ["size"]
    assert is_face_crop((FACE_CROP_MAX_SIDE, FACE_CROP_MAX_SIDE))
    narrowest = math.ceil(FACE_CROP_MAX_SIDE / FACE_CROP_MAX_ASPECT)  # as oblong as a crop may be
    assert is_face_crop((FACE_CROP_MAX_SIDE, narrowest)) and is_face_crop((narrowest, FACE_CROP_MAX_SIDE))
    assert not is_face_crop((FACE_CROP_MAX_SIDE + 1, FACE_CROP_MAX_SIDE))
    assert not is_face_crop((FACE_CROP_MAX_SIDE, narrowest - 1))
    assert not is_face_crop((2 * 224, 2 * 224))
