"""Tests only: a float ONNX graph made from the int8 CLIP file, to run with onnxruntime.

Every quantized matrix product of the file (DynamicQuantizeLinear on the activation,
MatMulInteger, a Cast and two scale multiplications) becomes one float `MatMul` on the
weight dequantized as `(q - zero_point) * scale`; everything else stays as it is. The
reference then differs from `modeling.clip`'s Keras model by float rounding only, not by the
int8 activations the shipped file computes with. Needs `onnx` (requirements-dev.txt).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def float_onnx_model(path: Path) -> Any:
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    nodes = list(graph.node)
    producer = {output: node for node in nodes for output in node.output}
    dropped: set[int] = set()
    replaced: dict[int, Any] = {}
    weights = []
    for node in nodes:
        if node.op_type != "MatMulInteger":
            continue
        prefix = node.name.removesuffix("/MatMul_quant")
        scales = next(n for n in nodes if n.name == f"{prefix}/MatMul_quant_scales_mul")
        cast = next(n for n in nodes if n.op_type == "Cast" and node.output[0] in n.input)
        rescale = next(n for n in nodes if n.op_type == "Mul" and cast.output[0] in n.input)
        activation = producer[node.input[0]].input[0]  # the float input of DynamicQuantizeLinear
        q = numpy_helper.to_array(initializers.pop(node.input[1])).astype(np.float32)
        zero = numpy_helper.to_array(initializers.pop(node.input[3])).astype(np.float32)
        scale = numpy_helper.to_array(initializers.pop(scales.input[1])).astype(np.float32)
        name = f"{prefix}/float_weight"
        weights.append(numpy_helper.from_array(((q - zero) * scale).astype(np.float32), name))
        replaced[id(rescale)] = helper.make_node(
            "MatMul", [activation, name], [rescale.output[0]], name=prefix
        )
        dropped |= {id(node), id(scales), id(cast)}
    kept = [replaced.get(id(n), n) for n in nodes if id(n) not in dropped]
    used = {name for n in kept for name in n.input}
    kept = [n for n in kept if n.op_type != "DynamicQuantizeLinear" or any(o in used for o in n.output)]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend([*initializers.values(), *weights])
    return model


def onnx_session(model: Any) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    return onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def onnx_embeddings(session: Any, images: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    """[0, 1] RGB (N, 224, 224, 3) -> the graph's `image_embeds` (CLIP's normalisation, NCHW)."""
    x = (np.asarray(images, np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return session.run(["image_embeds"], {"pixel_values": x.transpose(0, 3, 1, 2)})[0]
