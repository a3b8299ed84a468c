"""The benchmark scripts still run against a real server (their numbers are not tested)."""

from __future__ import annotations

import asyncio

from bench.http_load import histogram_delta, load_images, run
from tests.helpers import ServerProcess


def test_histogram_delta_counts_the_batches_of_the_run() -> None:
    before = {"1.0": 3, "2.0": 3, "4.0": 5, "+Inf": 5}
    after = {"1.0": 4, "2.0": 6, "4.0": 8, "+Inf": 8}  # cumulative: one batch of 1, two of 2
    buckets, mean = histogram_delta(before, after)
    assert buckets == {"1.0": 1, "2.0": 2}
    assert mean == (1 + 2 * 2) / 3


def test_http_load_reports_latency_batches_memory_and_cpu(server: ServerProcess) -> None:
    result = asyncio.run(run(server.url, "detect", 2, 6, 0, load_images([])))
    assert result.statuses == {"200": 6}
    assert result.requests == 6 and result.rps > 0
    assert 0 < result.p50_ms <= result.p99_ms
    assert sum(result.batch_histogram.values()) >= 1  # read from the model service's /metrics
    assert result.server_rss_mb > 100
    assert result.cpu_ms_per_request["model"] > 0
    assert result.cpu_ms_per_request["api"] > 0
