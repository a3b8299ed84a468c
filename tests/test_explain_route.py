"""explain=true on the routes (the service in process, a small real model): a heatmap per face,
laid over the square its crop was cut from, computed beside an unchanged verdict."""

from __future__ import annotations

import base64
import io
import json

from PIL import Image
from starlette.testclient import TestClient

from tests.helpers import FIXTURES

PHOTO = FIXTURES / "faceapi_sample4.jpg"


def post(app: TestClient, path: str, **fields: str) -> dict:
    response = app.post(path, files={"file": ("a.jpg", PHOTO.read_bytes(), "image/jpeg")}, data=fields)
    assert response.status_code == 200, response.text
    return response.json()


def test_detect_explains_every_face_and_keeps_the_verdict(app: TestClient) -> None:
    plain = post(app, "/api/v1/detect/")
    explained = post(app, "/api/v1/detect/", explain="true")
    assert [f["fake_probability"] for f in explained["faces"]] == [
        f["fake_probability"] for f in plain["faces"]
    ]
    assert explained["explanation"]["method"].startswith("Grad-CAM") and plain["explanation"] is None
    listed = json.loads((FIXTURES / "faces.json").read_text())[PHOTO.name]["blazeface"]  # served detector
    assert len(explained["faces"]) == len(listed)
    for face in explained["faces"]:
        heatmap = face["heatmap"]
        image = Image.open(io.BytesIO(base64.b64decode(heatmap["png"])))
        assert image.mode == "RGBA" and image.size == (64, 64)
        x, y, side, same = heatmap["box"]
        bx, by, bw, bh = face["box"]
        assert side == same and side >= max(bw, bh)  # the crop's square, around the face box
        assert x <= bx + 2 and y <= by + 2 and x + side >= bx + bw - 2 and y + side >= by + bh - 2
        assert all(n >= 1 for n in heatmap["map_size"])


def test_augmented_explains_the_original_crops(app: TestClient) -> None:
    body = post(app, "/api/v1/detect/augmented", explain="1")
    assert all(face["heatmap"] for face in body["faces"])
    assert all(face["heatmap"] for face in body["original_prediction"]["faces"])


def test_explain_must_be_a_boolean(app: TestClient) -> None:
    response = app.post(
        "/api/v1/detect/", files={"file": ("a.jpg", PHOTO.read_bytes())}, data={"explain": "please"}
    )
    assert (response.status_code, response.json()["error_code"]) == (400, "BAD_REQUEST")
