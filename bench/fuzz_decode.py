"""Long fuzzing run of the decode/validate path (the short run is tests/test_fuzz_decode.py).

    python bench/fuzz_decode.py --seconds 300                 # atheris, coverage-guided
    python bench/fuzz_decode.py --engine hypothesis --seconds 300
    python bench/fuzz_decode.py --engine atheris --seconds 600 --out bench/results/fuzz

Same oracle as the test (`tests.test_fuzz_decode.check_upload`): every input either decodes to
an RGB image within the limits that survives tensor + normalise + the seven variants, or is
refused with an `InputError` carrying a 4xx status; never another exception, never more than
the time budget. Every input also goes through the provenance reader (C2PA Content
Credentials, XMP, watermarks: `check_provenance`), which must answer in time, never raise and
trust only an intact manifest; the seeds include files signed with Content Credentials.
Findings are not fatal: each distinct one (exception type and where it was raised, or "slow")
is printed once with its traceback and saved under --out as the input that
caused it; the run goes on. Prints iterations, rate and outcomes every --report seconds and a
summary at the end; exits 1 when anything was found.

atheris mutates the seeds (an image of every accepted format and mode) with libFuzzer's own
mutations and the test's structure-aware ones (bit flips, truncations, header fields set to
extreme values, PNG checksums repaired so that edits reach the decoder), guided by coverage of
Pillow's Python plugins and `preprocessing`. Without atheris, `--engine hypothesis` draws from
the test's strategies in batches of 5000 examples until the time is up.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Campaign:
    """Counts, the oracle, and the findings of one run."""

    def __init__(self, seconds: float, out: Path, report_every: float, draft: tuple[int, int] | None):
        from tests import test_fuzz_decode as fuzz

        self.fuzz = fuzz
        self.started = time.monotonic()
        self.deadline = self.started + seconds
        self.next_report = self.started + report_every
        self.report_every = report_every
        self.out = out
        self.draft = draft
        self.iterations = 0
        self.outcomes: Counter[str] = Counter()
        self.findings: dict[str, int] = {}
        self.slowest = 0.0

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def one(self, data: bytes) -> None:
        self.iterations += 1
        started = time.perf_counter()
        try:
            outcome = self.fuzz.check_upload(data, draft_size=self.draft)
            self.outcomes["decoded" if outcome.decoded else str(outcome.status)] += 1
        except Exception as exc:  # noqa: BLE001 - every escape is a finding, recorded, not fatal
            self.finding(data, exc)
        self.slowest = max(self.slowest, time.perf_counter() - started)
        if time.monotonic() >= self.next_report:
            self.next_report += self.report_every
            self.progress()

    def finding(self, data: bytes, exc: BaseException) -> None:
        frames = traceback.extract_tb(exc.__traceback__)
        where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
        message = str(exc).split("\n")[0][:120]
        kind = "slow" if "took" in message and isinstance(exc, AssertionError) else type(exc).__name__
        key = f"{kind} at {where}" + (f": {message}" if isinstance(exc, AssertionError) else "")
        self.outcomes["finding"] += 1
        if key in self.findings:
            self.findings[key] += 1
            return
        self.findings[key] = 1
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / f"finding-{hashlib.sha1(key.encode()).hexdigest()[:12]}.bin"
        path.write_bytes(data)
        print(f"\nFINDING {key}\n  input: {path} ({len(data)} bytes)", flush=True)
        print("".join(traceback.format_exception(exc)[-6:]), flush=True)

    def progress(self) -> None:
        elapsed = time.monotonic() - self.started
        print(
            f"[{elapsed:7.1f}s] iterations {self.iterations}  {self.iterations / elapsed:.0f}/s  "
            f"outcomes {dict(self.outcomes)}  distinct findings {len(self.findings)}",
            flush=True,
        )

    def summary(self, engine: str) -> int:
        elapsed = time.monotonic() - self.started
        print("\n== fuzz_decode summary ==")
        print(
            f"engine {engine}, {elapsed:.0f} s, "
            f"{self.iterations} iterations ({self.iterations / elapsed:.0f}/s)"
        )
        print(f"outcomes {dict(self.outcomes)}; slowest input {self.slowest * 1000:.0f} ms")
        if not self.findings:
            print("findings: none")
            return 0
        print(f"findings: {len(self.findings)} distinct, saved under {self.out}")
        for key, count in sorted(self.findings.items(), key=lambda kv: -kv[1]):
            print(f"  {count:6d}x {key}")
        return 1


def run_atheris(campaign: Campaign, max_len: int, extra: list[str]) -> None:
    import atheris

    fuzz = campaign.fuzz

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rnd = random.Random(seed)
        if rnd.random() < 0.4:  # structure-aware edits of the test
            edits = [
                fuzz.Mutation(
                    kind=rnd.choice(["flip", "truncate", "overwrite", "insert", "delete", "field"]),
                    pos=rnd.randrange(1 << 16),
                    value=rnd.choice([rnd.randrange(1 << 32), rnd.choice(fuzz.INTERESTING)]),
                    data=rnd.randbytes(rnd.randint(1, 16)),
                    width=rnd.choice([1, 2, 4]),
                    big_endian=rnd.random() < 0.5,
                )
                for _ in range(rnd.randint(1, 3))
            ]
            data = fuzz.mutate(data, edits, repair_png=False)
        else:
            data = atheris.Mutate(data, max_size)
        if rnd.random() < 0.7:
            data = fuzz.fix_png_crcs(data)
        return data[:max_size]

    def test_one(data: bytes) -> None:
        if campaign.expired():
            code = campaign.summary("atheris")
            sys.stdout.flush()
            os._exit(code)
        campaign.one(data)

    corpus = Path(tempfile.mkdtemp(prefix="fuzz-decode-corpus-"))
    for name, data in fuzz.SEEDS.items():
        (corpus / name).write_bytes(data)
    argv = [
        sys.argv[0],
        str(corpus),
        f"-max_len={max_len}",
        "-timeout=20",  # libFuzzer's own hang detector; the oracle's budget is much lower
        "-rss_limit_mb=4096",
        f"-max_total_time={int(campaign.deadline - time.monotonic()) + 60}",  # backstop
        "-print_final_stats=1",
        *extra,
    ]
    atheris.Setup(argv, test_one, custom_mutator=custom_mutator)
    atheris.Fuzz()


def run_hypothesis(campaign: Campaign) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    fuzz = campaign.fuzz
    inputs = st.one_of(
        st.binary(max_size=8192),
        st.builds(
            fuzz.mutate,
            st.sampled_from(list(fuzz.SEEDS.values())),
            st.lists(fuzz.mutations, min_size=1, max_size=8),
            st.booleans(),
        ),
        st.builds(
            fuzz.set_dimensions,
            st.sampled_from(list(fuzz.SEEDS.values())),
            st.integers(0, 2**32 - 1),
            st.integers(0, 2**32 - 1),
        ),
    )

    @settings(
        max_examples=5000,  # one batch; batches repeat until the time is up
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(inputs)
    def explore(data: bytes) -> None:
        if not campaign.expired():  # past the deadline the rest of the batch is a no-op
            campaign.one(data)

    while not campaign.expired():
        explore()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engine", choices=["atheris", "hypothesis"], default=None)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--report", type=float, default=30, help="progress line every N seconds")
    parser.add_argument("--max-len", type=int, default=64 * 1024)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "fuzz", help="where findings are saved"
    )
    parser.add_argument(
        "--draft", type=int, default=1280, help="JPEG draft size as the server uses it (0: none)"
    )
    args, extra = parser.parse_known_args()

    engine = args.engine
    if engine is None:
        try:
            import atheris  # noqa: F401

            engine = "atheris"
        except ImportError:
            engine = "hypothesis"
    draft = (args.draft, args.draft) if args.draft else None
    if engine == "atheris":
        import atheris

        # Before anything imports them: coverage feedback from Pillow's Python side and ours.
        with atheris.instrument_imports(include=["PIL", "preprocessing", "serving.provenance"]):
            import PIL.Image  # noqa: F401
            import PIL.ImageOps  # noqa: F401

            import preprocessing.augment  # noqa: F401
            import preprocessing.decode  # noqa: F401
            import preprocessing.tensor  # noqa: F401
            import preprocessing.watermark  # noqa: F401
            import serving.provenance  # noqa: F401
    warnings.simplefilter("ignore")  # Pillow's warnings about the corrupt EXIF the mutations make
    campaign = Campaign(args.seconds, args.out, args.report, draft)
    print(f"fuzz_decode: engine {engine}, {args.seconds:.0f} s, limits {campaign.fuzz.LIMITS}", flush=True)
    if engine == "atheris":
        run_atheris(campaign, args.max_len, extra)  # exits from inside when the time is up
    else:
        run_hypothesis(campaign)
    sys.exit(campaign.summary(engine))


if __name__ == "__main__":
    main()
