"""A legacy-style FaceNet .h5 file imported by model_import.py and served: the legacy routes'
bodies in process (the service's ASGI app), and over a real `bentoml serve` what needs one:
the Python client (SyncHTTPClient) and adaptive batching across concurrent requests."""

from __future__ import annotations

import concurrent.futures
import re
from collections.abc import Callable
from pathlib import Path

import bentoml
import numpy as np
import pytest
from starlette.testclient import TestClient

from modeling.loading import load_classifier
from modeling.spec import ModelSpec
from preprocessing.augment import VARIANTS
from preprocessing.decode import DecodeLimits
from preprocessing.detectors import load_detector
from preprocessing.tensor import normalize
from serving.pipeline import DetectionPipeline
from tests.helpers import FIXTURES, ServerProcess, image_bytes

ISO_8601 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


@pytest.fixture(scope="module")
def in_process(served_tag: str) -> Callable[[bytes], np.ndarray]:
    """What the served model must answer: the same pipeline and stored model, run here."""
    stored = bentoml.models.get(served_tag)
    spec = ModelSpec.from_metadata(stored.info.metadata)
    model = load_classifier(Path(stored.path_of("model.keras")))
    detector = load_detector("blazeface")  # as the in-process app serves this model (no `detector`)
    pipeline = DetectionPipeline(spec, served_tag, DecodeLimits(), predict=None, detector=detector)  # type: ignore[arg-type]

    def raw_outputs(data: bytes) -> np.ndarray:
        crops = np.stack(pipeline.prepare(data).crops)
        return np.asarray(model.predict_on_batch(normalize(crops, spec.normalization))).reshape(-1)

    return raw_outputs


