"""Where the classifier looked: a Grad-CAM heatmap per face, for a whole batch at once.

    p_fake, maps = explain_batch(model, crops_uint8, spec)        # maps: (N, 8, 8) in [0, 1]
    grid = explainer_for(model, spec).grid                        # where the 8x8 cells sit
    png = heatmap_png(maps[i], 64, grid)                          # RGBA overlay of the crop
    square = CropRule.of(spec).square(face)                        # where it goes (faces.py)

* The map explains the decision toward "fake": the gradient of P(fake)'s logit (the negated
  logit for a P(real) model, `ModelSpec.labels`), taken before the output sigmoid so that a
  confident, saturated output still has a gradient. Per-face maps are scaled to a maximum of 1,
  so only their shape is comparable between faces, not their strength.
* One forward and one backward pass for the whole batch, in one `tf.function` with a fixed
  input signature. The model is split at `layer` and the tape watches only that layer's
  output, so the backward pass and the kept activations cover only the layers above it.
* Grad-CAM needs the differentiable float32 Keras model. `p_fake` is that model's own
  output, returned for convenience; a service that serves another model (e.g. an int8 TFLite
  file) takes its verdict from that one and uses only `maps` from here.
* `cell_grid` says where each cell of a layer sits on the input (its receptive field's
  centre): FaceNet's valid-padded convolutions put Block17's 8x8 cells at pixels 21..133 of
  the 160 px crop, not spread evenly over it, and `heatmap_png` draws the map there.

The CLIP classifier (`modeling.clip`): Grad-CAM on the patch tokens entering the deepest block
whose class token the head reads (the class token depends on the patch tokens only through that
block's attention), laid out on the patch grid (14x14 at 224 px, 16 px cells); see
`default_layer`.

FaceNet's defaults (Grad-CAM on Block17_10, 8x8; only positive evidence) come from the sanity
checks of `bench/explain.py sanity` on that model's 35 fixture faces. Block35 (17x17)
left 32 of 70 maps empty; Block8 (3x3) is too coarse to point at a part of a face and its
deletion effect was the weakest; Grad-CAM++ barely changed when the trained head was
re-initialised (map correlation 0.97) and its hottest cells were the ones whose masking
*raised* P(fake); gradient x activation shared much of its map between faces (0.35).
"""

from __future__ import annotations

import io
import weakref
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image

from modeling.spec import ModelSpec

Method = Literal["gradcam", "gradcam++", "grad_x_act"]
METHODS: tuple[Method, ...] = ("gradcam", "gradcam++", "grad_x_act")
# How a face's map is brought to [0, 1]: "positive" keeps only cells that raise P(fake)
# (ReLU, then / max: the Grad-CAM paper's); "minmax" ranks every cell (signed map, min to max).
Scaling = Literal["positive", "minmax"]
SCALINGS: tuple[Scaling, ...] = ("positive", "minmax")

# FaceNet (modeling/facenet.py) at 160 px: Block35 17x17x256, Block17 8x8x896, Block8 3x3x1792.
BLOCK35_LAYER = "Block35_5_Activation"
BLOCK17_LAYER = "Block17_10_Activation"
LAST_LAYER = "Block8_6_ScaleSum"  # the last block's output, which the head pools
DEFAULT_LAYER = BLOCK17_LAYER
DEFAULT_METHOD: Method = "gradcam"
DEFAULT_SCALING: Scaling = "positive"

# The overlay: inferno's colours (matplotlib's anchors at 0, .25, .5, .75, 1), opacity rising
# with the value so that cold cells leave the face visible.
_COLOURS = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64
)
MAX_ALPHA = 200


