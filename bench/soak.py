"""Soak and overload: hold many more requests in flight than the server can absorb, for minutes,
with valid images whose answers are known and invalid uploads whose refusals are known.

    python bench/soak.py --url http://127.0.0.1:3000 --concurrency 128 --seconds 180
    python bench/soak.py --seconds 600 --json bench/results/soak.json

Starts nothing: point it at a running server (`make serve`, or `bentoml serve` by hand).

1. Calibration, one request at a time: each valid image is sent twice and its answer kept
   (`debug_info.raw_prediction`, the model tag, the input shape); the images must give distinct
   answers, so that an answer identifies its request.
2. Load: --concurrency clients, closed loop, for --seconds. Each sends a request drawn from a
   fixed mix (valid images on `detect` and `detect/augmented`, invalid uploads of every kind)
   and checks the answer against what that request must get:
   - a valid image: 200 and the calibrated raw prediction within --tolerance (1e-5), else a
     mismatch (a response that belongs to another request, or a wrong answer);
   - an invalid upload: its 4xx status and error_code, else a mismatch;
   - 503 with Retry-After: the documented overload / model-unavailable answer, counted apart;
   - any other 5xx, a 503 without Retry-After, a connection error or a timeout (a request that
     never got its answer: "lost") are failures.
3. Memory: resident memory of the server's process tree (`bench.http_load.server_rss_mb`)
   before the load, after --warmup seconds of it, every --sample seconds, and at the end.
   Growth from after warm-up to the end must stay under --max-growth-mb.

Prints a summary (and --json writes it) and exits 1 on any failure, mismatch, lost response,
memory growth over the allowance, or an unhealthy server at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import statistics
import struct
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.http_load import server_rss_mb  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
DETECT = "/api/v1/detect/"
AUGMENTED = "/api/v1/detect/augmented"
HEALTH = "/api/v1/detect/health"


# ------------------------------------------------------------------------------ the request mix
@dataclass(frozen=True)
class Kind:
    """One kind of request in the mix and the answer it must get."""

    name: str
    path: str
    data: bytes | None  # None: a multipart body without the `file` field
    filename: str = "upload.jpg"
    content_type: str = "image/jpeg"
    status: int = 200
    code: str | None = None  # error_code of a 4xx
    weight: float = 1.0


def _encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _noise(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8), "RGB")


def _png_bomb(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def valid_kinds() -> list[Kind]:
    """Photos with faces and without (the face detector's paths), and generated odd images."""
    kinds = [
        Kind(f"photo:{path.name}", DETECT, path.read_bytes(), path.name, weight=2.0)
        for path in sorted(FIXTURES.glob("*.jpg"))
    ]
    generated = {
        "noise.png": (_encode(_noise((320, 240), 1), "PNG"), "image/png"),
        "noise-cmyk.jpg": (_encode(_noise((200, 150), 2).convert("CMYK"), "JPEG"), "image/jpeg"),
        "gradient.webp": (
            _encode(Image.linear_gradient("L").resize((300, 200)).convert("RGB"), "WEBP"),
            "image/webp",
        ),
        "palette.gif": (_encode(_noise((128, 96), 3).convert("P"), "GIF"), "image/gif"),
        "tiny-1x1.png": (_encode(Image.new("RGB", (1, 1), (200, 30, 60)), "PNG"), "image/png"),
    }
    kinds += [Kind(f"gen:{name}", DETECT, data, name, ctype) for name, (data, ctype) in generated.items()]
    # The heavy route: seven variants in one batch.
    kinds += [
        Kind(f"augmented:{k.filename}", AUGMENTED, k.data, k.filename, k.content_type, weight=0.5)
        for k in kinds
        if k.filename in ("astronaut.jpg", "noise.png", "coffee_no_face.jpg")
    ]
    return kinds


def invalid_kinds() -> list[Kind]:
    jpeg = _encode(_noise((200, 150), 4), "JPEG")
    rng = np.random.default_rng(5)
    return [
        Kind(
            "bad:random-bytes",
            DETECT,
            rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
            status=415,
            code="UNSUPPORTED_FORMAT",
        ),
        Kind("bad:truncated-jpeg", DETECT, jpeg[: len(jpeg) // 2], status=400, code="INVALID_IMAGE"),
        Kind("bad:empty", DETECT, b"", status=400, code="EMPTY_FILE"),
        Kind(
            "bad:png-bomb",
            DETECT,
            _png_bomb(100_000, 100_000),
            "a.png",
            "image/png",
            status=413,
            code="IMAGE_TOO_LARGE",
        ),
        Kind(
            "bad:pdf",
            DETECT,
            b"%PDF-1.4\n%%EOF\n",
            "a.pdf",
            "application/pdf",
            status=415,
            code="UNSUPPORTED_FORMAT",
        ),
        Kind("bad:missing-field", DETECT, None, status=400, code="MISSING_FILE"),
        Kind(
            "bad:augmented-html",
            AUGMENTED,
            b"<html></html>",
            "a.jpg",
            status=415,
            code="UNSUPPORTED_FORMAT",
            weight=0.5,
        ),
    ]


# ------------------------------------------------------------------------------ bookkeeping
@dataclass
class Stats:
    sent: int = 0
    answered: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    overload_503: int = 0
    codes_503: Counter[str] = field(default_factory=Counter)  # error_code of each 503 + Retry-After
    unexpected_5xx: int = 0
    mismatches: int = 0
    lost: int = 0
    latencies: list[float] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)  # first few problems, for the report
    windows: list[tuple[float, int]] = field(default_factory=list)  # (t, answered) samples
    rss: list[tuple[float, float]] = field(default_factory=list)  # (t, MB)

    def problem(self, text: str) -> None:
        if len(self.examples) < 20:
            self.examples.append(text)


def build_form(kind: Kind, nonce: int) -> aiohttp.FormData:
    form = aiohttp.FormData()
    if kind.data is None:
        form.add_field("image", b"x", filename="a.jpg", content_type="image/jpeg")
    else:
        # A unique filename per request: nothing server-side may key on it.
        form.add_field("file", kind.data, filename=f"{nonce}-{kind.filename}", content_type=kind.content_type)
        # A photo with no face answers 200 (no_face), not the legacy routes' default 422.
        form.add_field("require_face", "false")
    return form


def raw_of(kind: Kind, body: dict[str, Any]) -> float:
    verdict = body["original_prediction"] if kind.path == AUGMENTED else body
    return float(verdict["debug_info"]["raw_prediction"])


async def call(session: aiohttp.ClientSession, url: str, kind: Kind, nonce: int) -> tuple[int, dict, dict]:
    async with session.post(f"{url}{kind.path}", data=build_form(kind, nonce)) as response:
        text = await response.text()
        try:
            body = json.loads(text)
        except ValueError:
            body = {"_text": text[:200]}
        return response.status, body, dict(response.headers)


async def calibrate(session: aiohttp.ClientSession, url: str, kinds: list[Kind]) -> dict[str, dict[str, Any]]:
    """Sequentially, twice each: the answer every valid image must get under load."""
    expected: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        answers = []
        for attempt in range(2):
            status, body, _ = await call(session, url, kind, -1 - attempt)
            if status != 200:
                raise SystemExit(f"calibration: {kind.name} answered {status}: {body}")
            answers.append(raw_of(kind, body))
        if abs(answers[0] - answers[1]) > 1e-6:
            raise SystemExit(f"calibration: {kind.name} is not deterministic: {answers}")
        verdict = body["original_prediction"] if kind.path == AUGMENTED else body
        expected[kind.name] = {
            "raw": answers[0],
            "model_tag": verdict["model_tag"],
            "input_shape": verdict["debug_info"]["input_shape"],
        }
    return expected


def distinct(kinds: list[Kind], expected: dict[str, dict[str, Any]], tolerance: float) -> list[Kind]:
    """Keep only images whose answers differ from every other on the same route by more than
    2 x tolerance (the routes answer in different shapes, so they cannot be mistaken)."""
    kept: list[Kind] = []
    for kind in kinds:
        raw = expected[kind.name]["raw"]
        clash = [
            k.name
            for k in kept
            if k.path == kind.path and abs(expected[k.name]["raw"] - raw) <= 2 * tolerance
        ]
        if clash:
            print(f"  dropped {kind.name}: raw {raw:.7f} too close to {clash[0]}")
        else:
            kept.append(kind)
    return kept


def check(
    kind: Kind, status: int, body: dict, headers: dict, expected: dict, tolerance: float, stats: Stats
) -> None:
    stats.statuses[str(status)] += 1
    stats.by_kind[f"{kind.name} {status}"] += 1
    if status == 503 and any(h.lower() == "retry-after" for h in headers):
        stats.overload_503 += 1
        stats.codes_503[str(body.get("error_code"))] += 1
        return
    if status == 429:  # e.g. BentoML's own max_concurrency answer: no Retry-After, not the contract
        stats.mismatches += 1
        stats.problem(f"{kind.name}: overload answered 429, expected 503 + Retry-After: {str(body)[:160]}")
        return
    if status >= 500:
        stats.unexpected_5xx += 1
        stats.problem(f"{kind.name}: {status} {str(body)[:200]}")
        return
    if status != kind.status:
        stats.mismatches += 1
        stats.problem(f"{kind.name}: expected {kind.status}, got {status} {str(body)[:200]}")
        return
    if status == 200:
        want = expected[kind.name]
        verdict = body.get("original_prediction", {}) if kind.path == AUGMENTED else body
        try:
            raw = raw_of(kind, body)
        except (KeyError, TypeError, ValueError):
            raw = float("nan")
        if not abs(raw - want["raw"]) <= tolerance or verdict.get("model_tag") != want["model_tag"]:
            stats.mismatches += 1
            stats.problem(f"{kind.name}: raw {raw} != expected {want['raw']} ({str(body)[:160]})")
        return
    if body.get("error_code") != kind.code or not body.get("error") or not body.get("timestamp"):
        stats.mismatches += 1
        stats.problem(f"{kind.name}: expected {kind.code}, got {str(body)[:200]}")


# ------------------------------------------------------------------------------ the run
async def soak(args: argparse.Namespace) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    connector = aiohttp.TCPConnector(limit=args.concurrency + 8, force_close=False)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        deadline = time.monotonic() + args.ready_timeout
        while True:
            try:
                async with session.get(f"{args.url}/readyz") as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{args.url} not ready in {args.ready_timeout}s")
            await asyncio.sleep(1)

        rss_start = server_rss_mb(args.url)
        print(f"server {args.url}: rss {rss_start:.0f} MB before any request", flush=True)
        print("calibrating (sequential, twice per image) ...", flush=True)
        valid = valid_kinds()
        expected = await calibrate(session, args.url, valid)
        valid = distinct(valid, expected, args.tolerance)
        for kind in valid:
            print(f"  {kind.name:40s} raw {expected[kind.name]['raw']:.7f}", flush=True)
        invalid = invalid_kinds()
        mix = valid + invalid
        weights = [k.weight * (1 - args.invalid_share) / sum(v.weight for v in valid) for k in valid]
        weights += [k.weight * args.invalid_share / sum(v.weight for v in invalid) for k in invalid]

        stats = Stats()
        rng = random.Random(args.seed)
        started = time.monotonic()
        end = started + args.seconds
        rss_warm: float | None = None

        async def client() -> None:
            while time.monotonic() < end:
                kind = rng.choices(mix, weights)[0]
                nonce = stats.sent
                stats.sent += 1
                began = time.perf_counter()
                try:
                    status, body, headers = await call(session, args.url, kind, nonce)
                except (TimeoutError, aiohttp.ClientError) as exc:
                    stats.lost += 1
                    stats.statuses[type(exc).__name__] += 1
                    stats.problem(f"{kind.name}: lost ({type(exc).__name__}: {exc})")
                    continue
                stats.answered += 1
                stats.latencies.append(time.perf_counter() - began)
                check(kind, status, body, headers, expected, args.tolerance, stats)

        async def monitor() -> None:
            nonlocal rss_warm
            next_sample = started
            while time.monotonic() < end:
                now = time.monotonic() - started
                rss = await asyncio.to_thread(server_rss_mb, args.url)
                stats.rss.append((round(now, 1), round(rss, 1)))
                stats.windows.append((round(now, 1), stats.answered))
                if rss_warm is None and now >= args.warmup:
                    rss_warm = rss
                print(
                    f"[{now:6.0f}s] sent {stats.sent} answered {stats.answered} in flight "
                    f"{stats.sent - stats.answered - stats.lost}  statuses {dict(stats.statuses)}  "
                    f"mismatches {stats.mismatches} 5xx {stats.unexpected_5xx} lost {stats.lost}  "
                    f"rss {rss:.0f} MB",
                    flush=True,
                )
                next_sample += args.sample
                await asyncio.sleep(max(0.0, min(next_sample, end) - time.monotonic()))

        await asyncio.gather(monitor(), *(client() for _ in range(args.concurrency)))
        elapsed = time.monotonic() - started
        rss_end = server_rss_mb(args.url)
        async with session.get(f"{args.url}{HEALTH}") as response:
            healthy_after = response.status == 200

    if rss_warm is None:
        rss_warm = stats.rss[-1][1] if stats.rss else rss_start
    growth = rss_end - rss_warm
    quantiles = statistics.quantiles(stats.latencies, n=100) if len(stats.latencies) > 1 else [0.0] * 99
    return {
        "url": args.url,
        "concurrency": args.concurrency,
        "seconds": round(elapsed, 1),
        "requests_sent": stats.sent,
        "responses": stats.answered,
        "rps": round(stats.answered / elapsed, 2),
        "statuses": dict(stats.statuses),
        "by_kind": dict(sorted(stats.by_kind.items())),
        "overload_503_with_retry_after": stats.overload_503,
        "error_codes_of_503": dict(stats.codes_503),
        "unexpected_5xx": stats.unexpected_5xx,
        "mismatches": stats.mismatches,
        "lost": stats.lost,
        "latency_ms": {
            "p50": round(quantiles[49] * 1000),
            "p95": round(quantiles[94] * 1000),
            "p99": round(quantiles[98] * 1000),
            "max": round(max(stats.latencies, default=0) * 1000),
        },
        "rss_mb": {
            "start": round(rss_start, 1),
            "after_warmup": round(rss_warm, 1),
            "end": round(rss_end, 1),
            "max": max((mb for _, mb in stats.rss), default=rss_end),
            "growth_after_warmup": round(growth, 1),
            "allowed_growth": args.max_growth_mb,
            "samples": stats.rss,
        },
        "throughput_samples": stats.windows,
        "healthy_after": healthy_after,
        "calibrated": {k: round(v["raw"], 7) for k, v in expected.items()},
        "problems": stats.examples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--warmup", type=float, default=60, help="seconds of load before the warm RSS sample")
    parser.add_argument("--sample", type=float, default=10, help="progress and RSS every N seconds")
    parser.add_argument("--invalid-share", type=float, default=0.3, help="share of invalid uploads")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="raw prediction vs calibration")
    parser.add_argument("--max-growth-mb", type=float, default=100.0, help="RSS growth allowed after warm-up")
    parser.add_argument("--timeout", type=float, default=180, help="client timeout per request (s)")
    parser.add_argument("--ready-timeout", type=float, default=120)
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args()

    result = asyncio.run(soak(args))
    rss = result["rss_mb"]
    print("\n== soak summary ==")
    print(
        f"{result['seconds']} s at concurrency {result['concurrency']}: {result['requests_sent']} sent, "
        f"{result['responses']} answered ({result['rps']} req/s), lost {result['lost']}"
    )
    print(f"statuses {result['statuses']}")
    print(
        f"unexpected 5xx {result['unexpected_5xx']}, "
        f"503 with Retry-After {result['overload_503_with_retry_after']} {result['error_codes_of_503']}, "
        f"mismatches {result['mismatches']}"
    )
    print(f"latency ms {result['latency_ms']}")
    print(
        f"rss MB: start {rss['start']}, after warm-up {rss['after_warmup']}, end {rss['end']}, "
        f"max {rss['max']}; growth after warm-up {rss['growth_after_warmup']} "
        f"(allowed {rss['allowed_growth']})"
    )
    print(f"healthy after: {result['healthy_after']}")
    for problem in result["problems"]:
        print(f"  problem: {problem}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    failed = (
        result["unexpected_5xx"]
        or result["mismatches"]
        or result["lost"]
        or result["requests_sent"] != result["responses"] + result["lost"]
        or rss["growth_after_warmup"] > rss["allowed_growth"]
        or not result["healthy_after"]
    )
    print("RESULT:", "FAIL" if failed else "PASS")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
