"""Face detection (both detectors, one interface) and the face crop, on real photos: no server."""

from __future__ import annotations

import importlib
import inspect
import json
import math
import pkgutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from preprocessing import blazeface
from preprocessing.detectors import DETECTORS, load_detector
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
EXPECTED: dict[str, dict] = json.loads((FIXTURES / "faces.json").read_text())
NO_FACE = sorted(name for name, entry in EXPECTED.items() if entry["faces"] == 0)
ROOT = Path(__file__).resolve().parents[1]
SAME_FACE_IOU = 0.5  # a found box is the expected one (boxes of one face by one detector: > 0.9)


def load(name: str) -> Image.Image:
    """A fixture as the decoder hands it over: EXIF orientation applied, RGB."""
    with Image.open(FIXTURES / name) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / float(aw * ah + bw * bh - w * h)


def pairs(
    found: list[tuple], expected: list[tuple], threshold: float = SAME_FACE_IOU
) -> list[tuple[int, int]]:
    """(found index, expected index) of boxes that are one face, best overlap first."""
    scored = sorted(
        ((iou(f, e), i, j) for i, f in enumerate(found) for j, e in enumerate(expected)), reverse=True
    )
    used_f, used_e, out = set(), set(), []
    for overlap, i, j in scored:
        if overlap >= threshold and i not in used_f and j not in used_e:
            used_f.add(i), used_e.add(j), out.append((i, j))
    return out


def face(box: tuple[int, int, int, int], angle: float = 0.0) -> Face:
    x, y, w, h = box
    cx, cy, half = x + w / 2, y + h * 0.4, w / 4
    dx, dy = half * math.cos(math.radians(angle)), half * math.sin(math.radians(angle))
    landmarks = {name: (cx, cy + h / 4) for name in LANDMARK_NAMES}
    landmarks["left_eye"], landmarks["right_eye"] = (cx - dx, cy - dy), (cx + dx, cy + dy)
    return Face(box=box, score=1.0, landmarks=landmarks)


@pytest.fixture(scope="module")
def mtcnn() -> FaceDetector:
    return load_detector("mtcnn")


@pytest.fixture(scope="module")
def bf() -> FaceDetector:
    return load_detector("blazeface")


@pytest.fixture(scope="module", params=DETECTORS)
def detector(request: pytest.FixtureRequest, mtcnn: FaceDetector, bf: FaceDetector) -> FaceDetector:
    return {"mtcnn": mtcnn, "blazeface": bf}[request.param]


@pytest.fixture(scope="module")
def found(mtcnn: FaceDetector, bf: FaceDetector) -> dict[str, dict[str, list[Face]]]:
    """Each detector's faces on each fixture, found once for the module."""
    images = {name: load(name) for name in EXPECTED}
    return {d.name: {n: d.detect(image) for n, image in images.items()} for d in (mtcnn, bf)}


# -- fixtures and their expected faces -------------------------------------------------------


def test_fixtures_are_small_and_documented() -> None:
    licences = (FIXTURES / "LICENSES.md").read_text()
    for name in EXPECTED:
        assert (FIXTURES / name).stat().st_size < 150_000, name
        assert f"`{name}`" in licences, name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_expected_faces_are_the_counted_faces(name: str) -> None:
    # faces.json: `faces` counted by eye; each detector's expected boxes. Every face MTCNN
    # finds, BlazeFace must find too, and together they find every counted face.
    entry = EXPECTED[name]
    mtcnn_boxes, blazeface_boxes = [tuple(b) for b in entry["mtcnn"]], [tuple(b) for b in entry["blazeface"]]
    common = pairs(mtcnn_boxes, blazeface_boxes)
    assert len(common) == len(mtcnn_boxes)
    assert len(blazeface_boxes) + len(mtcnn_boxes) - len(common) == entry["faces"]


# -- detection, both detectors ---------------------------------------------------------------


