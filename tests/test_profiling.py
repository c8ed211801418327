"""The phase profiler's timing loop: repeats, and the time budget that runs use."""

from __future__ import annotations

import time

import jax.numpy as jnp

from filtrax.profiling import _median_seconds


class _SlowCall:
    """Counts its calls; each takes ``seconds``."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        time.sleep(self.seconds)
        return x


def test_repeats_are_timed_after_one_compiling_call():
    fn = _SlowCall(0.01)
    seconds = _median_seconds(fn, jnp.zeros(2), repeats=4)
    assert fn.calls == 1 + 4
    assert 0.01 <= seconds < 0.5


def test_budget_stops_repeating_once_spent():
    fn = _SlowCall(0.06)
    _median_seconds(fn, jnp.zeros(2), repeats=10, budget=0.1)
    assert fn.calls == 1 + 2  # 0.06 s < budget, 0.12 s >= budget
    fn = _SlowCall(0.06)
    _median_seconds(fn, jnp.zeros(2), repeats=10, budget=0.01)
    assert fn.calls == 1 + 1  # at least one timed call
