"""An ONNX graph of a Keras classifier built from this project's layers, for ONNX Runtime.

The int8 precision (modeling/optimized.py) quantizes this graph with ONNX Runtime's static QDQ
quantizer; the float graph itself is its reference and is never served. Written from the Keras
layers' own definitions (modeling/clip.py, modeling/head.py), layer by layer, so that every
operation has its float twin here:

    ClipPreprocess       -> Sub(mean), Mul(1 / std)
    Conv2D (patch)       -> Transpose to NCHW, Conv, Reshape + Transpose to (N, tokens, width)
    ClipEmbeddings       -> Concat(class token broadcast over the batch), Add(positions)
    LayerNormalization   -> LayerNormalization (opset 17)
    ClipBlock            -> LayerNormalization, MatMul + Add (qkv), Reshape/Transpose to heads,
                            MatMul + Softmax + MatMul (attention), MatMul + Add (out), residual,
                            LayerNormalization, MatMul + Add (fc1), x * Sigmoid(1.702 x),
                            MatMul + Add (fc2), residual
    ClassToken           -> Gather(0, axis 1)
    Concatenate          -> Concat
    BatchNormalization   -> (x - mean) * 1 / sqrt(var + eps) [* gamma + beta] (inference)
    Dense                -> MatMul + Add [+ Sigmoid]

Any other layer (FaceNet's Inception-ResNet, a Lambda) raises `ExportUnsupported`: the import
then skips int8 for that model with the reason (model_import.choose_precision).

The graph reads float32 (N, H, W, 3) already normalised as `ModelSpec.normalization` says, as
the Keras model does, and answers the Keras model's single sigmoid output (N, 1). Node names
carry the Keras layer's name (`block_3/fc2`), so that what the quantizer keeps in float can be
named by layer (modeling/optimized.INT8_FLOAT_NODES).
"""

from __future__ import annotations

from typing import Any

import numpy as np

OPSET = 17  # LayerNormalization


class ExportUnsupported(ValueError):
    """The model holds a layer this exporter does not write."""


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._names: set[str] = set()

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        if name in self._names:
            raise ValueError(f"duplicate initializer {name}")
        self._names.add(name)
        self.initializers.append(numpy_helper.from_array(np.array(value, order="C"), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attributes: Any) -> str:
        from onnx import helper

        output = f"{name}:out"
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attributes))
        return output


def _inputs(layer: Any) -> list[str]:
    """The names of the layers whose outputs `layer` reads."""
    tensors = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
    return [t._keras_history.operation.name for t in tensors]


def _f32(value: Any) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


def _i64(values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def export_onnx(model: Any, smoothing: dict[str, np.ndarray] | None = None) -> bytes:
    """The serialised ONNX model of `model` (float32). Raises ExportUnsupported.

    `smoothing`: per-channel factors `s` by linear layer (`block_3/qkv`, `/out`, `/fc1`, `/fc2`;
    see `smoothing_factors`): the layer's input is divided by `s` and its kernel's rows
    multiplied by it, the same function in exact arithmetic, with the activations' outlier
    channels moved into the weights, where int8 has a scale per channel (SmoothQuant)."""
    import onnx
    from onnx import TensorProto, helper

    from modeling import clip

    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ExportUnsupported("one input and one output expected")
    g = _Graph()
    out: dict[str, str] = {}
    input_name = model.layers[0].name
    _, height, width, channels = (int(d) if d is not None else None for d in model.inputs[0].shape)
    for layer in model.layers:
        kind = type(layer).__name__
        name = layer.name
        if kind == "InputLayer":
            out[name] = input_name
            continue
        sources = [out[s] for s in _inputs(layer)]
        x = sources[0]
        if isinstance(layer, clip.ClipPreprocess):
            mean = g.const(f"{name}/mean", _f32(layer.mean))
            scale = g.const(f"{name}/scale", 1.0 / _f32(layer.std))
            out[name] = g.node("Mul", [g.node("Sub", [x, mean], f"{name}/sub"), scale], f"{name}/mul")
        elif kind == "Conv2D":
            out[name] = _patch_conv(g, layer, x)
        elif isinstance(layer, clip.ClipEmbeddings):
            out[name] = _embeddings(g, layer, x)
        elif kind == "LayerNormalization":
            out[name] = _layer_norm(g, name, x, layer.gamma, layer.beta, layer.epsilon)
        elif isinstance(layer, clip.ClipBlock):
            out[name] = _block(g, layer, x, smoothing or {})
        elif isinstance(layer, clip.ClassToken):
            index = g.const(f"{name}/index", _i64([0]).reshape(()))
            out[name] = g.node("Gather", [x, index], name, axis=1)
        elif kind == "Concatenate":
            out[name] = g.node("Concat", sources, name, axis=int(layer.axis))
        elif kind == "BatchNormalization":
            out[name] = _batch_norm(g, layer, x)
        elif kind == "Dense":
            out[name] = _dense(g, layer, x)
        else:
            raise ExportUnsupported(f"no ONNX export for layer {name} ({kind})")
    final = out[model.layers[-1].name]
    graph = helper.make_graph(
        g.nodes,
        "classifier",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", height, width, channels])],
        [helper.make_tensor_value_info(final, TensorProto.FLOAT, ["batch", 1])],
        g.initializers,
    )
    onnx_model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="deepfake-detector"
    )
    onnx_model.ir_version = 8  # what onnxruntime reads for opset 17
    onnx.checker.check_model(onnx_model)
    return onnx_model.SerializeToString()


