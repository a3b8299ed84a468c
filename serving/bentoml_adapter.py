"""The one place that changes BentoML's behaviour from the inside: its adaptive batching wait.

BentoML's CorkDispatcher holds a request back when its optimizer expects more to arrive: it
waits up to the *average queueing time of the last 50 batches*. Under load that average is
the time requests queued behind a busy model, so once the load stops a lone request still
waits that long, and its own wait keeps the average up (decaying by 5 % per 5-second refresh):
after a 64-client burst, concurrency-1 latency stayed well above its idle value.

On a CPU the model's cost grows with the batch (duration ~ a * n + b, with b small), so waiting
on purpose buys little. Greedy: dispatch whatever is queued as soon as the model is free;
batches still form under load, because requests pile up while a batch runs; max_batch_size and
max_latency_ms keep their meaning. BentoML has no public setting for this: configurable
batching strategies were proposed upstream and not merged
(https://github.com/bentoml/BentoML/pull/3630; "no major modifications will be made to
adaptive batching", https://github.com/bentoml/BentoML/pull/3664).

Guarded: it applies only to the BentoML version it was written and tested against; on any other
the server logs a warning and keeps BentoML's own policy. tests/test_bentoml_adapter.py fails the
day the patch stops taking effect. `DEEPFAKE_BATCH_POLICY=bentoml` keeps BentoML's policy.
"""

from __future__ import annotations

import logging

import bentoml

TESTED_BENTOML = "1.4.39"
logger = logging.getLogger("deepfake")


def use_greedy_batching() -> bool:
    """Make every CorkDispatcher's optimizer report no wait; True if it took effect."""
    if bentoml.__version__ != TESTED_BENTOML:
        logger.warning(
            "greedy batching is written for BentoML %s, not %s: keeping BentoML's batching wait",
            TESTED_BENTOML,
            bentoml.__version__,
        )
        return False
    from bentoml._internal.marshal.dispatcher import Optimizer

    if getattr(Optimizer, "_greedy", False):
        return True
    refresh = Optimizer.trigger_refresh

    def trigger_refresh(self: Optimizer) -> None:
        refresh(self)  # keeps the duration model (o_a, o_b) used for max_latency_ms
        self.wait = 0.0  # never hold a request back on purpose

    Optimizer.trigger_refresh = trigger_refresh
    Optimizer._greedy = True
    return True
