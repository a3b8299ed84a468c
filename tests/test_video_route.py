"""The video routes end to end in the service (its ASGI app in process, with the real decoder
processes and a small real model): the answer's fields, the tracks, every limit and hostile
file as a legacy 4xx, the job flow, and the Python client on the shared server."""

from __future__ import annotations

import time
from pathlib import Path

import bentoml
import pytest
from starlette.testclient import TestClient

from tests.helpers import ServerProcess
from tests.videos import clip

VIDEO = "/api/v1/detect/video"
JOBS = "/api/v1/detect/video/jobs"


def post(app: TestClient, name: str, path: str = VIDEO, **fields: str):  # noqa: ANN201
    return app.post(path, files={"file": (name, clip(name).read_bytes(), "video/mp4")}, data=fields)


def test_two_faces_are_two_tracks(app: TestClient) -> None:
    response = post(app, "two_faces.mp4", frames="12")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["video"]["frames_sampled"] == 12 and body["video"]["codec"] == "h264"
    assert 1 <= body["video"]["full_face_detections"] < 12  # the faces tracked in between
    assert body["face_detected"] is True and body["track_count"] == 2 == len(body["tracks"])
    for track in body["tracks"]:
        assert track["frame_count"] >= 10 and track["counted"]
        assert track["fake_probability"] == pytest.approx(
            sum(f["fake_probability"] for f in track["frames"]) / len(track["frames"])
        )
        assert track["verdict"] in ("likely_fake", "uncertain", "likely_real")
    deciding = max(body["tracks"], key=lambda t: t["fake_probability"])
    assert (body["fake_probability"] >= 0.5) == (body["prediction"] == "fake")
    assert body["fake_probability"] <= deciding["fake_probability"] + 1e-9  # the bar for two faces
    assert body["confidence"] >= 0.5 and set(body["timings"]) == {"decode_s", "faces_s", "model_s", "total_s"}
    assert 0 < body["timings"]["model_s"] <= body["timings"]["total_s"]  # overlapping batches once


def test_a_video_without_a_face_says_so(app: TestClient) -> None:
    body = post(app, "no_face.mp4", frames="8").json()
    assert (body["verdict"], body["face_detected"]) == ("no_face", False)
    assert not any(track["counted"] for track in body["tracks"])  # a stray box is listed, not judged
    assert (body["prediction"], body["confidence"], body["fake_probability"]) == ("real", 0.5, None)


def test_a_rotated_phone_video_is_judged_upright(app: TestClient) -> None:
    body = post(app, "rotated.mp4", frames="6").json()
    assert body["video"]["rotation"] in (90, 270) and body["video"]["width"] < body["video"]["height"]


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("truncated.mp4", 400, "INVALID_VIDEO"),
        ("corrupt.mp4", 400, "INVALID_VIDEO"),
        ("huge_frame.webm", 413, "VIDEO_TOO_LARGE"),
        ("ten_hours.mp4", 413, "VIDEO_TOO_LONG"),
        ("audio_only.mp4", 415, "UNSUPPORTED_FORMAT"),
        ("text.mp4", 415, "UNSUPPORTED_FORMAT"),
        ("image.mp4", 415, "UNSUPPORTED_FORMAT"),
        ("playlist.m3u8", 415, "UNSUPPORTED_FORMAT"),
        ("empty.mp4", 400, "EMPTY_FILE"),
    ],
)
def test_hostile_videos_answer_4xx_in_the_legacy_shape(
    app: TestClient, name: str, status: int, code: str
) -> None:
    response = post(app, name)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_code"] == code and body["error"] and body["timestamp"]
    assert app.get("/livez").status_code == 200


def test_video_form_fields_are_checked(app: TestClient) -> None:
    assert post(app, "moving.mp4", frames="many").json()["error_code"] == "BAD_REQUEST"
    assert post(app, "moving.mp4", fps="0").json()["error_code"] == "BAD_REQUEST"
    capped = post(app, "moving.mp4", frames="100000").json()
    assert capped["video"]["frames_sampled"] <= 300  # capped, and by the frames the clip has


def test_a_job_runs_reports_progress_and_expires_its_upload(app: TestClient) -> None:
    submitted = post(app, "pasted.mp4", JOBS, frames="10")
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()["job_id"]
    deadline = time.monotonic() + 120
    while (status := app.get(f"{JOBS}/{job}").json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert status["state"] == "done" and status["frames_done"] == status["frames_total"] == 10
    assert status["result"]["video"]["frames_sampled"] == 10 and status["expires_at"]
    assert app.delete(f"{JOBS}/{job}").json()["state"] == "done"  # finished: left as it is
    missing = app.get(f"{JOBS}/AAAAAAAAAAAAAAAAAAAAAA")
    assert (missing.status_code, missing.json()["error_code"]) == (404, "NOT_FOUND")


def test_a_job_can_be_cancelled(app: TestClient) -> None:
    job = post(app, "moving.webm", JOBS, frames="30").json()["job_id"]
    cancelled = app.delete(f"{JOBS}/{job}").json()
    assert cancelled["state"] in ("cancelled", "done")  # a short clip may beat the cancel
    assert app.get(f"{JOBS}/{job}").json()["state"] == cancelled["state"]


def test_the_python_client_sends_a_video(server: ServerProcess, tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    video.write_bytes(clip("two_faces.mp4").read_bytes())
    with bentoml.SyncHTTPClient(server.url) as client:
        result = client.detect_video(file=video, frames=8)
    assert result["video"]["frames_sampled"] == 8 and result["track_count"] >= 1


def test_explain_gives_each_track_a_heatmap(app: TestClient) -> None:
    response = post(app, "two_faces.mp4", frames="6", explain="true")
    body = response.json()
    assert response.status_code == 200, body
    for track in body["tracks"]:
        assert track["heatmap"]["png"] and track["heatmap_time"] in [f["time"] for f in track["frames"]]


def test_full_face_detection_on_every_frame_is_a_setting(served_tag: str) -> None:
    from tests.inprocess import service_app

    every = {"DEEPFAKE_VIDEO_FULL_EVERY": "1", "DEEPFAKE_FACE_TILES": "always"}
    with service_app({"DEEPFAKE_MODEL_TAG": served_tag, **every}) as app:
        body = post(app, "two_faces.mp4", frames="6").json()
    assert body["video"]["full_face_detections"] == body["video"]["frames_sampled"] == 6
    assert body["track_count"] == 2
