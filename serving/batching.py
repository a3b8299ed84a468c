"""Batching policy of the model service: greedy, instead of BentoML's learned wait.

BentoML's CorkDispatcher holds a request back when its optimizer expects more to arrive: it
waits up to the *average queueing time of the last 50 batches*. Under load that average is
the time requests queued behind a busy model, so once the load stops a lone request still
waits that long, and its own wait keeps the average up (decaying by 5 % per 5-second
refresh): after a 64-client burst, concurrency-1 latency stayed well above its idle value.

On a CPU the model's cost grows with the batch (duration ~ a * n + b, with b small), so
waiting on purpose buys little. Greedy: dispatch whatever is queued as soon as the model is
free. Batches still form under load, because requests pile up while a batch runs; max_batch_size
and max_latency_ms keep their meaning. `DEEPFAKE_BATCH_POLICY=bentoml` restores the upstream
behaviour (for comparison: bench/suite.py).
"""

from __future__ import annotations


def use_greedy_batching() -> None:
    from bentoml._internal.marshal.dispatcher import Optimizer

    if getattr(Optimizer, "_greedy", False):
        return
    refresh = Optimizer.trigger_refresh

    def trigger_refresh(self: Optimizer) -> None:
        refresh(self)  # keeps the duration model (o_a, o_b) used for max_latency_ms
        self.wait = 0.0  # never hold a request back on purpose

    Optimizer.trigger_refresh = trigger_refresh
    Optimizer._greedy = True
