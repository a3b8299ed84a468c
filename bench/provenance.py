"""What reading provenance costs (serving/provenance.py): per image, and served.

    BENTOML_HOME=.bentoml .venv/bin/python bench/provenance.py read
    BENTOML_HOME=.bentoml .venv/bin/python bench/provenance.py http --rounds 3 --requests 160

`read`: the reader's time per image (the fastest of --repeats, milliseconds), by part: C2PA
(c2pa-python's read and validation), XMP, the watermark (on the image as the pipeline decodes
it), and the whole `read_image`; for unsigned photos (the fixtures), files signed by the tests'
own CA (tests/provenance_fixtures.py), a 1024 x 1024 PNG (a generator's output size) and a
12-megapixel JPEG (decoded at reduced scale: no watermark read).

`http`: the served throughput with provenance on against off, in one run: two `bentoml serve`
of the default model started side by side (DEEPFAKE_PROVENANCE=true / false, nothing else
different), then closed-loop detect load (bench/http_load.py) on each in turn, alternating
which goes first each round, on the same image mix (the fixture photos and the signed files).
Prints each run, the median requests/s of each and their ratio, and the median CPU time the
API process spent per request (where the reading happens) with provenance on and off.

A script, not a test: the numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FIXTURES = ROOT / "tests" / "fixtures"


def best_ms(work: Callable[[], object], repeats: int) -> float:
    """The fastest of `repeats` runs, in ms: the cost itself, least disturbed by what else runs."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times) * 1000


def images(folder: Path) -> dict[str, bytes]:
    from tests.provenance_fixtures import make_provenance_files

    files = make_provenance_files(folder, depth=12)
    found = {p.name: p.read_bytes() for p in sorted(FIXTURES.glob("*.jpg"))[:4]}
    signed = (
        "ai_generated.jpg",
        "camera.jpg",
        "ai_edited.jpg",
        "edited_after_signing.jpg",
        "ai_generated.png",
    )
    for name in (*signed, "deep_ingredients.jpg"):
        found[f"signed:{name}"] = files[name].read_bytes()
    photo = Image.open(FIXTURES / "astronaut.jpg").convert("RGB")
    buffer = io.BytesIO()
    photo.resize((1024, 1024)).save(buffer, "PNG")
    found["png 1024x1024"] = buffer.getvalue()
    buffer = io.BytesIO()
    photo.resize((4000, 3000)).save(buffer, "JPEG", quality=90)
    found["jpeg 4000x3000"] = buffer.getvalue()
    return found


def bench_read(repeats: int) -> None:
    from preprocessing import watermark
    from preprocessing.decode import DecodeLimits, decode_upload
    from serving.pipeline import DRAFT_SIDE
    from serving.provenance import ProvenanceOptions, ProvenanceReader, load_trust_anchors, xmp_source_type

    folder = Path(tempfile.mkdtemp(prefix="bench-provenance-"))
    found = images(folder)
    reader = ProvenanceReader(ProvenanceOptions(trust_anchors=load_trust_anchors(str(folder / "trust.pem"))))
    print(
        f"{'image':34s} {'bytes':>9s} {'c2pa':>7s} {'xmp':>6s} {'wmark':>7s} {'all':>7s} {'decode':>7s}  ms"
    )
    totals = []
    for name, data in found.items():
        limits = DecodeLimits(max_bytes=64 << 20, max_pixels=40_000_000)
        decoded = decode_upload(data, limits, draft_size=(DRAFT_SIDE, DRAFT_SIDE))
        mime = "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"
        header = Image.open(io.BytesIO(data))
        packet = header.info.get("xmp") or header.info.get("XML:com.adobe.xmp") or b""
        packet = packet.encode() if isinstance(packet, str) else packet
        rgb = np.asarray(decoded)
        reduced = sorted(decoded.size) != sorted(header.size)
        c2pa = best_ms(lambda: reader.read_c2pa(mime, io.BytesIO(data)), repeats)  # noqa: B023
        xmp = best_ms(lambda: xmp_source_type(packet), repeats)  # noqa: B023
        mark = 0.0 if reduced else best_ms(lambda: watermark.find_watermarks(rgb), repeats)  # noqa: B023
        whole = best_ms(lambda: reader.read_image(data, decoded), repeats)  # noqa: B023
        decode = best_ms(lambda: decode_upload(data, limits, draft_size=(DRAFT_SIDE, DRAFT_SIDE)), 5)  # noqa: B023
        totals.append(whole)
        print(f"{name:34s} {len(data):9d} {c2pa:7.2f} {xmp:6.3f} {mark:7.2f} {whole:7.2f} {decode:7.2f}")
    middle = statistics.median(totals)
    print(f"read_image, median over these images (each its fastest of {repeats}): {middle:.2f} ms")