def test_detectors_by_name(mtcnn: FaceDetector, bf: FaceDetector) -> None:
    assert DETECTORS == ("blazeface", "mtcnn") and (bf.name, mtcnn.name) == DETECTORS
    with pytest.raises(ValueError, match="unknown face detector"):
        load_detector("haar")


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("detector_name", DETECTORS)
def test_finds_the_expected_faces(found: dict, detector_name: str, name: str) -> None:
    boxes = [f.box for f in found[detector_name][name]]
    expected = [tuple(b) for b in EXPECTED[name][detector_name]]
    assert len(pairs(boxes, expected)) == len(expected) == len(boxes), boxes


def test_blazeface_finds_every_face_mtcnn_finds(found: dict) -> None:
    for name in EXPECTED:
        theirs = [f.box for f in found["mtcnn"][name]]
        ours = [f.box for f in found["blazeface"][name]]
        assert len(pairs(theirs, ours)) == len(theirs), name


def test_blazeface_boxes_are_mapped_to_mtcnns(found: dict) -> None:
    # The classifier was trained on crop_face(MTCNN box): BlazeFace's mapped boxes must give
    # nearly the same crops. Measured on these 38 faces (bench/face_detection.py --fit): IoU
    # median 0.86, min 0.54 (a tilted head: MTCNN's box is square there), crops 20 of 255 apart
    # on average; the raw boxes gave 0.72, 0.55 and 36.
    ious, diffs = [], []
    for name in EXPECTED:
        image = load(name)
        theirs, ours = found["mtcnn"][name], found["blazeface"][name]
        for i, j in pairs([f.box for f in theirs], [f.box for f in ours], threshold=0.3):
            ious.append(iou(theirs[i].box, ours[j].box))
            a = np.asarray(crop_face(image, theirs[i]), np.int16)
            b = np.asarray(crop_face(image, ours[j]), np.int16)
            diffs.append(np.abs(a - b).mean())
    # every face both detectors find in the fixtures (faces.json) is paired
    assert len(ious) >= sum(min(len(e["mtcnn"]), len(e["blazeface"])) for e in EXPECTED.values())
    assert np.median(ious) > 0.8 and min(ious) > 0.5
    assert np.mean(diffs) < 25


@pytest.mark.parametrize("name", NO_FACE)
def test_no_face_even_at_a_low_score(detector: FaceDetector, name: str) -> None:
    assert detector.detect(load(name), min_score=0.5) == []  # type: ignore[call-arg]


def test_exif_rotated_photo_needs_exif_transpose(detector: FaceDetector) -> None:
    with Image.open(FIXTURES / "astronaut_exif_orientation6.jpg") as stored:
        assert stored.getexif().get(0x0112) == 6
        raw = stored.convert("RGB")  # the pixels as stored, lying on their side
        upright = ImageOps.exif_transpose(stored).convert("RGB")
    (found,) = detector.detect(upright)
    (reference,) = detector.detect(load("astronaut.jpg"))
    assert iou(found.box, reference.box) > 0.8
    # MTCNN finds no face lying on its side; BlazeFace does, scoring it much lower (0.63 against
    # 0.94 upright), and its crop would lie on its side: the transpose is needed for both.
    sideways = detector.detect(raw, min_score=0.5)  # type: ignore[call-arg]
    assert sideways == [] if detector.name == "mtcnn" else all(f.score < found.score - 0.2 for f in sideways)


def test_faces_are_sorted_largest_first_and_capped(detector: FaceDetector) -> None:
    image = load("openpeople_p003_emotions.jpg")
    every = detector.detect(image)
    assert len(every) == len(EXPECTED["openpeople_p003_emotions.jpg"][detector.name])
    assert [f.area for f in every] == sorted((f.area for f in every), reverse=True)
    assert detector.detect(image, max_faces=5) == every[:5]
    assert detector.detect(image, max_faces=0) == []


