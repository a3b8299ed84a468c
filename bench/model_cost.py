"""What each candidate network costs per face, in process, against today's FaceNet, in one run.

    python bench/model_cost.py                      # every candidate family and size -> JSON + table
    python bench/model_cost.py --out bench/results/model_cost.json --rounds 5

For each candidate of the frozen protocol (training/protocol.py; the regularisation does not
change the network, so one per family and input size) the full served network (encoder and
head, as `model_import.py` stores it) is built with its real encoder weights and timed as the
model service runs it (`modeling.inference`'s paths): fp32 TensorFlow (`predict_on_batch`) and,
on a CPU with native bf16, TensorFlow's bf16 rewrite (`modeling.optimized.BF16Network`), at
batch 1 and 32. Today's FaceNet model (fp32 and bf16) is timed first and last; the ratio column
is against the mean of its two fp32 timings at the same batch size. Wall-clock ms per face,
the median of `--rounds` calls after two warm-up calls. A script, not a test: the numbers
depend on the machine and on what else runs on it (say so when quoting them).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the project's packages
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BATCHES = (1, 32)


def time_call(call: Callable[[np.ndarray], Any], x: np.ndarray, rounds: int) -> float:
    """Median wall-clock ms per image of `call(x)` after two warm-up calls."""
    call(x)
    call(x)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call(x)
        times.append(time.perf_counter() - started)
    return 1000.0 * statistics.median(times) / len(x)


def measure(model: Any, size: int, rounds: int, bf16: bool) -> dict[str, dict[str, float]]:
    from modeling.optimized import BF16Network

    rng = np.random.default_rng(0)
    out: dict[str, dict[str, float]] = {"fp32": {}, "bf16": {}}
    paths: dict[str, Callable[[np.ndarray], Any]] = {"fp32": lambda x: model.predict_on_batch(x)}
    if bf16:
        paths["bf16"] = BF16Network(model)
    for batch in BATCHES:
        x = rng.random((batch, size, size, 3), dtype=np.float32)
        for name, call in paths.items():
            out[name][str(batch)] = round(time_call(call, x, rounds if batch > 1 else 3 * rounds), 2)
    return {k: v for k, v in out.items() if v}


def networks() -> list[tuple[str, int, Callable[[], Any]]]:
    """(family, input size, builder) of every candidate network of the protocol."""
    from modeling.clip import add_linear_classifier, load_clip_encoder
    from training.protocol import CLIP_BLOCKS, FACENET_SIZE, SIZES

    def clip(size: int, features: str, facenet: bool = False) -> Callable[[], Any]:
        def build() -> Any:
            backbone = None
            if facenet:
                from modeling.backbone import load_facenet_backbone

                backbone = load_facenet_backbone()
            return add_linear_classifier(load_clip_encoder(size), features, CLIP_BLOCKS, facenet=backbone)

        return build

    rows: list[tuple[str, int, Callable[[], Any]]] = []
    for size in SIZES:
        rows.append(("clip-embedding", size, clip(size, "embedding")))
        rows.append(("clip-blocks", size, clip(size, "blocks")))
    rows.append(("clip+facenet", FACENET_SIZE, clip(FACENET_SIZE, "embedding", facenet=True)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "model_cost.json")
    parser.add_argument("--only", nargs="*", help="families to time (default: all)")
    args = parser.parse_args(argv)

    import keras

    from modeling.default import build_facenet_classifier
    from modeling.optimized import bf16_native, describe_cpu

    bf16 = bf16_native()
    results: dict[str, Any] = {"cpu": describe_cpu(), "python": platform.python_version(), "rows": []}

    def facenet_reference(when: str) -> None:
        model = build_facenet_classifier()
        results[f"facenet_{when}"] = measure(model, 160, args.rounds, bf16)
        print(f"facenet-head ({when}): {results[f'facenet_{when}']}", flush=True)

    facenet_reference("first")
    gc.collect()
    for family, size, build in networks():
        if args.only and family not in args.only:
            continue
        keras.backend.clear_session()
        gc.collect()
        model = build()
        row = {"family": family, "size": size, "parameters": int(model.count_params())}
        row.update(measure(model, size, args.rounds, bf16))
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
        del model
    keras.backend.clear_session()
    gc.collect()
    facenet_reference("last")
    reference = {
        b: statistics.mean([results[f"facenet_{w}"]["fp32"][b] for w in ("first", "last")])
        for b in ("1", "32")
    }
    results["facenet_fp32_ms"] = reference
    picked = "bf16" if bf16 else "fp32"
    for row in results["rows"]:
        row["ratio_to_facenet_fp32_batch32"] = {
            p: round(row[p]["32"] / reference["32"], 2) for p in ("fp32", "bf16") if p in row
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\n{results['cpu']}; FaceNet fp32 ms/face: batch 1 {reference['1']:.1f}, 32 {reference['32']:.1f}")
    columns = ("fp32 b1", "fp32 b32", "bf16 b1", "bf16 b32", "x FaceNet")
    print(f"{'network':<16} {'size':>4} " + " ".join(f"{c:>9}" for c in columns))
    for row in results["rows"]:
        bf = row.get("bf16", {})
        print(
            f"{row['family']:<16} {row['size']:>4} {row['fp32']['1']:>9.1f} {row['fp32']['32']:>9.1f} "
            f"{bf.get('1', float('nan')):>9.1f} {bf.get('32', float('nan')):>9.1f} "
            f"{row['ratio_to_facenet_fp32_batch32'][picked]:>9.2f}"
        )
    print(f"(x FaceNet: {picked} at batch 32 over FaceNet fp32 at batch 32; written to {args.out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
