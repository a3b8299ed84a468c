"""The one adapter of BentoML's internals (serving/bentoml_adapter.py): it must take effect on
the version it is written for, and fail this test the day it stops doing so."""

from __future__ import annotations

import inspect

import bentoml
import pytest

from serving import bentoml_adapter


def test_greedy_batching_takes_effect() -> None:
    from bentoml._internal.marshal.dispatcher import CorkDispatcher, Optimizer

    assert bentoml_adapter.use_greedy_batching() is True
    optimizer = Optimizer(max_latency=1.0)
    for n in range(1, 9):
        optimizer.log_outbound(n=n, wait=0.5, duration=0.01 * n + 0.002)
    optimizer.trigger_refresh()
    assert optimizer.wait == 0.0  # the learned wait (0.5 s here) is gone
    assert 0.005 < optimizer.o_a < 0.02  # the duration model, which max_latency_ms uses, is kept
    # The dispatcher still decides to hold a request back by this very attribute.
    assert "self.optimizer.wait" in inspect.getsource(CorkDispatcher.controller)


def test_other_bentoml_versions_keep_their_own_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bentoml, "__version__", "9.9.9")
    assert bentoml_adapter.use_greedy_batching() is False
