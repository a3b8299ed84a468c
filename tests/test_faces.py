"""Face detection and the face crop (`preprocessing.faces`) on real photos: no server."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from preprocessing.faces import (
    LANDMARK_NAMES,
    Face,
    FaceDetector,
    clip_box,
    crop_face,
    downscale,
    drop_nested,
    eye_angle,
)

FIXTURES = Path(__file__).parent / "fixtures"
EXPECTED: dict[str, int] = json.loads((FIXTURES / "faces.json").read_text())

# What MTCNN may report with the default settings, where it differs from the true count.
# faceapi_sample2: one face in profile and one looking down are missed (found 1 of 3 at
# max_side 640; the looking-down one scores 0.83-0.95 depending on scale).
ALLOWED: dict[str, tuple[int, int]] = {"faceapi_sample2.jpg": (1, 3)}


def load(name: str) -> Image.Image:
    """A fixture as the decoder hands it over: EXIF orientation applied, RGB."""
    with Image.open(FIXTURES / name) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def face(box: tuple[int, int, int, int], angle: float = 0.0) -> Face:
    x, y, w, h = box
    cx, cy, half = x + w / 2, y + h * 0.4, w / 4
    dx, dy = half * math.cos(math.radians(angle)), half * math.sin(math.radians(angle))
    landmarks = {name: (cx, cy + h / 4) for name in LANDMARK_NAMES}
    landmarks["left_eye"], landmarks["right_eye"] = (cx - dx, cy - dy), (cx + dx, cy + dy)
    return Face(box=box, score=1.0, landmarks=landmarks)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


# -- fixtures themselves ---------------------------------------------------------------------


def test_fixtures_are_small_and_documented() -> None:
    licences = (FIXTURES / "LICENSES.md").read_text()
    for name in EXPECTED:
        assert (FIXTURES / name).stat().st_size < 150_000, name
        assert f"`{name}`" in licences, name


# -- detection -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_face_count_on_fixture(detector: FaceDetector, name: str) -> None:
    low, high = ALLOWED.get(name, (EXPECTED[name], EXPECTED[name]))
    faces = detector.detect(load(name))
    assert low <= len(faces) <= high, [(f.box, round(f.score, 3)) for f in faces]


@pytest.mark.parametrize("name", [n for n, count in EXPECTED.items() if count == 0])
def test_no_face_even_at_a_low_score(detector: FaceDetector, name: str) -> None:
    assert detector.detect(load(name), min_score=0.5) == []


def test_exif_rotated_photo_needs_exif_transpose(detector: FaceDetector) -> None:
    with Image.open(FIXTURES / "astronaut_exif_orientation6.jpg") as stored:
        assert stored.getexif().get(0x0112) == 6
        raw = stored.convert("RGB")  # the pixels as stored, lying on their side
        upright = ImageOps.exif_transpose(stored).convert("RGB")
    assert detector.detect(raw, min_score=0.5) == []
    (found,) = detector.detect(upright)
    (reference,) = detector.detect(load("astronaut.jpg"))
    assert iou(found.box, reference.box) > 0.8


def test_faces_are_sorted_largest_first_and_capped(detector: FaceDetector) -> None:
    image = load("openpeople_p003_emotions.jpg")
    every = detector.detect(image)
    assert len(every) == 16
    assert [f.area for f in every] == sorted((f.area for f in every), reverse=True)
    assert detector.detect(image, max_faces=5) == every[:5]
    assert detector.detect(image, max_faces=0) == []


def test_boxes_and_landmarks_are_in_original_pixels(detector: FaceDetector) -> None:
    image = load("faceapi_sample5.jpg")  # 960 px wide
    full = detector.detect(image, max_side=960)
    small = detector.detect(image, max_side=480)
    assert len(full) == len(small) == 5
    for a in small:
        b = max(full, key=lambda f: iou(a.box, f.box))
        assert iou(a.box, b.box) > 0.6
        x, y, w, h = a.box
        for px, py in a.landmarks.values():
            assert x - 0.1 * w <= px <= x + 1.1 * w and y - 0.1 * h <= py <= y + 1.1 * h


def test_landmark_names_follow_the_image(detector: FaceDetector) -> None:
    (found,) = detector.detect(load("astronaut.jpg"))
    assert set(found.landmarks) == set(LANDMARK_NAMES)
    lm = found.landmarks
    # "left" is the image's left; the eyes are above the nose, the nose above the mouth.
    assert lm["left_eye"][0] < lm["right_eye"][0] and lm["mouth_left"][0] < lm["mouth_right"][0]
    assert max(lm["left_eye"][1], lm["right_eye"][1]) < lm["nose"][1] < lm["mouth_left"][1]


def test_numpy_rows_match_mtcnn_json_output(detector: FaceDetector) -> None:
    # We read mtcnn's undocumented numpy layout; its json output is the reference.
    image = load("astronaut.jpg")
    (ours,) = detector.detect(image)
    (theirs,) = detector._mtcnn.detect_faces(np.asarray(image), fit_to_image=False)
    assert np.allclose(ours.box, theirs["box"], atol=1)
    for name in LANDMARK_NAMES:
        assert np.allclose(ours.landmarks[name], theirs["keypoints"][name], atol=0.51)


def test_mtcnn_min_face_size_quirk_is_still_there(detector: FaceDetector) -> None:
    # Why faces.py never raises min_face_size above 20: mtcnn 1.0.0 then reports no faces at
    # all. If this starts failing, mtcnn fixed its pyramid and the restriction can go.
    image = np.asarray(load("astronaut.jpg"))
    assert len(detector._mtcnn.detect_faces(image, min_face_size=20)) == 1
    assert detector._mtcnn.detect_faces(image, min_face_size=40) == []


def test_other_modes_and_tiny_images(detector: FaceDetector) -> None:
    gray = load("astronaut.jpg").convert("L")
    assert len(detector.detect(gray)) == 1
    assert detector.detect(Image.new("RGB", (5, 3))) == []
    assert detector.detect(Image.new("RGB", (1, 1))) == []


def test_one_detector_serves_several_threads(detector: FaceDetector) -> None:
    names = sorted(EXPECTED)
    images = [load(name) for name in names]
    expected = [detector.detect(image) for image in images]
    results: dict[int, list[Face]] = {}
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            results[index] = detector.detect(images[index % len(images)])
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2 * len(images))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for index, got in results.items():
        want = expected[index % len(images)]
        assert [f.box for f in got] == [f.box for f in want]
        assert np.allclose([f.score for f in got], [f.score for f in want], atol=1e-5)


# -- crop ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "box",
    [
        (-40, -30, 100, 120),  # past the top-left corner
        (450, 440, 100, 120),  # past the bottom-right corner
        (-300, 100, 100, 100),  # entirely outside
        (200, 200, 1, 1),  # tiny
        (10, 500, 3, 4),  # tiny, at the border
        (-100, -100, 900, 1000),  # larger than the image
        (0, 0, 512, 512),  # the whole image
    ],
)
@pytest.mark.parametrize("align", [False, True])
def test_crop_is_always_the_requested_size(box: tuple[int, int, int, int], align: bool) -> None:
    image = load("astronaut.jpg")
    for size in [(160, 160), (224, 224), (96, 64)]:
        crop = crop_face(image, face(box, angle=12.0), size=size, align=align)
        assert crop.size == size and crop.mode == "RGB"


def test_crop_pads_outside_the_image_with_black() -> None:
    image = Image.new("RGB", (200, 200), (200, 180, 160))
    crop = np.asarray(crop_face(image, face((-50, -50, 100, 100)), margin=0.0))
    assert (crop[:40, :40] == 0).all()  # the part above-left of the image
    assert (crop[120:, 120:] == (200, 180, 160)).all()


def test_crop_geometry_and_margin() -> None:
    # A white 100x100 square on black: with margin m it fills 1 / (1 + m) of the crop.
    image = Image.new("RGB", (400, 400))
    image.paste((255, 255, 255), (150, 150, 250, 250))
    for margin, expected_fill in [(0.0, 160), (0.25, 128), (1.0, 80)]:
        crop = np.asarray(crop_face(image, face((150, 150, 100, 100)), margin=margin))
        white = np.argwhere(crop[:, :, 0] > 127)
        height, width = white.max(axis=0) - white.min(axis=0) + 1
        assert abs(height - expected_fill) <= 2 and abs(width - expected_fill) <= 2
        assert abs(white.mean(axis=0) - 79.5).max() <= 1.5  # centred


def test_crop_is_deterministic(detector: FaceDetector) -> None:
    image = load("faceapi_sample4.jpg")
    for found in detector.detect(image):
        for align in (False, True):
            first = crop_face(image, found, align=align).tobytes()
            assert crop_face(image.copy(), found, align=align).tobytes() == first


def test_crop_of_a_detected_face_contains_that_face(detector: FaceDetector) -> None:
    image = load("faceapi_sample5.jpg")
    for found in detector.detect(image):
        crop = crop_face(image, found)
        (again,) = detector.detect(crop, min_score=0.8)
        x, y, w, h = again.box
        assert abs(x + w / 2 - 80) < 16 and abs(y + h / 2 - 80) < 16
        assert 100 < max(w, h) < 150  # the box fills about 1 / 1.25 of 160 px


def test_alignment_levels_the_eyes(detector: FaceDetector) -> None:
    tilted = load("astronaut.jpg").rotate(25, resample=Image.Resampling.BICUBIC, expand=True)
    (found,) = detector.detect(tilted)
    assert abs(eye_angle(found)) > 15
    (plain,) = detector.detect(crop_face(tilted, found), min_score=0.5)
    (aligned,) = detector.detect(crop_face(tilted, found, align=True), min_score=0.5)
    assert abs(eye_angle(plain)) > 15
    assert abs(eye_angle(aligned)) < 6


def test_a_box_on_part_of_a_face_is_dropped(detector: FaceDetector) -> None:
    # At this size MTCNN also returns a 31x34 box on one woman's forehead (score 0.93).
    image = load("faceapi_sample5.jpg").resize((642, 467), Image.Resampling.BICUBIC)
    assert len(detector.detect(image, max_side=1024)) == 5
    big, inside, beside = face((100, 100, 60, 80)), face((110, 95, 30, 34)), face((170, 100, 50, 70))
    assert drop_nested([big, inside, beside]) == [big, beside]


def test_helpers() -> None:
    assert clip_box((-10, 5, 30, 500), (100, 200)) == (0, 5, 20, 195)
    assert clip_box((150, 5, 30, 50), (100, 200)) == (100, 5, 0, 50)
    small, scale = downscale(Image.new("RGB", (1920, 1080)), 640)
    assert small.size == (640, 360) and scale == pytest.approx(1 / 3)
    same, one = downscale(Image.new("RGB", (300, 200)), 640)
    assert same.size == (300, 200) and one == 1.0
    with pytest.raises(ValueError):
        crop_face(Image.new("RGB", (10, 10)), face((0, 0, 5, 5)), margin=-0.1)


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / float(aw * ah + bw * bh - w * h)


def test_compiled_networks_find_the_same_faces(detector: FaceDetector) -> None:
    eager = FaceDetector(compiled=False)
    for name in sorted(EXPECTED):
        image = ImageOps.exif_transpose(Image.open(FIXTURES / name)).convert("RGB")
        fast, slow = detector.detect(image), eager.detect(image)
        assert [f.box for f in fast] == [f.box for f in slow], name
        assert [f.score for f in fast] == pytest.approx([f.score for f in slow], abs=1e-4)