@dataclass(frozen=True)
class CellGrid:
    """Where a layer's cells lie on the model input, per axis (y, x): cell i's receptive field
    is centred on input pixel `offset + i * stride` (pixel centres at 0 .. size - 1)."""

    cells: tuple[int, int]
    offset: tuple[float, float]
    stride: tuple[float, float]
    input_size: tuple[int, int]

    @classmethod
    def uniform(cls, cells: tuple[int, int], input_size: tuple[int, int]) -> CellGrid:
        """Cells that tile the input evenly (what a plain image resize assumes)."""
        stride = tuple(size / n for size, n in zip(input_size, cells, strict=True))
        offset = tuple(s / 2.0 - 0.5 for s in stride)
        return cls(cells, offset, stride, input_size)  # type: ignore[arg-type]

    def cell_coordinates(self, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """For an image of `size` (height, width) covering the input, each pixel row's and
        column's position in cell units (fractional; may fall outside 0 .. cells - 1)."""
        coords = []
        for axis in (0, 1):
            n, full = size[axis], self.input_size[axis]
            centres = (np.arange(n) + 0.5) * full / n - 0.5  # in input pixels
            coords.append((centres - self.offset[axis]) / self.stride[axis])
        return coords[0], coords[1]


def resample(cell_map: np.ndarray, grid: CellGrid, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) cell map drawn at `size` (height, width) over the input: bilinear between
    cell centres, the edge cells' values held out to the border."""
    cell_map = np.asarray(cell_map, np.float32)
    if cell_map.shape != grid.cells:
        raise ValueError(f"map of shape {cell_map.shape} does not fit a grid of {grid.cells} cells")
    rows, cols = grid.cell_coordinates(size)

    def weights(coord: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        coord = np.clip(coord, 0.0, n - 1.0)
        low = np.minimum(np.floor(coord).astype(int), max(n - 2, 0))
        return low, np.minimum(low + 1, n - 1), (coord - low).astype(np.float32)

    r0, r1, fr = weights(rows, grid.cells[0])
    c0, c1, fc = weights(cols, grid.cells[1])
    top = cell_map[r0][:, c0] * (1 - fc) + cell_map[r0][:, c1] * fc
    bottom = cell_map[r1][:, c0] * (1 - fc) + cell_map[r1][:, c1] * fc
    return top * (1 - fr)[:, None] + bottom * fr[:, None]


def heatmap_png(cell_map: np.ndarray, size: int = 64, grid: CellGrid | None = None) -> bytes:
    """The map as a `size` x `size` RGBA PNG covering the whole crop square (lay it over the
    face at `preprocessing.faces.crop_square`'s box). Without `grid` the cells are spread
    evenly over the square."""
    cell_map = np.asarray(cell_map, np.float32)
    grid = grid or CellGrid.uniform(cell_map.shape, (size, size))  # type: ignore[arg-type]
    values = np.clip(resample(cell_map, grid, (size, size)), 0.0, 1.0)
    position = values * (len(_COLOURS) - 1)
    low = np.minimum(position.astype(int), len(_COLOURS) - 2)
    frac = (position - low)[..., None]
    rgb = _COLOURS[low] * (1 - frac) + _COLOURS[low + 1] * frac
    alpha = values[..., None] * MAX_ALPHA
    rgba = np.concatenate([rgb, alpha], axis=-1).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


# ---- where a layer's cells sit -------------------------------------------------------------

_WINDOW_LAYERS = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "MaxPooling2D", "AveragePooling2D")


def cell_grid(model: Any, layer: str) -> CellGrid:
    """Receptive-field centres of `layer`'s cells, followed through the model's graph from its
    input: every convolution and pooling shifts and strides them, padding as TensorFlow pads.

    A vision transformer's token layer (N, 1 + h*w, C), in a model with a `patch_embedding`
    convolution: its cells are the patch tokens, on that convolution's grid."""
    output = model.get_layer(layer).output
    if is_token_layer(model, layer):
        return cell_grid(model, PATCH_LAYER)
    if len(output.shape) != 4:
        raise ValueError(f"layer {layer!r} has output shape {output.shape}: not a (N, h, w, C) map")
    input_size = tuple(int(d) for d in model.inputs[0].shape[1:3])
    memo: dict[int, tuple[tuple[float, float], tuple[float, float]]] = {}

    def geometry(tensor: Any) -> tuple[tuple[float, float], tuple[float, float]]:
        key = id(tensor)
        if key not in memo:
            memo[key] = _geometry(tensor, geometry)
        return memo[key]

    offset, stride = geometry(output)
    return CellGrid(tuple(int(d) for d in output.shape[1:3]), offset, stride, input_size)  # type: ignore[arg-type]


def _geometry(tensor: Any, parent_geometry: Any) -> tuple[tuple[float, float], tuple[float, float]]:
    operation = tensor._keras_history.operation
    node = operation._inbound_nodes[tensor._keras_history.node_index]
    parents = [t for t in node.input_tensors if len(t.shape) == 4]
    if not parents:  # the model's input
        return (0.0, 0.0), (1.0, 1.0)
    geometries = {parent_geometry(t) for t in parents}
    if len(geometries) > 1:
        raise ValueError(f"layer {operation.name!r} joins maps with different cell grids")
    (offset, stride) = geometries.pop()
    kind = type(operation).__name__
    in_size, out_size = parents[0].shape[1:3], tensor.shape[1:3]
    if kind in _WINDOW_LAYERS:
        if getattr(operation, "data_format", "channels_last") != "channels_last":
            raise ValueError(f"layer {operation.name!r}: only channels_last maps are supported")
        kernel = getattr(operation, "kernel_size", None) or operation.pool_size
        strides = operation.strides
        dilation = getattr(operation, "dilation_rate", (1, 1))
        new_offset, new_stride = [], []
        for axis in (0, 1):
            k = (kernel[axis] - 1) * dilation[axis] + 1
            s = strides[axis]
            pad_before = 0
            if operation.padding == "same":
                pad_before = max((out_size[axis] - 1) * s + k - in_size[axis], 0) // 2
            new_offset.append(offset[axis] + stride[axis] * ((k - 1) / 2.0 - pad_before))
            new_stride.append(stride[axis] * s)
        return tuple(new_offset), tuple(new_stride)  # type: ignore[return-value]
    if kind == "ZeroPadding2D":
        (top, _), (left, _) = operation.padding
        return (offset[0] - stride[0] * top, offset[1] - stride[1] * left), stride
    if kind == "Cropping2D":
        (top, _), (left, _) = operation.cropping
        return (offset[0] + stride[0] * top, offset[1] + stride[1] * left), stride
    if tuple(in_size) != tuple(out_size):
        raise ValueError(f"layer {operation.name!r} ({kind}) changes the map size in a way not followed")
    return offset, stride


PATCH_LAYER = "patch_embedding"  # a vision transformer's patch convolution (modeling/clip.py)


def is_token_layer(model: Any, layer: str) -> bool:
    """A (N, 1 + h*w, C) token sequence (class token first) of a model whose patch convolution
    makes an h x w grid."""
    names = {existing.name for existing in model.layers}
    if PATCH_LAYER not in names or layer == PATCH_LAYER:
        return False
    shape = model.get_layer(layer).output.shape
    grid = model.get_layer(PATCH_LAYER).output.shape[1:3]
    return len(shape) == 3 and shape[1] == 1 + int(grid[0]) * int(grid[1])


def default_layer(model: Any) -> str:
    """The layer maps are taken at by default: FaceNet's Block17 (DEFAULT_LAYER), or, for the
    CLIP classifier, the tokens entering the deepest block whose class token the head reads
    (`modeling.clip.explain_layer`)."""
    names = {existing.name for existing in model.layers}
    if PATCH_LAYER in names:
        from modeling.clip import explain_layer

        return explain_layer(model)
    return DEFAULT_LAYER


# ---- the maps ------------------------------------------------------------------------------


class Explainer:
    """A model split at `layer`, with the traced forward + backward pass of a whole batch."""

    def __init__(
        self,
        model: Any,
        spec: ModelSpec,
        layer: str = DEFAULT_LAYER,
        method: Method = DEFAULT_METHOD,
        scaling: Scaling = DEFAULT_SCALING,
    ) -> None:
        import keras
        import tensorflow as tf

        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
        if scaling not in SCALINGS:
            raise ValueError(f"unknown scaling {scaling!r}; expected one of {SCALINGS}")
        self.spec, self.layer, self.method, self.scaling = spec, layer, method, scaling
        if layer not in {existing.name for existing in model.layers}:
            raise ValueError(
                f"the model has no layer {layer!r} (a SavedModel import has no layers to explain)"
            )
        self.grid = cell_grid(model, layer)
        self._tokens = is_token_layer(model, layer)
        cut = model.get_layer(layer).output
        last = model.outputs[0]._keras_history.operation
        # The logit: the input of a final Dense(sigmoid) layer, else the output's log-odds.
        self._dense_sigmoid = isinstance(last, keras.layers.Dense) and last.activation is (
            keras.activations.sigmoid
        )
        top_output = last.input if self._dense_sigmoid else model.outputs[0]
        self._last = last
        self._bottom = keras.Model(model.inputs[0], cut, name="explain_bottom")
        self._both = None
        try:
            self._top = keras.Model(cut, top_output, name="explain_top")
        except ValueError as exc:  # Keras: "output ... is not connected to inputs"
            if not self._tokens:
                raise ValueError(
                    f"layer {layer!r} is not a cut point of the model (a connection bypasses it): {exc}"
                ) from exc
            # A transformer head that also reads earlier blocks' class tokens: one pass that
            # returns the layer's tokens and the logit's input, the gradient taken between them.
            self._both = keras.Model(model.inputs[0], [cut, top_output], name="explain_both")
        # P(fake)'s logit is the logit itself for a P(fake) model, its negation for P(real).
        self._sign = 1.0 if spec.labels[1] == "fake" else -1.0
        height, width = spec.input_size
        signature = [tf.TensorSpec((None, height, width, 3), tf.float32)]
        self._run = tf.function(self._maps, input_signature=signature)

    def _logit(self, top: Any) -> Any:
        import tensorflow as tf

        if self._dense_sigmoid:
            z = tf.matmul(top, self._last.kernel)
            if self._last.use_bias:
                z = z + self._last.bias
            return tf.reshape(z, [-1])
        p = tf.clip_by_value(tf.reshape(tf.cast(top, tf.float32), [-1]), 1e-7, 1.0 - 1e-7)
        return tf.math.log(p) - tf.math.log1p(-p)

    def _maps(self, x: Any) -> tuple[Any, Any]:
        import tensorflow as tf

        if self._both is None:
            activations = self._bottom(x, training=False)
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(activations)
                logit = self._sign * self._logit(self._top(activations, training=False))
                # Each face's logit depends on its own activations only: one backward for the batch.
                total = tf.reduce_sum(logit)
        else:
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(x)  # records the pass from the input; the gradient stops at the layer
                activations, top = self._both(x, training=False)
                logit = self._sign * self._logit(top)
                total = tf.reduce_sum(logit)
        grads = tape.gradient(total, activations)
        a = tf.cast(activations, tf.float32)
        if self._tokens:  # the patch tokens (the class token dropped) laid out on their grid
            h, w = self.grid.cells
            a = tf.reshape(a[:, 1:, :], [-1, h, w, a.shape[-1]])
            grads = tf.reshape(tf.cast(grads, tf.float32)[:, 1:, :], [-1, h, w, a.shape[-1]])
        if self.method == "gradcam":
            weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)
            cam = tf.reduce_sum(weights * a, axis=-1)
        elif self.method == "gradcam++":
            # Chattopadhyay et al. 2018, with the exponential-score closed form.
            g2, g3 = grads**2, grads**3
            denom = 2.0 * g2 + tf.reduce_sum(a, axis=[1, 2], keepdims=True) * g3
            alpha = tf.math.divide_no_nan(g2, denom)
            weights = tf.reduce_sum(alpha * tf.nn.relu(grads), axis=[1, 2], keepdims=True)
            cam = tf.reduce_sum(weights * a, axis=-1)
        else:  # each cell's first-order share of the logit
            cam = tf.reduce_sum(grads * a, axis=-1)
        high = tf.reduce_max(cam, axis=[1, 2], keepdims=True)
        if self.scaling == "positive":
            return tf.sigmoid(logit), tf.math.divide_no_nan(tf.nn.relu(cam), tf.nn.relu(high))
        low = tf.reduce_min(cam, axis=[1, 2], keepdims=True)
        return tf.sigmoid(logit), tf.math.divide_no_nan(cam - low, high - low)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, H, W, 3) crops -> P(fake) (N,) and maps (N, h, w) float32 in [0, 1]."""
        from preprocessing.tensor import normalize

        images = np.asarray(images)
        expected = (*self.spec.input_size, 3)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(f"expected (N, {', '.join(map(str, expected))}) images, got {images.shape}")
        if len(images) == 0:
            return np.zeros(0, np.float32), np.zeros((0, *self.grid.cells), np.float32)
        p_fake, maps = self._run(normalize(images, self.spec.normalization))
        return np.asarray(p_fake, np.float32), np.asarray(maps, np.float32)


_EXPLAINERS: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], Explainer]] = weakref.WeakKeyDictionary()


def explainer_for(
    model: Any,
    spec: ModelSpec,
    layer: str | None = None,
    method: Method = DEFAULT_METHOD,
    scaling: Scaling = DEFAULT_SCALING,
) -> Explainer:
    """One `Explainer` per model, spec and choice of layer (default: `default_layer`), method and
    scaling, kept as long as the model lives."""
    layer = layer or default_layer(model)
    key = (spec.labels, spec.normalization, tuple(spec.input_size), layer, method, scaling)
    cache = _EXPLAINERS.setdefault(model, {})
    if key not in cache:
        cache[key] = Explainer(model, spec, layer, method, scaling)
    return cache[key]


def explain_batch(
    model: Any,
    images: np.ndarray,
    spec: ModelSpec,
    layer: str | None = None,
    method: Method = DEFAULT_METHOD,
    scaling: Scaling = DEFAULT_SCALING,
) -> tuple[np.ndarray, np.ndarray]:
    """P(fake) (N,) of the Keras `model` and one map per face (N, h, w) in [0, 1], from one
    forward and backward pass over the uint8 crops (N, H, W, 3). With "positive" scaling a
    face with no evidence toward "fake" at `layer` gets an all-zero map."""
    return explainer_for(model, spec, layer, method, scaling)(images)


# ---- between the services -----------------------------------------------------------------
OVERLAY_PX = 64  # the heatmap overlay's side, in pixels of its PNG


def explainer_for_model(model: Any, spec: ModelSpec) -> Explainer:
    """The default layer's explainer (`default_layer`), or (a model without it, e.g. an imported
    one) the last layer with a spatial output that cuts the model in two."""
    names = [default_layer(model)] + [
        layer.name for layer in reversed(model.layers) if len(layer.output.shape) == 4
    ]
    for name in dict.fromkeys(names):
        try:
            return explainer_for(model, spec, name)
        except ValueError:
            continue
    raise ValueError("the model has no spatial layer to explain its decision with")


def pack_maps(explainer: Explainer, maps: np.ndarray) -> np.ndarray:
    """(N, h, w) cell maps -> (N, 2 + S*S): the cell counts, then each map laid over the crop
    square at S = OVERLAY_PX (aligned with the cells' receptive fields), for the API process."""
    h, w = explainer.grid.cells
    laid = [resample(m, explainer.grid, (OVERLAY_PX, OVERLAY_PX)).reshape(-1) for m in maps]
    head = np.tile(np.array([h, w], np.float32), (len(maps), 1))
    body = np.stack(laid).astype(np.float32) if laid else np.zeros((0, OVERLAY_PX**2), np.float32)
    return np.concatenate([head, body], axis=1)


def unpack_maps(packed: np.ndarray) -> list[tuple[tuple[int, int], np.ndarray]]:
    """`pack_maps` undone: per face, its cell counts and its OVERLAY_PX-square map."""
    return [
        ((int(row[0]), int(row[1])), np.asarray(row[2:], np.float32).reshape(OVERLAY_PX, OVERLAY_PX))
        for row in np.asarray(packed)
    ]