def _patch_conv(g: _Graph, layer: Any, x: str) -> str:
    """Conv2D with stride == kernel and no padding (CLIP's patch embedding), as tokens."""
    name = layer.name
    config = layer.get_config()
    if (
        config["padding"] != "valid"
        or tuple(config["strides"]) != tuple(config["kernel_size"])
        or config["activation"] != "linear"
    ):
        raise ExportUnsupported(f"{name}: only a patch embedding (stride = kernel, valid) is exported")
    kernel = _f32(layer.kernel)  # (kh, kw, in, out)
    weight = g.const(f"{name}/kernel", kernel.transpose(3, 2, 0, 1))  # OIHW
    inputs = [g.node("Transpose", [x], f"{name}/nchw", perm=[0, 3, 1, 2]), weight]
    if layer.use_bias:
        inputs.append(g.const(f"{name}/bias", _f32(layer.bias)))
    conv = g.node("Conv", inputs, name, strides=list(config["strides"]), kernel_shape=list(kernel.shape[:2]))
    flat = g.node("Reshape", [conv, g.const(f"{name}/flat", _i64([0, kernel.shape[3], -1]))], f"{name}/flat")
    return g.node("Transpose", [flat], f"{name}/tokens", perm=[0, 2, 1])  # (N, grid*grid, width)


def _embeddings(g: _Graph, layer: Any, x: str) -> str:
    name, width = layer.name, layer.width
    cls = g.const(f"{name}/class_embedding", _f32(layer.class_embedding).reshape(1, 1, width))
    positions = g.const(f"{name}/position_embedding", _f32(layer.position_embedding)[None])
    batch = g.node(
        "Slice",
        [
            g.node("Shape", [x], f"{name}/shape"),
            g.const(f"{name}/start", _i64([0])),
            g.const(f"{name}/end", _i64([1])),
        ],
        f"{name}/batch",
    )
    shape = g.node(
        "Concat", [batch, g.const(f"{name}/one_width", _i64([1, width]))], f"{name}/cls_shape", axis=0
    )
    tokens = g.node("Concat", [g.node("Expand", [cls, shape], f"{name}/cls"), x], f"{name}/tokens", axis=1)
    return g.node("Add", [tokens, positions], name)


def _layer_norm(g: _Graph, name: str, x: str, gamma: Any, beta: Any, epsilon: float) -> str:
    scale, bias = g.const(f"{name}/gamma", _f32(gamma)), g.const(f"{name}/beta", _f32(beta))
    return g.node("LayerNormalization", [x, scale, bias], name, axis=-1, epsilon=float(epsilon))


