"""What each candidate network costs per face, in process, against today's FaceNet, in one run.

    python bench/model_cost.py                      # every candidate family and size -> JSON + table
    python bench/model_cost.py --out bench/results/model_cost.json --rounds 5

For each candidate of the frozen protocol (training/protocol.py; the regularisation does not
change the network, so one per family and input size) the full served network (encoder and
head, as `model_import.py` stores it) is built with its real encoder weights and timed as the
model service runs it (`modeling.inference`'s paths): fp32 TensorFlow (`predict_on_batch`) and,
on a CPU with native bf16, TensorFlow's bf16 rewrite (`modeling.optimized.BF16Network`), at
batch 1 and 32, beside today's FaceNet model (fp32 and bf16); the ratio column
is against its fp32 timing at batch 32. Every network is loaded first; then, per batch size,
the paths take turns (one timed call each, round after round, after two warm-up calls each),
so that what else runs on the machine slows them alike. Wall-clock ms per face, the median of
`--rounds` calls (three times as many at batch 1). A script, not a test: the numbers
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


def timed_rounds(
    paths: dict[str, Callable[[np.ndarray], Any]], inputs: dict[str, np.ndarray], rounds: int
) -> dict[str, float]:
    """Median wall-clock ms per image of each path, the paths taking turns: one timed call
    each, round after round (after two warm-up calls each), so that what else runs on the
    machine slows them alike."""
    for name, call in paths.items():
        call(inputs[name])
        call(inputs[name])
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, call in paths.items():
            started = time.perf_counter()
            call(inputs[name])
            times[name].append(1000.0 * (time.perf_counter() - started) / len(inputs[name]))
    return {name: round(statistics.median(values), 2) for name, values in times.items()}


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
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "model_cost.json")
    parser.add_argument("--only", nargs="*", help="families to time (default: all)")
    parser.add_argument("--sizes", nargs="*", type=int, help="input sizes to time (default: all)")
    args = parser.parse_args(argv)

    from modeling.default import build_facenet_classifier
    from modeling.optimized import BF16Network, bf16_native, describe_cpu

    bf16 = bf16_native()
    precisions = ("fp32", "bf16") if bf16 else ("fp32",)
    results: dict[str, Any] = {"cpu": describe_cpu(), "python": platform.python_version(), "rows": []}
    models: list[tuple[str, int, Any]] = [("facenet-head", 160, build_facenet_classifier())]
    for family, size, build in networks():
        if (not args.only or family in args.only) and (not args.sizes or size in args.sizes):
            models.append((family, size, build()))
            gc.collect()
    rng = np.random.default_rng(0)
    for batch in BATCHES:
        paths: dict[str, Callable[[np.ndarray], Any]] = {}
        inputs: dict[str, np.ndarray] = {}
        for family, size, model in models:
            x = rng.random((batch, size, size, 3), dtype=np.float32)
            for precision in precisions:
                name = f"{family}@{size}/{precision}"
                paths[name] = (
                    (lambda m: lambda x: m.predict_on_batch(x))(model)
                    if precision == "fp32"
                    else BF16Network(model)
                )
                inputs[name] = x
        rounds = args.rounds if batch > 1 else 3 * args.rounds
        for name, ms in timed_rounds(paths, inputs, rounds).items():
            results.setdefault("ms", {}).setdefault(name, {})[str(batch)] = ms
            print(f"batch {batch:>2} {name:<28} {ms:8.2f} ms/face", flush=True)
    ms = results["ms"]
    reference = {b: ms["facenet-head@160/fp32"][b] for b in ("1", "32")}
    results["facenet_fp32_ms"] = reference
    results["facenet"] = {p: ms[f"facenet-head@160/{p}"] for p in precisions}
    picked = "bf16" if bf16 else "fp32"
    for family, size, model in models[1:]:
        row = {"family": family, "size": size, "parameters": int(model.count_params())}
        row.update({p: ms[f"{family}@{size}/{p}"] for p in precisions})
        row["ratio_to_facenet_fp32_batch32"] = {
            p: round(row[p]["32"] / reference["32"], 2) for p in precisions
        }
        results["rows"].append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\n{results['cpu']}; FaceNet fp32 ms/face: batch 1 {reference['1']:.1f}, 32 {reference['32']:.1f}")
    columns = ("fp32 b1", "fp32 b32", "bf16 b1", "bf16 b32", "x FaceNet")
    print(f"{'network':<16} {'size':>4} " + " ".join(f"{c:>9}" for c in columns))
    facenet = {"family": "facenet-head", "size": 160, **results["facenet"]}
    facenet["ratio_to_facenet_fp32_batch32"] = {
        p: round(results["facenet"][p]["32"] / reference["32"], 2) for p in precisions
    }
    for row in [facenet, *results["rows"]]:
        bf = row.get("bf16", {})
        print(
            f"{row['family']:<16} {row['size']:>4} {row['fp32']['1']:>9.1f} {row['fp32']['32']:>9.1f} "
            f"{bf.get('1', float('nan')):>9.1f} {bf.get('32', float('nan')):>9.1f} "
            f"{row['ratio_to_facenet_fp32_batch32'][picked]:>9.2f}"
        )
    print(f"(x FaceNet: {picked} at batch 32 over FaceNet fp32 at batch 32, same run; written to {args.out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
