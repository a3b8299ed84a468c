"""Which stored precision serves, picked at start from the CPU's flags: a pure function of the
flags (every CPU kind checked here, in process, whatever this machine has), and a model of the
last version (one precision in its metadata) still read as it was stored."""

from __future__ import annotations

import pytest

from modeling.optimized import bf16_native, int8_native, pick_precision
from modeling.spec import Acceptance, ModelSpec, StoredPrecision

GATE = Acceptance(accepted=True, max_p_fake_change=0.01, limit=0.03, crops=1, fixtures=1, label_flips=0,
                  fixture_flips=0)  # fmt: skip
FP32 = StoredPrecision(precision="fp32", runtime="tensorflow")
BF16 = StoredPrecision(precision="bf16", runtime="tensorflow", acceptance=GATE)
INT8 = StoredPrecision(precision="int8", runtime="onnxruntime", file="model.int8.onnx", sha256="0" * 64,
                       acceptance=GATE)  # fmt: skip
ALL = (FP32, BF16, INT8)

# /proc/cpuinfo flags of the three kinds (the parts that matter, with their neighbours)
SAPPHIRE_RAPIDS = {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile"}
CASCADE_LAKE = {"avx2", "avx512f", "avx512bw", "avx512_vnni"}  # VNNI, no bf16
ALDER_LAKE = {"avx2", "avx_vnni"}  # VNNI without AVX-512
HASWELL = {"avx2", "fma", "sse4_2"}  # neither


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (SAPPHIRE_RAPIDS, "bf16"),
        (CASCADE_LAKE, "int8"),
        (ALDER_LAKE, "int8"),
        (HASWELL, "fp32"),
        (set(), "fp32"),
    ],
)
def test_each_cpu_kind_serves_its_fastest_stored_precision(flags: set[str], expected: str) -> None:
    assert pick_precision(ALL, flags).precision == expected


def test_only_what_the_store_holds_is_picked() -> None:
    assert pick_precision((FP32, BF16), CASCADE_LAKE) == FP32  # int8 refused by the gate at import
    assert pick_precision((FP32, INT8), SAPPHIRE_RAPIDS) == INT8  # bf16 not stored: int8 (VNNI too)
    assert pick_precision((FP32,), SAPPHIRE_RAPIDS) == FP32


def test_the_precision_setting_forces_a_stored_one_or_refuses() -> None:
    assert pick_precision(ALL, SAPPHIRE_RAPIDS, "int8") == INT8
    assert pick_precision(ALL, HASWELL, "int8") == INT8  # the operator's word over the flags
    assert pick_precision(ALL, HASWELL, "auto") == FP32
    with pytest.raises(ValueError, match="int8 is not in the model store.*fp32, bf16"):
        pick_precision((FP32, BF16), SAPPHIRE_RAPIDS, "int8")


def test_flag_predicates_name_the_features() -> None:
    assert bf16_native(SAPPHIRE_RAPIDS) and not bf16_native(CASCADE_LAKE) and not bf16_native(ALDER_LAKE)
    assert int8_native(CASCADE_LAKE) and int8_native(ALDER_LAKE) and not int8_native(HASWELL)


def test_a_model_of_the_last_version_reads_as_stored() -> None:
    """Metadata written before `precisions` existed: its one precision (and the fp32 Keras file
    beside it) is what the store holds."""
    old = {"precision": "int8", "runtime": "litert", "optimized_file": "model.int8.tflite",
           "optimized_sha256": "1" * 64, "acceptance": GATE.model_dump()}  # fmt: skip
    spec = ModelSpec.from_metadata(old)
    assert spec.precisions == ()
    stored = spec.stored_precisions()
    assert [(s.precision, s.runtime, s.file) for s in stored] == [
        ("fp32", "tensorflow", ""),
        ("int8", "litert", "model.int8.tflite"),
    ]
    assert stored[1].acceptance == GATE
    assert ModelSpec.from_metadata({}).stored_precisions() == (FP32,)
    new = ModelSpec(precisions=ALL)
    assert ModelSpec.from_metadata(new.to_metadata()).stored_precisions() == ALL