def _linear(g: _Graph, name: str, x: str, kernel: Any, bias: Any) -> str:
    product = g.node("MatMul", [x, g.const(f"{name}/kernel", _f32(kernel))], name)
    return g.node("Add", [product, g.const(f"{name}/bias", _f32(bias))], f"{name}/bias_add")


def _block(g: _Graph, layer: Any, x: str, smoothing: dict[str, np.ndarray]) -> str:
    name, width, heads = layer.name, layer.width, layer.heads
    depth = width // heads
    ones = np.ones(width, np.float32)
    s_qkv, s_out, s_fc1 = (_f32(smoothing.get(f"{name}/{part}", ones)) for part in ("qkv", "out", "fc1"))
    s_fc2 = _f32(smoothing.get(f"{name}/fc2", np.ones(layer.mlp, np.float32)))
    # qkv and fc1 read a layer norm: its gamma and beta take 1 / s. out reads the attention's
    # mix of v, linear in v's channels: v's kernel columns and bias take 1 / s.
    qkv_kernel = _f32(layer.qkv_kernel) * s_qkv[:, None]
    qkv_bias = _f32(layer.qkv_bias).copy()
    qkv_kernel[:, 2 * width :] /= s_out[None, :]
    qkv_bias[2 * width :] /= s_out
    gamma_1, beta_1 = _f32(layer.ln_1_gamma) / s_qkv, _f32(layer.ln_1_beta) / s_qkv
    gamma_2, beta_2 = _f32(layer.ln_2_gamma) / s_fc1, _f32(layer.ln_2_beta) / s_fc1
    h = _layer_norm(g, f"{name}/ln_1", x, gamma_1, beta_1, layer.epsilon)
    qkv = _linear(g, f"{name}/qkv", h, qkv_kernel, qkv_bias)
    split = g.node("Reshape", [qkv, g.const(f"{name}/heads", _i64([0, 0, 3, heads, depth]))], f"{name}/split")
    qkv = g.node("Transpose", [split], f"{name}/qkv_heads", perm=[2, 0, 3, 1, 4])  # (3, N, heads, T, depth)
    scale = g.const(f"{name}/scale", _f32(depth**-0.25))
    parts = []
    for index, part in enumerate("qkv"):
        taken = g.node(
            "Gather",
            [qkv, g.const(f"{name}/{part}_index", _i64([index]).reshape(()))],
            f"{name}/{part}",
            axis=0,
        )
        parts.append(g.node("Mul", [taken, scale], f"{name}/{part}_scaled") if part != "v" else taken)
    q, k, v = parts
    k_t = g.node("Transpose", [k], f"{name}/k_t", perm=[0, 1, 3, 2])
    weights = g.node("Softmax", [g.node("MatMul", [q, k_t], f"{name}/scores")], f"{name}/softmax", axis=-1)
    mixed = g.node(
        "Transpose", [g.node("MatMul", [weights, v], f"{name}/mix")], f"{name}/mixed", perm=[0, 2, 1, 3]
    )
    mixed = g.node("Reshape", [mixed, g.const(f"{name}/merge", _i64([0, 0, width]))], f"{name}/merged")
    out_kernel = _f32(layer.out_kernel) * s_out[:, None]
    x = g.node("Add", [x, _linear(g, f"{name}/out", mixed, out_kernel, layer.out_bias)], f"{name}/residual_1")
    h = _layer_norm(g, f"{name}/ln_2", x, gamma_2, beta_2, layer.epsilon)
    h = _linear(g, f"{name}/fc1", h, _f32(layer.fc1_kernel) * s_fc1[:, None], layer.fc1_bias)
    gate = g.node(
        "Sigmoid",
        [g.node("Mul", [h, g.const(f"{name}/gelu", _f32(1.702))], f"{name}/gelu_in")],
        f"{name}/gelu_gate",
    )
    h = g.node("Mul", [h, gate], f"{name}/gelu")
    fc2_kernel = _f32(layer.fc2_kernel)
    if f"{name}/fc2" in smoothing:  # nothing linear before it to fold 1 / s into: one Mul
        h = g.node("Mul", [h, g.const(f"{name}/fc2_smooth", 1.0 / s_fc2)], f"{name}/fc2_smooth")
        fc2_kernel = fc2_kernel * s_fc2[:, None]
    h = _linear(g, f"{name}/fc2", h, fc2_kernel, layer.fc2_bias)
    return g.node("Add", [x, h], name)


