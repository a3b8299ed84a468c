"""Every fault of the client's making answers a 4xx in the legacy error shape, and the server
keeps serving; a model that cannot serve answers 503, never a crash."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import bentoml
import httpx
import pytest

from tests.helpers import ServerProcess, image_bytes, png_bomb

JPEG = image_bytes("JPEG", size=(200, 150))
DETECT = "/api/v1/detect/"


def _multipart(boundary: str, parts: list[tuple[str, str | None, bytes]]) -> bytes:
    body = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else ""
        )
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


# (case, request kwargs for POST /api/v1/detect/, expected status, expected error_code)
CASES = [
    ("no body", {}, 400, "MISSING_FILE"),
    ("wrong field name", {"files": {"image": ("a.jpg", JPEG, "image/jpeg")}}, 400, "MISSING_FILE"),
    ("empty file", {"files": {"file": ("a.jpg", b"", "image/jpeg")}}, 400, "EMPTY_FILE"),
    (
        "truncated jpeg",
        {"files": {"file": ("a.jpg", JPEG[: len(JPEG) // 2], "image/jpeg")}},
        400,
        "INVALID_IMAGE",
    ),
    ("text file", {"files": {"file": ("a.txt", b"hello", "text/plain")}}, 415, "UNSUPPORTED_FORMAT"),
    (
        "html as jpeg",
        {"files": {"file": ("a.jpg", b"<html><body>x</body></html>", "image/jpeg")}},
        415,
        "UNSUPPORTED_FORMAT",
    ),
    ("tiff", {"files": {"file": ("a.tif", image_bytes("TIFF"), "image/tiff")}}, 415, "UNSUPPORTED_FORMAT"),
    ("pixel bomb", {"files": {"file": ("a.png", png_bomb(), "image/png")}}, 413, "IMAGE_TOO_LARGE"),
    (
        "over the byte limit",
        {"files": {"file": ("a.jpg", b"\xff" * (11 * 1024 * 1024), "image/jpeg")}},
        413,
        "FILE_TOO_LARGE",
    ),
    (
        "two files in one field",
        {"files": [("file", ("a.jpg", JPEG, "image/jpeg")), ("file", ("b.jpg", JPEG, "image/jpeg"))]},
        400,
        "BAD_REQUEST",
    ),
    (
        "extra field",
        {"files": {"file": ("a.jpg", JPEG, "image/jpeg"), "other": ("b.jpg", JPEG, "image/jpeg")}},
        400,
        "BAD_REQUEST",
    ),
    (
        "url instead of a file",
        {"data": {"file": "http://127.0.0.1:1/secret.jpg"}, "files": {"dummy": ("", b"", "")}},
        400,
        "BAD_REQUEST",
    ),
    (
        "malformed multipart",
        {"content": b"garbage", "headers": {"content-type": "multipart/form-data; boundary=zz"}},
        400,
        "BAD_REQUEST",
    ),
    (
        "multipart without boundary",
        {"content": b"garbage", "headers": {"content-type": "multipart/form-data"}},
        400,
        "BAD_REQUEST",
    ),
    ("raw jpeg body", {"content": JPEG, "headers": {"content-type": "image/jpeg"}}, 400, "BAD_REQUEST"),
    ("json body", {"json": {"file": "/etc/passwd"}}, 400, "BAD_REQUEST"),
]


@pytest.mark.parametrize(("case", "kwargs", "status", "code"), CASES, ids=[c[0] for c in CASES])
def test_client_faults_answer_4xx_in_the_legacy_shape(
    server: ServerProcess, case: str, kwargs: dict, status: int, code: str
) -> None:
    if case == "url instead of a file":  # a text part named `file`, no file part
        kwargs = {
            "content": _multipart("b0undary", [("file", None, b"http://127.0.0.1:1/secret.jpg")]),
            "headers": {"content-type": "multipart/form-data; boundary=b0undary"},
        }
    response = server.post(DETECT, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_code"] == code and body["error"] and body["timestamp"]
    assert server.get("/api/v1/detect/health").status_code == 200  # still serving


def test_routes_and_methods(server: ServerProcess) -> None:
    for method, path, status, code in [
        ("GET", DETECT, 405, "METHOD_NOT_ALLOWED"),
        ("PUT", "/api/v1/detect/augmented", 405, "METHOD_NOT_ALLOWED"),
        ("GET", "/api/v2/nothing", 404, "NOT_FOUND"),
    ]:
        response = httpx.request(method, f"{server.url}{path}")
        assert response.status_code == status
        assert response.json()["error_code"] == code


def test_augmented_route_refuses_the_same_way(server: ServerProcess) -> None:
    response = server.post("/api/v1/detect/augmented", files={"file": ("a.txt", b"hello", "text/plain")})
    assert (response.status_code, response.json()["error_code"]) == (415, "UNSUPPORTED_FORMAT")


def test_chunked_upload_over_the_limit(server: ServerProcess) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'--zz\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
        for _ in range(12):
            yield b"\xff" * (1024 * 1024)

    response = server.post(
        DETECT, content=chunks(), headers={"content-type": "multipart/form-data; boundary=zz"}
    )
    assert (response.status_code, response.json()["error_code"]) == (413, "FILE_TOO_LARGE")


def test_a_model_that_cannot_serve_answers_503(served_tag: str) -> None:
    """A corrupt model file: the server starts, says why, is not ready, and answers 503."""
    stored = bentoml.models.get(served_tag)
    with bentoml.models.create("broken_model", metadata=stored.info.metadata) as broken:
        pass
    Path(bentoml.models.get(broken.tag).path_of("model.keras")).write_bytes(b"corrupt")
    with ServerProcess(env={"DEEPFAKE_MODEL_TAG": str(broken.tag)}, ready_path="/livez") as server:
        deadline = time.monotonic() + 60
        while "failed to load" not in (health := server.get("/api/v1/detect/health")).text:
            assert time.monotonic() < deadline, health.text
            time.sleep(0.5)
        startup_log = server.log(tail=10**6)
        assert "failed to load" in startup_log and "Traceback" not in startup_log  # one clear line
        assert server.get("/readyz").status_code == 503
        assert health.status_code == 503
        assert health.json()["status"] == "unhealthy" and health.json()["model_loaded"] is False
        assert "failed to load" in health.json()["error"]
        detect = server.post(DETECT, files={"file": ("a.jpg", JPEG, "image/jpeg")})
        assert (detect.status_code, detect.json()["error_code"]) == (503, "MODEL_UNAVAILABLE")
        assert detect.headers["retry-after"]
        assert server.get("/api/v1/model/info").status_code == 503, server.log()


def test_calls_the_model_service_sheds_answer_503_service_overloaded(tmp_path: Path) -> None:
    """Past max_latency_ms the model service drops queued calls (a bare 503); that is
    overload, not a broken model: SERVICE_OVERLOADED with Retry-After, and the server goes on."""
    from model_import import import_model
    from tests.helpers import build_slow_classifier

    path = tmp_path / "shed.keras"
    build_slow_classifier().save(path)
    env = {
        "DEEPFAKE_MODEL_TAG": import_model(path, name="shed_classifier"),
        "DEEPFAKE_FACE_DETECTION": "false",
        "DEEPFAKE_MAX_LATENCY_MS": "1",  # any call that has to queue is shed
    }
    with ServerProcess(env=env) as server:

        def one(_: int) -> httpx.Response:
            return server.post(DETECT, files={"file": ("a.jpg", JPEG, "image/jpeg")})

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(one, range(48)))
        shed = [a for a in answers if a.status_code == 503]
        assert shed, "nothing was shed: the test did not overload the model"
        assert {a.json()["error_code"] for a in shed} == {"SERVICE_OVERLOADED"}
        assert all(a.headers["retry-after"] for a in shed)
        assert {a.status_code for a in answers} <= {200, 503}
        assert one(0).status_code == 200  # alone again: served