@pytest.mark.parametrize("path", ["/api/v1/detect/", "/api/v1/detect"])
def test_detect_answers_the_legacy_body(
    app: TestClient, served_tag: str, path: str, in_process: Callable[[bytes], np.ndarray]
) -> None:
    data = (FIXTURES / "astronaut.jpg").read_bytes()  # one face
    response = app.post(path, files={"file": ("face.jpg", data, "image/jpeg")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["prediction"] in ("real", "fake")
    assert isinstance(body["processing_time"], float) and body["processing_time"] >= 0
    assert body["debug_info"]["input_shape"] == [1, 64, 64, 3]
    raw = body["debug_info"]["raw_prediction"]
    assert raw == pytest.approx(in_process(data)[0], abs=1e-5)  # the real model answered
    assert body["face_detected"] is True and len(body["faces"]) == 1
    # legacy model: raw output is P(real); confidence is the probability of the predicted label
    assert body["confidence"] == pytest.approx(raw if body["prediction"] == "real" else 1 - raw)
    assert body["confidence"] >= 0.5  # the decision point is 0.5 (this model's threshold is 0.5)
    assert body["fake_probability"] == pytest.approx(1 - raw)
    assert body["model_tag"] == served_tag


def test_detect_on_a_real_face_photo(app: TestClient) -> None:
    face = FIXTURES / "astronaut_face.png"
    response = app.post("/api/v1/detect/", files={"file": (face.name, face.read_bytes(), "image/png")})
    assert response.status_code == 200 and 0.5 <= response.json()["confidence"] <= 1.0


def test_detect_augmented(app: TestClient) -> None:
    response = app.post(
        "/api/v1/detect/augmented", files={"file": ("x.png", image_bytes("PNG"), "image/png")}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    kinds = [p["augmentation_type"] for p in body["augmented_predictions"]]
    assert kinds == [
        "grayscale",
        "rotate_right",
        "rotate_left",
        "brightness_up",
        "brightness_down",
        "flip_horizontal",
    ]
    assert body["original_prediction"]["prediction"] in ("real", "fake")
    labels = [body["original_prediction"]["prediction"]] + [
        p["prediction"] for p in body["augmented_predictions"]
    ]
    assert all(label in ("real", "fake") for label in labels)
    assert body["consensus"] == max(("fake", "real"), key=labels.count)
    assert body["consensus_prediction"] == body["consensus"].upper()  # the old service's casing
    info = body["debug_info"]
    assert info == {
        "predictions_below_threshold": labels.count("fake"),
        "total_predictions": 7,
        "threshold": 0.5,
        "input_size": [64, 64],
    }
    assert 0.0 <= body["average_confidence"] <= 1.0 and body["processing_time"] > 0


def test_health_get_and_probes(app: TestClient) -> None:
    response = app.get("/api/v1/detect/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy" and body["model_loaded"] is True
    assert ISO_8601.match(body["timestamp"])
    assert app.get("/livez").status_code == 200 and app.get("/readyz").status_code == 200


def test_model_info_tells_the_truth(app: TestClient, served_tag: str) -> None:
    response = app.get("/api/v1/model/info")
    assert response.status_code == 200
    info = response.json()
    stored = bentoml.models.get(served_tag)
    model = load_classifier(Path(stored.path_of("model.keras")))
    assert info["tag"] == served_tag
    assert info["input_shape"] == [None, 64, 64, 3] and info["image_size"] == [64, 64]
    assert info["layers"] == [layer.name for layer in model.layers] and info["layer_count"] == len(
        model.layers
    )
    assert info["parameters"] == model.count_params()
    assert info["labels"] == ["fake", "real"] and info["output_meaning"] == "P(real)"
    assert info["threshold"] == 0.5 and info["normalization"] == "zero_one"
    assert info["metrics"] == {"roc_auc": 0.5, "note": "test"}
    assert info["source"]["format"] == "h5"


def test_sync_http_client_methods(server: ServerProcess, tmp_path: Path, slow_tag: str) -> None:
    image = tmp_path / ("a" * 246 + ".jpg")  # a name BentoML alone could not store (ENAMETOOLONG)
    image.write_bytes(image_bytes("JPEG", size=(640, 480), seed=5))  # a photo (noise: no face)
    crop = tmp_path / "crop.jpg"
    crop.write_bytes(image_bytes("JPEG", size=(200, 200), seed=5))  # a face crop: judged as one
    with bentoml.SyncHTTPClient(server.url) as client:
        detected = client.detect(file=image)
        with pytest.raises(bentoml.exceptions.UnprocessableEntity) as refused:
            client.detect(file=image, require_face=True)  # noise has no face
        augmented = client.detect_augmented(file=crop)
        health = client.health()
        info = client.model_info()
    assert detected["verdict"] == "no_face" and detected["model_tag"] == slow_tag
    assert '"error_code":"NO_FACE"' in str(refused.value).replace(" ", "")  # the legacy body
    assert len(augmented["augmented_predictions"]) == len(VARIANTS) - 1  # all but the original
    assert health["status"] == "healthy"
    assert info["tag"] == slow_tag


def test_python_client_routes_keep_the_upload_policy(server: ServerProcess) -> None:
    """What BentoML's own parser would take (a URL in the file field, an extra field) is refused
    on the client's routes too, in the legacy shape, before BentoML parses the body."""
    url_as_file = server.post("/detect", files={"file": (None, "http://127.0.0.1:1/secret.jpg")})
    assert (url_as_file.status_code, url_as_file.json()["error_code"]) == (400, "BAD_REQUEST")
    extra = server.post(
        "/detect", files={"file": ("a.jpg", image_bytes("JPEG"), "image/jpeg")}, data={"debug": "1"}
    )
    assert (extra.status_code, extra.json()["error_code"]) == (400, "BAD_REQUEST")
    as_json = server.post("/detect", json={"file": "http://127.0.0.1:1/secret.jpg"})
    assert (as_json.status_code, as_json.json()["error_code"]) == (400, "BAD_REQUEST")


def test_docs_and_openapi(app: TestClient) -> None:
    import serving

    page = app.get("/api/v1/docs")
    assert "swagger" in page.text.lower() and app.get("/").text == page.text
    assert not re.search(r"(src|href)=[\"']?https?:", page.text)  # nothing fetched from elsewhere
    assets = {asset: app.get(asset) for asset in re.findall(r"(?:src|href)=\"(/[^\"]+)\"", page.text)}
    assert all(answer.status_code == 200 for answer in assets.values()), assets
    # That it renders the spec (OpenAPI 3.1: Swagger UI 5): tests/browser/test_docs.py.
    assert re.findall(r"<script>", page.text) == []  # no inline script: the CSP can forbid it
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    # The old front end shows the docs in an iframe from its own origin: nothing may forbid it.
    assert "frame-ancestors" not in csp and "x-frame-options" not in page.headers
    spec = app.get("/docs.json").json()
    assert (
        spec["info"]["title"] == "Deepfake detection API" and spec["info"]["version"] == serving.__version__
    )
    assert "http" not in spec["info"]["description"]  # no badges or links to fetch
    assert list(spec["paths"])[:2] == ["/api/v1/detect/", "/api/v1/detect/augmented"]  # legacy first
    paths = spec["paths"]
    for path, method in [
        ("/api/v1/detect/", "post"),
        ("/api/v1/detect/augmented", "post"),
        ("/api/v1/detect/health", "get"),
        ("/api/v1/model/info", "get"),
    ]:
        assert method in paths[path], (path, method)
        assert paths[path][method]["responses"]["200"]["content"]["application/json"]["schema"]
    detect_body = paths["/api/v1/detect/"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in detect_body


def test_cors_is_open(app: TestClient) -> None:
    response = app.options(
        "/api/v1/detect/",
        headers={"Origin": "https://example.org", "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"


def _batch_histogram(server: ServerProcess) -> tuple[float, float]:
    """(batches, images) the model service has run, from its Prometheus histogram."""
    text = server.get("/metrics").text
    values = {}
    for name in ("count", "sum"):
        match = re.search(
            rf'^bentoml_service_adaptive_batch_size_{name}\{{[^}}]*method_name="predict"[^}}]*\}} (\S+)',
            text,
            re.M,
        )
        values[name] = float(match.group(1)) if match else 0.0
    return values["count"], values["sum"]


def test_concurrent_requests_are_merged_into_batches(server: ServerProcess) -> None:
    """The shared server runs the slow model: requests queue behind it and merge. The uploads
    are face crops (200 px): judged as they are, so the model, not detection, is the work."""
    batches_before, images_before = _batch_histogram(server)
    data = image_bytes("JPEG", size=(200, 200), seed=7)

    def one(_: int) -> int:
        return server.post("/api/v1/detect/", files={"file": ("x.jpg", data, "image/jpeg")}).status_code

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(one, range(96)))
    assert statuses == [200] * 96
    batches, images = _batch_histogram(server)
    assert images - images_before == 96
    print(f"\nbatches {batches - batches_before} for 96 requests")
    assert batches - batches_before < 96, "no two requests shared a batch"