def bench_http(rounds: int, requests: int, concurrency: int) -> None:
    from bench.http_load import run
    from bench.suite import Server, ensure_models

    folder = Path(tempfile.mkdtemp(prefix="bench-provenance-"))
    mix = [(name.replace("signed:", "").replace(" ", "_"), data) for name, data in images(folder).items()]
    mix = [(name, data) for name, data in mix if len(data) < 10 * 1024 * 1024 and "4000x3000" not in name]
    default, _ = ensure_models()
    common = {"DEEPFAKE_MODEL_TAG": default, "DEEPFAKE_PROVENANCE_TRUST_ANCHORS": str(folder / "trust.pem")}
    rps: dict[str, list[float]] = {"on": [], "off": []}
    api_cpu: dict[str, list[float]] = {"on": [], "off": []}  # API process CPU ms per request
    with (
        Server({**common, "DEEPFAKE_PROVENANCE": "true"}) as on,
        Server({**common, "DEEPFAKE_PROVENANCE": "false"}) as off,
    ):
        servers = {"on": on, "off": off}
        for server in servers.values():  # warm-up: first-call costs out of the way
            asyncio.run(run(server.url, "detect", 4, 40, 0, mix))
        for round_ in range(rounds):
            order = ("on", "off") if round_ % 2 == 0 else ("off", "on")
            for name in order:
                result = asyncio.run(run(servers[name].url, "detect", concurrency, requests, 0, mix))
                rps[name].append(result.rps)
                api_cpu[name].append(result.cpu_ms_per_request.get("api", float("nan")))
                print(
                    f"round {round_ + 1} provenance {name:3s}: {result.rps:6.2f} req/s "
                    f"p50 {result.p50_ms} ms p99 {result.p99_ms} ms statuses {result.statuses} "
                    f"cpu ms/request {result.cpu_ms_per_request}",
                    flush=True,
                )
    on_rps, off_rps = statistics.median(rps["on"]), statistics.median(rps["off"])
    print(
        f"\nmedian of {rounds} rounds, c={concurrency}, {requests} requests each, {len(mix)} images: "
        f"on {on_rps:.2f} req/s, off {off_rps:.2f} req/s, on/off {on_rps / off_rps:.3f} "
        f"({(on_rps / off_rps - 1) * 100:+.1f} %)"
    )
    on_cpu, off_cpu = statistics.median(api_cpu["on"]), statistics.median(api_cpu["off"])
    print(
        f"API process CPU per request (decode, faces, provenance; less sensitive than req/s to what else "
        f"runs on the machine): on {on_cpu:.1f} ms, off {off_cpu:.1f} ms ({on_cpu - off_cpu:+.1f} ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    read = sub.add_parser("read")
    read.add_argument("--repeats", type=int, default=30)
    http = sub.add_parser("http")
    http.add_argument("--rounds", type=int, default=3)
    http.add_argument("--requests", type=int, default=160)
    http.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    if args.command == "read":
        bench_read(args.repeats)
    else:
        bench_http(args.rounds, args.requests, args.concurrency)


if __name__ == "__main__":
    main()