# The input of each of a block's linear layers, by the node that writes it, for `smoothing_factors`.
LINEAR_INPUTS = {"qkv": "ln_1", "out": "merged", "fc1": "ln_2", "fc2": "gelu"}


def activation_maxima(onnx_model: bytes, batches: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The largest |value| per channel of every block linear layer's input, over `batches`
    (float32 inputs of the graph), by layer (`block_3/fc1`): what `smoothing_factors` reads."""
    import onnx
    import onnxruntime as ort

    graph = onnx.load_from_string(onnx_model)
    wanted = {}
    for node in graph.graph.node:
        block, _, part = node.name.partition("/")
        for linear, source in LINEAR_INPUTS.items():
            if part == source and block.startswith("block_"):
                wanted[node.output[0]] = f"{block}/{linear}"
    graph.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in wanted)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    names = list(wanted)
    maxima: dict[str, np.ndarray] = {}
    for batch in batches:
        for output, value in zip(
            names, session.run(names, {session.get_inputs()[0].name: batch}), strict=True
        ):
            peak = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
            key = wanted[output]
            maxima[key] = np.maximum(maxima[key], peak) if key in maxima else peak
    return maxima


def smoothing_factors(
    model: Any,
    maxima: dict[str, np.ndarray],
    alpha: float = 0.5,
    parts: tuple[str, ...] = tuple(LINEAR_INPUTS),
) -> dict[str, np.ndarray]:
    """SmoothQuant's factors: s = max|x|^alpha / max|w|^(1 - alpha) per input channel, the
    activation's largest value from `maxima` and the weight's over the kernel's row."""
    from modeling import clip

    factors = {}
    for layer in model.layers:
        if not isinstance(layer, clip.ClipBlock):
            continue
        kernels = {
            "qkv": layer.qkv_kernel,
            "out": layer.out_kernel,
            "fc1": layer.fc1_kernel,
            "fc2": layer.fc2_kernel,
        }
        for part in parts:
            key = f"{layer.name}/{part}"
            weight = np.abs(_f32(kernels[part])).max(axis=1)
            s = np.power(np.maximum(maxima[key], 1e-5), alpha) / np.power(np.maximum(weight, 1e-5), 1 - alpha)
            factors[key] = np.clip(s, 1e-2, 1e2).astype(np.float32)
    return factors


def _batch_norm(g: _Graph, layer: Any, x: str) -> str:
    name = layer.name
    if int(layer.axis) not in (-1, len(layer.input.shape) - 1):
        raise ExportUnsupported(f"{name}: batch norm over another axis than the last")
    mean, variance = _f32(layer.moving_mean), _f32(layer.moving_variance)
    scale = 1.0 / np.sqrt(variance + np.float32(layer.epsilon))
    shift = -mean * scale
    if layer.scale:
        scale, shift = scale * _f32(layer.gamma), shift * _f32(layer.gamma)
    if layer.center:
        shift = shift + _f32(layer.beta)
    scaled = g.node("Mul", [x, g.const(f"{name}/scale", scale.astype(np.float32))], f"{name}/mul")
    return g.node("Add", [scaled, g.const(f"{name}/shift", shift.astype(np.float32))], name)


def _dense(g: _Graph, layer: Any, x: str) -> str:
    name = layer.name
    activation = layer.get_config()["activation"]
    if activation not in ("linear", "sigmoid"):
        raise ExportUnsupported(f"{name}: Dense with activation {activation}")
    bias = _f32(layer.bias) if layer.use_bias else np.zeros(layer.units, np.float32)
    y = _linear(g, name, x, layer.kernel, bias)
    return g.node("Sigmoid", [y], f"{name}/sigmoid") if activation == "sigmoid" else y