def test_detect_many_is_detect_for_each(detector: FaceDetector) -> None:
    names = ("faceapi_sample4.jpg", "coffee_no_face.jpg", "astronaut.jpg")
    images = [*(load(name) for name in names), Image.new("RGB", (3, 2))]
    many = detector.detect_many(images, max_faces=3)
    single = [detector.detect(image, max_faces=3) for image in images]
    assert [[f.box for f in faces] for faces in many] == [[f.box for f in faces] for faces in single]
    listed = [len(EXPECTED[name][detector.name]) for name in names]  # faces.json
    assert [len(faces) for faces in many] == [*(min(n, 3) for n in listed), 0]
    assert detector.detect_many([]) == []


def test_boxes_and_landmarks_are_in_original_pixels(detector: FaceDetector) -> None:
    image = load("faceapi_sample5.jpg")  # 960 px wide
    full = detector.detect(image)
    half = detector.detect(image.resize((480, 350), Image.Resampling.BICUBIC))
    assert len(full) == len(half) == len(EXPECTED["faceapi_sample5.jpg"][detector.name])
    for small in half:
        doubled = tuple(v * 2 for v in small.box)
        assert max(iou(doubled, f.box) for f in full) > 0.6
        x, y, w, h = small.box
        for px, py in small.landmarks.values():
            assert x - 0.1 * w <= px <= x + 1.1 * w and y - 0.1 * h <= py <= y + 1.1 * h


def test_landmark_names_follow_the_image(detector: FaceDetector) -> None:
    (found,) = detector.detect(load("astronaut.jpg"))
    lm = found.landmarks
    # BlazeFace has no mouth corners; mtcnn has all five
    assert set(lm) == (set(LANDMARK_NAMES) if detector.name == "mtcnn" else set(blazeface.KEYPOINT_NAMES))
    # "left" is the image's left; the eyes are above the nose
    assert lm["left_eye"][0] < lm["right_eye"][0]
    assert max(lm["left_eye"][1], lm["right_eye"][1]) < lm["nose"][1]


def test_blazeface_landmarks_are_mtcnns(found: dict) -> None:
    # the keypoint order of BlazeFace's output, checked against MTCNN's landmarks
    for name in ("astronaut.jpg", "faceapi_sample5.jpg", "openpeople_p003_emotions.jpg"):
        theirs, ours = found["mtcnn"][name], found["blazeface"][name]
        for i, j in pairs([f.box for f in theirs], [f.box for f in ours]):
            for key in blazeface.KEYPOINT_NAMES:
                distance = np.hypot(*np.subtract(theirs[i].landmarks[key], ours[j].landmarks[key]))
                assert distance < 0.15 * theirs[i].box[2], (name, key)


def test_grey_tiny_and_huge_images(detector: FaceDetector) -> None:
    astronaut = load("astronaut.jpg")
    (reference,) = detector.detect(astronaut)
    assert len(detector.detect(astronaut.convert("L"))) == 1
    for size in [(0, 0), (1, 1), (5, 3), (3000, 2)]:
        assert detector.detect(Image.new("RGB", size)) == []
    huge = astronaut.resize((4096, 4096), Image.Resampling.BILINEAR)  # 16.8 MP
    (big,) = detector.detect(huge)
    assert iou(tuple(v / 8 for v in big.box), reference.box) > 0.8


def test_one_detector_serves_several_threads(detector: FaceDetector) -> None:
    names = ["faceapi_sample4.jpg", "faceapi_sample5.jpg", "astronaut.jpg", "chelsea_cat_no_face.jpg"]
    images = [load(name) for name in names]
    expected = [detector.detect(image) for image in images]
    results: dict[int, list[Face]] = {}
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            results[index] = detector.detect(images[index % len(images)])
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3 * len(images))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(results) == 3 * len(images)
    for index, got in results.items():
        want = expected[index % len(images)]
        assert [f.box for f in got] == [f.box for f in want]
        assert np.allclose([f.score for f in got], [f.score for f in want], atol=1e-5)


BLAZEFACE_ONLY = """
import sys
from PIL import Image
from preprocessing.detectors import load_detector
detector = load_detector("blazeface")
detector.detect(Image.open("tests/fixtures/astronaut.jpg").convert("RGB"))
print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "mtcnn", "tf_keras")))
"""


