"""End to end: a real `bentoml serve` of a legacy-style FaceNet .h5 file imported by
model_import.py, called over plain HTTP at the legacy paths and through SyncHTTPClient."""

from __future__ import annotations

import concurrent.futures
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import bentoml
import httpx
import numpy as np
import pytest

from modeling.loading import load_classifier
from modeling.spec import ModelSpec
from preprocessing.decode import DecodeLimits
from preprocessing.faces import FaceDetector
from preprocessing.tensor import normalize
from serving.pipeline import DetectionPipeline
from tests.helpers import FIXTURES, ServerProcess, build_slow_classifier, image_bytes

ISO_8601 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


@pytest.fixture(scope="module")
def in_process(served_tag: str) -> Callable[[bytes], np.ndarray]:
    """What the served model must answer: the same pipeline and stored model, run here."""
    stored = bentoml.models.get(served_tag)
    spec = ModelSpec.from_metadata(stored.info.metadata)
    model = load_classifier(Path(stored.path_of("model.keras")))
    pipeline = DetectionPipeline(spec, served_tag, DecodeLimits(), predict=None, detector=FaceDetector())  # type: ignore[arg-type]

    def raw_outputs(data: bytes) -> np.ndarray:
        crops = np.stack(pipeline.prepare(data).crops)
        return np.asarray(model.predict_on_batch(normalize(crops, spec.normalization))).reshape(-1)

    return raw_outputs


@pytest.mark.parametrize("path", ["/api/v1/detect/", "/api/v1/detect"])
def test_detect_answers_the_legacy_body(
    server: ServerProcess, served_tag: str, path: str, in_process: Callable[[bytes], np.ndarray]
) -> None:
    data = image_bytes("JPEG", size=(300, 200), seed=3)
    response = server.post(path, files={"file": ("face.jpg", data, "image/jpeg")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["prediction"] in ("real", "fake")
    assert isinstance(body["processing_time"], float) and body["processing_time"] >= 0
    assert body["debug_info"]["input_shape"] == [1, 64, 64, 3]
    raw = body["debug_info"]["raw_prediction"]
    assert raw == pytest.approx(in_process(data)[0], abs=1e-5)  # the real model answered
    assert body["face_detected"] is False and body["faces"] == []  # noise: the whole image is judged
    # legacy model: raw output is P(real); confidence is the probability of the predicted label
    assert body["confidence"] == pytest.approx(raw if body["prediction"] == "real" else 1 - raw)
    assert body["fake_probability"] == pytest.approx(1 - raw)
    assert body["model_tag"] == served_tag


def test_detect_on_a_real_face_photo(server: ServerProcess) -> None:
    face = FIXTURES / "astronaut_face.png"
    response = server.post("/api/v1/detect/", files={"file": (face.name, face.read_bytes(), "image/png")})
    assert response.status_code == 200 and 0.5 <= response.json()["confidence"] <= 1.0


def test_detect_augmented(server: ServerProcess) -> None:
    response = server.post(
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
    assert all(label in ("real", "fake") for label in labels)  # one casing everywhere
    assert body["consensus_prediction"] == max(("fake", "real"), key=labels.count)
    info = body["debug_info"]
    assert info == {
        "predictions_below_threshold": labels.count("fake"),
        "total_predictions": 7,
        "threshold": 0.5,
        "input_size": [64, 64],
    }
    assert 0.0 <= body["average_confidence"] <= 1.0 and body["processing_time"] > 0


def test_health_get_and_probes(server: ServerProcess) -> None:
    response = server.get("/api/v1/detect/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy" and body["model_loaded"] is True
    assert ISO_8601.match(body["timestamp"])
    assert server.get("/livez").status_code == 200 and server.get("/readyz").status_code == 200


def test_model_info_tells_the_truth(server: ServerProcess, served_tag: str) -> None:
    response = server.get("/api/v1/model/info")
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


def test_sync_http_client_methods(server: ServerProcess, tmp_path: Path, served_tag: str) -> None:
    image = tmp_path / "face.jpg"
    image.write_bytes(image_bytes("JPEG", seed=5))
    with bentoml.SyncHTTPClient(server.url) as client:
        detected = client.detect(file=image)
        augmented = client.detect_augmented(file=image)
        health = client.health()
        info = client.model_info()
    assert detected["prediction"] in ("real", "fake") and detected["model_tag"] == served_tag
    assert len(augmented["augmented_predictions"]) == 6
    assert health["status"] == "healthy"
    assert info["tag"] == served_tag


def test_docs_and_openapi(server: ServerProcess) -> None:
    assert "swagger" in server.get("/api/v1/docs").text.lower()
    assert server.get("/").status_code == 200
    spec = server.get("/docs.json").json()
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


def test_cors_is_open(server: ServerProcess) -> None:
    response = httpx.options(
        f"{server.url}/api/v1/detect/",
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


@pytest.fixture(scope="module")
def slow_model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Greedy batching merges requests only while the model is busy: with the tiny test model
    the model idles between requests, so this server runs a slower one (faces off)."""
    from model_import import import_model

    path = tmp_path_factory.mktemp("slow") / "slow.keras"
    build_slow_classifier().save(path)
    tag = import_model(path, name="slow_classifier")
    with ServerProcess(env={"DEEPFAKE_MODEL_TAG": tag, "DEEPFAKE_FACE_DETECTION": "false"}) as running:
        yield running


def test_concurrent_requests_are_merged_into_batches(slow_model_server: ServerProcess) -> None:
    server = slow_model_server
    batches_before, images_before = _batch_histogram(server)
    data = image_bytes("JPEG", size=(640, 480), seed=7)

    def one(_: int) -> int:
        return server.post("/api/v1/detect/", files={"file": ("x.jpg", data, "image/jpeg")}).status_code

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(one, range(96)))
    assert statuses == [200] * 96
    batches, images = _batch_histogram(server)
    assert images - images_before == 96
    print(f"\nbatches {batches - batches_before} for 96 requests")
    assert batches - batches_before < 96, "no two requests shared a batch"
