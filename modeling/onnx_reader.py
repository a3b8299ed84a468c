"""A small reader of ONNX files: the graph's nodes and its initializers (weights), no `onnx`.

An ONNX file is one protobuf message (`ModelProto`). The serving install has no `onnx` or
`onnxruntime` package, and the CLIP encoder (`modeling.clip`) needs only two things from its
file: every initializer (name, dims, data type, raw bytes) and, to tell which weight feeds
which operation, each node's op type, inputs and outputs. Both are read here from the
protobuf wire format directly (varints and length-delimited fields; fields we do not need
are skipped by their wire type).

Field numbers (onnx.proto3): ModelProto.graph = 7; GraphProto.node = 1, .initializer = 5;
NodeProto.input = 1, .output = 2, .name = 3, .op_type = 4, .attribute = 5;
TensorProto.dims = 1, .data_type = 2, .float_data = 4, .int32_data = 5, .int64_data = 7,
.name = 8, .raw_data = 9, .double_data = 10, .data_location = 14;
AttributeProto.name = 1, .f = 2, .i = 3, .s = 4, .t = 5, .floats = 7, .ints = 8, .type = 20.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# TensorProto.DataType -> NumPy dtype (the ones weights come in).
DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),  # FLOAT
    2: np.dtype("u1"),  # UINT8
    3: np.dtype("i1"),  # INT8
    5: np.dtype("<i2"),  # INT16
    6: np.dtype("<i4"),  # INT32
    7: np.dtype("<i8"),  # INT64
    9: np.dtype("?"),  # BOOL
    10: np.dtype("<f2"),  # FLOAT16
    11: np.dtype("<f8"),  # DOUBLE
}


class OnnxFormatError(ValueError):
    """The bytes are not the ONNX (protobuf) message this reader expects."""


@dataclass(frozen=True)
class Node:
    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OnnxGraph:
    nodes: tuple[Node, ...]
    initializers: dict[str, np.ndarray]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def producer(self, tensor: str) -> Node | None:
        """The node that outputs `tensor` (None for an initializer or a graph input)."""
        for node in self.nodes:
            if tensor in node.outputs:
                return node
        return None

    def consumers(self, tensor: str) -> list[Node]:
        return [node for node in self.nodes if tensor in node.inputs]


def read_onnx(path: Path) -> OnnxGraph:
    """Nodes and initializers of an ONNX file (weights stored inside the file)."""
    return parse_model(Path(path).read_bytes())


def parse_model(data: bytes) -> OnnxGraph:
    graphs = [value for number, value in _fields(memoryview(data)) if number == 7]
    if len(graphs) != 1:
        raise OnnxFormatError(f"expected one graph in the model, found {len(graphs)}")
    return _graph(graphs[0])


def _graph(data: memoryview) -> OnnxGraph:
    nodes, initializers, inputs, outputs = [], {}, [], []
    for number, value in _fields(data):
        if number == 1:
            nodes.append(_node(value))
        elif number == 5:
            name, array = _tensor(value)
            initializers[name] = array
        elif number == 11:  # ValueInfoProto: name is field 1
            inputs.append(_string_field(value, 1))
        elif number == 12:
            outputs.append(_string_field(value, 1))
    return OnnxGraph(tuple(nodes), initializers, tuple(inputs), tuple(outputs))


def _node(data: memoryview) -> Node:
    inputs, outputs, name, op_type, attributes = [], [], "", "", {}
    for number, value in _fields(data):
        if number == 1:
            inputs.append(bytes(value).decode())
        elif number == 2:
            outputs.append(bytes(value).decode())
        elif number == 3:
            name = bytes(value).decode()
        elif number == 4:
            op_type = bytes(value).decode()
        elif number == 5:
            key, attribute = _attribute(value)
            attributes[key] = attribute
    return Node(name, op_type, tuple(inputs), tuple(outputs), attributes)


def _attribute(data: memoryview) -> tuple[str, Any]:
    name, value, floats, ints = "", None, [], []
    for number, item in _fields(data):
        if number == 1:
            name = bytes(item).decode()
        elif number == 2:
            value = struct.unpack("<f", struct.pack("<I", item))[0]
        elif number == 3:
            value = _signed(item)
        elif number == 4:
            value = bytes(item)
        elif number == 5:
            value = _tensor(item)[1]
        elif number == 7:
            floats += _packed_floats(item) if isinstance(item, memoryview) else [_as_float(item)]
        elif number == 8:
            ints += (
                [_signed(v) for v in _packed_varints(item)]
                if isinstance(item, memoryview)
                else [_signed(item)]
            )
    if value is None and (floats or ints):
        value = floats or ints
    return name, value


def _tensor(data: memoryview) -> tuple[str, np.ndarray]:
    dims: list[int] = []
    data_type, name, raw = 0, "", None
    typed: dict[int, list[Any]] = {}
    for number, value in _fields(data):
        if number == 1:
            dims += _packed_varints(value) if isinstance(value, memoryview) else [value]
        elif number == 2:
            data_type = value
        elif number == 8:
            name = bytes(value).decode()
        elif number == 9:
            raw = bytes(value)
        elif number == 14 and value == 1:
            raise OnnxFormatError(f"tensor {name or '?'}: external data is not supported")
        elif number in (4, 5, 7, 10):
            typed.setdefault(number, []).append(value)
    if data_type not in DTYPES:
        raise OnnxFormatError(f"tensor {name}: unsupported data type {data_type}")
    dtype = DTYPES[data_type]
    if raw is not None:
        array = np.frombuffer(raw, dtype=dtype)
    elif 4 in typed:  # float_data: packed fixed32 (float, or float16 bits)
        array = np.asarray(_concat_floats(typed[4]), np.float32).astype(dtype)
    elif 10 in typed:
        array = np.asarray(_concat_doubles(typed[10]), np.float64).astype(dtype)
    elif 5 in typed or 7 in typed:  # int32_data / int64_data: varints
        values = [_signed(v) for chunk in typed.get(5, typed.get(7, [])) for v in _as_varints(chunk)]
        array = np.asarray(values, np.int64).astype(dtype)
    else:
        array = np.zeros(0, dtype)
    count = int(np.prod(dims)) if dims else 1
    if array.size != count:
        raise OnnxFormatError(f"tensor {name}: {array.size} values for dims {dims}")
    return name, array.reshape(dims).copy()


# ---- the wire format ----------------------------------------------------------------------


def _fields(data: memoryview) -> list[tuple[int, Any]]:
    """(field number, value) of a message: an int for varints and fixed32/64 bits, a
    memoryview for length-delimited fields."""
    out, pos, end = [], 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = int.from_bytes(data[pos : pos + 8], "little"), pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > end:
                raise OnnxFormatError("a field runs past the end of its message")
            value, pos = data[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = int.from_bytes(data[pos : pos + 4], "little"), pos + 4
        else:
            raise OnnxFormatError(f"unsupported wire type {wire} (field {number})")
        out.append((number, value))
    if pos != end:
        raise OnnxFormatError("truncated message")
    return out


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(data):
            raise OnnxFormatError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise OnnxFormatError("varint too long")


def _signed(value: int) -> int:
    """A varint read as int64 (two's complement)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _packed_varints(data: memoryview) -> list[int]:
    values, pos = [], 0
    while pos < len(data):
        value, pos = _varint(data, pos)
        values.append(value)
    return values


def _as_varints(chunk: Any) -> list[int]:
    return _packed_varints(chunk) if isinstance(chunk, memoryview) else [chunk]


def _packed_floats(data: memoryview) -> list[float]:
    return list(np.frombuffer(bytes(data), "<f4"))


def _as_float(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def _concat_floats(chunks: list[Any]) -> list[float]:
    out: list[float] = []
    for chunk in chunks:
        out += _packed_floats(chunk) if isinstance(chunk, memoryview) else [_as_float(chunk)]
    return out


def _concat_doubles(chunks: list[Any]) -> list[float]:
    out: list[float] = []
    for chunk in chunks:
        if isinstance(chunk, memoryview):
            out += list(np.frombuffer(bytes(chunk), "<f8"))
        else:
            out.append(struct.unpack("<d", struct.pack("<Q", chunk))[0])
    return out


def _string_field(data: memoryview, wanted: int) -> str:
    for number, value in _fields(data):
        if number == wanted and isinstance(value, memoryview):
            return bytes(value).decode()
    return ""