def test_blazeface_imports_no_tensorflow() -> None:
    # In a fresh process: this one has TensorFlow loaded already (MTCNN).
    result = subprocess.run(
        [sys.executable, "-c", BLAZEFACE_ONLY], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


# -- MTCNN: compiled, without patching mtcnn --------------------------------------------------


def _mtcnn_snapshot() -> dict[str, dict[str, int]]:
    """id() of every attribute of every mtcnn module and of every class they define."""
    import mtcnn

    for info in pkgutil.walk_packages(mtcnn.__path__, "mtcnn."):
        importlib.import_module(info.name)
    snapshot: dict[str, dict[str, int]] = {}
    for name, module in sorted(sys.modules.items()):
        if name != "mtcnn" and not name.startswith("mtcnn."):
            continue
        snapshot[name] = {key: id(value) for key, value in vars(module).items()}
        for value in vars(module).values():
            if inspect.isclass(value) and value.__module__.startswith("mtcnn"):
                snapshot[f"{value.__module__}.{value.__qualname__}"] = {
                    k: id(v) for k, v in vars(value).items()
                }
    return snapshot


def test_mtcnn_detector_patches_nothing_of_mtcnn(monkeypatch: pytest.MonkeyPatch) -> None:
    from mtcnn import MTCNN
    from mtcnn.stages import StagePNet

    before = _mtcnn_snapshot()
    sys.modules.pop("preprocessing.mtcnn_detector", None)  # import it again inside the window
    detector_module = importlib.import_module("preprocessing.mtcnn_detector")
    built = detector_module.MtcnnDetector()
    assert len(built.detect(load("faceapi_sample4.jpg"))) == len(EXPECTED["faceapi_sample4.jpg"]["mtcnn"])
    assert _mtcnn_snapshot() == before
    # the compiled networks live in our stage instances only: mtcnn's own stages stay eager
    assert all(type(stage).__module__ == "preprocessing.mtcnn_detector" for stage in built.mtcnn.stages)
    plain = MTCNN()
    assert all(type(stage).__module__.startswith("mtcnn.") for stage in plain.stages)
    assert all(type(stage.model).__module__.startswith("mtcnn.network") for stage in plain.stages)
    # and the snapshot does see a patch (so that the comparison above can fail)
    monkeypatch.setattr(StagePNet, "__call__", lambda self, **kwargs: None)
    assert _mtcnn_snapshot() != before


def test_mtcnn_numpy_rows_match_its_json_output(mtcnn: FaceDetector) -> None:
    # We read mtcnn's undocumented numpy layout; its json output is the reference.
    image = load("astronaut.jpg")
    (ours,) = mtcnn.detect(image)
    (theirs,) = mtcnn.mtcnn.detect_faces(np.asarray(image), fit_to_image=False)  # type: ignore[attr-defined]
    assert np.allclose(ours.box, theirs["box"], atol=1)
    for name in LANDMARK_NAMES:
        assert np.allclose(ours.landmarks[name], theirs["keypoints"][name], atol=0.51)


def test_mtcnn_min_face_size_quirk_is_still_there(mtcnn: FaceDetector) -> None:
    # Why MTCNN_PARAMS never raises min_face_size above 20: mtcnn 1.0.0 then reports no faces
    # at all. If this starts failing, mtcnn fixed its pyramid and the restriction can go.
    image = np.asarray(load("astronaut.jpg"))
    assert len(mtcnn.mtcnn.detect_faces(image, min_face_size=20)) == 1  # type: ignore[attr-defined]
    assert mtcnn.mtcnn.detect_faces(image, min_face_size=40) == []  # type: ignore[attr-defined]


def test_mtcnn_compiled_networks_find_the_same_faces(mtcnn: FaceDetector, found: dict) -> None:
    from preprocessing.mtcnn_detector import MtcnnDetector

    eager = MtcnnDetector(compiled=False)  # ~0.15 s a photo: a few photos of all kinds
    for name in (
        "faceapi_sample2.jpg",
        "faceapi_sample5.jpg",
        "openpeople_p003_emotions.jpg",
        "coffee_no_face.jpg",
    ):
        slow = eager.detect(load(name))
        fast = found["mtcnn"][name]
        assert [f.box for f in fast] == [f.box for f in slow], name
        assert [f.score for f in fast] == pytest.approx([f.score for f in slow], abs=1e-4)


def test_mtcnn_drops_a_box_on_part_of_a_face(mtcnn: FaceDetector) -> None:
    # At this size MTCNN also returns a 31x34 box on one woman's forehead (score 0.93).
    image = load("faceapi_sample5.jpg").resize((642, 467), Image.Resampling.BICUBIC)
    faces = len(EXPECTED["faceapi_sample5.jpg"]["mtcnn"])
    assert len(mtcnn.detect(image, max_side=1024)) == faces  # type: ignore[call-arg]
    big, inside, beside = face((100, 100, 60, 80)), face((110, 95, 30, 34)), face((170, 100, 50, 70))
    assert drop_nested([big, inside, beside]) == [big, beside]


# -- BlazeFace's parts ------------------------------------------------------------------------


def test_blazeface_anchors_follow_mediapipes_layout() -> None:
    short, full = blazeface.SHORT_RANGE.anchors, blazeface.FULL_RANGE.anchors
    assert short.shape == (16 * 16 * 2 + 8 * 8 * 6, 2) and full.shape == (48 * 48, 2)
    # stride 8: 16 x 16 cells, two anchors each, row by row; then stride 16 with six each
    assert np.allclose(short[:4], [[0.5 / 16, 0.5 / 16]] * 2 + [[1.5 / 16, 0.5 / 16]] * 2)
    assert np.allclose(short[512:518], [[0.5 / 8, 0.5 / 8]] * 6)
    assert np.allclose(full[[0, 1, 48]], [[0.5 / 48, 0.5 / 48], [1.5 / 48, 0.5 / 48], [0.5 / 48, 1.5 / 48]])


def test_blazeface_decode_and_weighted_nms() -> None:
    model, anchors = blazeface.FULL_RANGE, blazeface.FULL_RANGE.anchors
    raw_boxes = np.zeros((len(anchors), 16), np.float32)
    raw_scores = np.full(len(anchors), -10.0, np.float32)
    # anchor 100 (cell 4, 2): centre shifted by (+9.6, -4.8) px, a 38.4 x 48 px box, one keypoint
    raw_boxes[100, :4] = [9.6, -4.8, 38.4, 48.0]
    raw_boxes[100, 4:6] = [1.92, 0.0]
    raw_scores[100] = 2.0
    # anchor 101: the same face, a little to the right, lower score
    raw_boxes[101, :4] = [5.6, -4.8, 38.4, 48.0]
    raw_scores[101] = 0.0
    found = blazeface.decode(raw_boxes, raw_scores, model, anchors, min_score=0.4)
    assert len(found) == 2 and found.scores[0] == pytest.approx(1 / (1 + math.exp(-2.0)))
    cx, cy = anchors[100] + np.array([9.6, -4.8]) / 192
    assert np.allclose(found.boxes[0], [cx - 0.1, cy - 0.125, cx + 0.1, cy + 0.125], atol=1e-6)
    assert np.allclose(found.keypoints[0, 0], anchors[100] + [0.01, 0.0], atol=1e-6)
    merged = blazeface.weighted_nms(found)
    assert len(merged) == 1 and merged.scores[0] == found.scores[0]
    weights = found.scores / found.scores.sum()
    assert np.allclose(merged.boxes[0], weights @ found.boxes, atol=1e-6)
    assert len(blazeface.decode(raw_boxes, raw_scores, model, anchors, min_score=0.9)) == 0


def test_blazeface_tiles_cover_the_photo_with_overlap() -> None:
    assert blazeface.tile_origins(100, 192, 64) == [0]
    assert blazeface.tile_origins(576, 192, 64) == [0, 128, 256, 384]
    for length in range(193, 1200, 37):
        starts = blazeface.tile_origins(length, 192, 64)
        assert starts[0] == 0 and starts[-1] + 192 == length
        assert all(b - a <= 192 - 64 for a, b in zip(starts, starts[1:], strict=False))
    assert blazeface.level_sizes((4000, 3000), (192, 576)) == [(192, 144), (576, 432)]
    assert blazeface.level_sizes((300, 200), (192, 576)) == [(192, 128), (300, 200)]  # not upscaled
    assert blazeface.level_sizes((150, 100), (192, 576)) == [(192, 128)]
    windows, tiles = blazeface.search_windows(Image.new("RGB", (1024, 768), (255, 0, 0)), (192, 576), 192, 64)
    assert len(windows) == len(tiles) == 1 + 4 * 3
    assert windows[0].scale == pytest.approx(0.1875) and (tiles[0, 144:] == 0).all()  # letterboxed
    assert (tiles[1:, :, :, 0] == 255).all() and windows[1].inner_edges == (False, False, True, True)


def test_blazeface_zoom_windows_pad_outside_the_photo() -> None:
    image = Image.new("RGB", (100, 80), (0, 200, 0))
    windows, tiles = blazeface.zoom_windows(image, np.array([[0.0, 0.0, 20.0, 20.0]]), 5.0, 192)
    (window,) = windows
    assert (window.x, window.y, window.scale) == (-40.0, -40.0, pytest.approx(1.92))
    assert (tiles[0, :70] == 0).all() and (tiles[0, 80:, 80:, 1] == 200).all()


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


def test_crop_is_deterministic(found: dict) -> None:
    image = load("faceapi_sample4.jpg")
    for detected in found["mtcnn"]["faceapi_sample4.jpg"] + found["blazeface"]["faceapi_sample4.jpg"]:
        for align in (False, True):
            first = crop_face(image, detected, align=align).tobytes()
            assert crop_face(image.copy(), detected, align=align).tobytes() == first


@pytest.mark.parametrize("detector_name", DETECTORS)
def test_crop_of_a_detected_face_frames_it_as_mtcnn_does(
    mtcnn: FaceDetector, found: dict, detector_name: str
) -> None:
    # MTCNN judges both detectors' crops: the face in the middle, its box 1 / 1.25 of 160 px.
    image = load("faceapi_sample5.jpg")
    for detected in found[detector_name]["faceapi_sample5.jpg"]:
        (again,) = mtcnn.detect(crop_face(image, detected), min_score=0.8)  # type: ignore[call-arg]
        x, y, w, h = again.box
        assert abs(x + w / 2 - 80) < 16 and abs(y + h / 2 - 80) < 16
        assert 100 < max(w, h) < 150


def test_alignment_levels_the_eyes(mtcnn: FaceDetector, detector: FaceDetector) -> None:
    tilted = load("astronaut.jpg").rotate(25, resample=Image.Resampling.BICUBIC, expand=True)
    (detected,) = detector.detect(tilted)
    assert abs(eye_angle(detected)) > 15
    (plain,) = mtcnn.detect(crop_face(tilted, detected), min_score=0.5)  # type: ignore[call-arg]
    (aligned,) = mtcnn.detect(crop_face(tilted, detected, align=True), min_score=0.5)  # type: ignore[call-arg]
    assert abs(eye_angle(plain)) > 15
    assert abs(eye_angle(aligned)) < 6


def test_helpers() -> None:
    assert clip_box((-10, 5, 30, 500), (100, 200)) == (0, 5, 20, 195)
    assert clip_box((150, 5, 30, 50), (100, 200)) == (100, 5, 0, 50)
    small, scale = downscale(Image.new("RGB", (1920, 1080)), 640)
    assert small.size == (640, 360) and scale == pytest.approx(1 / 3)
    same, one = downscale(Image.new("RGB", (300, 200)), 640)
    assert same.size == (300, 200) and one == 1.0
    with pytest.raises(ValueError):
        crop_face(Image.new("RGB", (10, 10)), face((0, 0, 5, 5)), margin=-0.1)
