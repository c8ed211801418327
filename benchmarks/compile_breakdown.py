"""Where a cold start of ``make demo``'s config spends its compile time (issue 28).

Two measurements, side by side in one process with the persistent cache off:

1. **The build** (:func:`filtrax.experiments.factory.build_experiment`): every XLA
   compilation it triggers, summed per call site in filtrax (the two innermost frames),
   largest first. The eager initial forecast of the hybrid emulator's dynamical core
   (``coarse_forecast.py``) is one compiled program (it was compiled op by op, 126 programs,
   until 2026-12-08).
2. **The cycle steps** of the free ensemble and the filter, lowered once and compiled under
   XLA option variants (``Lowered.compile(compiler_options=...)``): compile seconds, two
   timed runs, and whether the new particles equal the default's bit for bit.

::

    .venv/bin/python benchmarks/compile_breakdown.py
"""

from __future__ import annotations

import collections
import logging
import os
import platform
import time
import traceback

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from filtrax.demo import DEMO_CONFIG
from filtrax.experiments.config import config_from_dict
from filtrax.experiments.factory import build_experiment

#: XLA:CPU options tried on the cycle steps (name -> compiler_options).
VARIANTS = {
    "default": {},
    "no expensive LLVM passes": {"xla_llvm_disable_expensive_passes": True},
    "backend optimisation 1": {"xla_backend_optimization_level": 1},
    "backend optimisation 0": {"xla_backend_optimization_level": 0},
}


class _CompileSites(logging.Handler):
    """Sums jax's "Finished XLA compilation" seconds per filtrax call site."""

    def __init__(self):
        super().__init__()
        self.count, self.seconds, self._site = collections.Counter(), collections.Counter(), ""

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("Compiling "):
            frames = [f for f in traceback.extract_stack() if "/filtrax/" in f.filename]
            self._site = "; ".join(
                f"{f.filename.split('/filtrax/')[-1]}:{f.lineno}" for f in frames[-2:]
            )
            self.count[self._site] += 1
        elif message.startswith("Finished XLA compilation"):
            self.seconds[self._site] += float(message.split(" in ")[-1].split()[0])


def build_breakdown():
    sites = _CompileSites()
    log = logging.getLogger("jax")
    log.addHandler(sites)
    log.setLevel(logging.DEBUG)
    jax.config.update("jax_log_compiles", True)
    tic = time.perf_counter()
    experiment = build_experiment(config_from_dict(DEMO_CONFIG))
    wall = time.perf_counter() - tic
    jax.config.update("jax_log_compiles", False)
    log.removeHandler(sites)
    total = sum(sites.seconds.values())
    print(f"build: {wall:.1f} s wall, {total:.1f} s compiling in {sum(sites.count.values())} "
          f"programs; by call site:")  # fmt: skip
    for site, seconds in sites.seconds.most_common(8):
        print(f"  {seconds:6.2f} s  {sites.count[site]:3d} programs  {site}")
    return experiment


def step_variants(experiment):
    y = jnp.asarray(experiment.observations[0])
    key = jax.random.key(0)
    print(f"\n{'cycle step':9s} {'XLA options':26s} {'compile':>8s} {'run 1':>7s} {'run 2':>7s}  "
          f"bit-identical")  # fmt: skip
    for member, filter_ in (("free", experiment.baseline), ("filter", experiment.filter)):
        state = filter_.init(experiment.initial_particles)
        arrays, static = eqx.partition((filter_, experiment.filter_observation), eqx.is_array)

        def step(arrays, state, y, key, static=static):
            f, observation_model = eqx.combine(arrays, static)
            return f.step(state, y, observation_model, key)

        lowered = jax.jit(step).lower(arrays, state, y, key)
        reference = None
        for name, options in VARIANTS.items():
            tic = time.perf_counter()
            compiled = lowered.compile(compiler_options=options or None)
            seconds = time.perf_counter() - tic
            runs = []
            for _ in range(2):
                tic = time.perf_counter()
                out = jax.block_until_ready(compiled(arrays, state, y, key))
                runs.append(time.perf_counter() - tic)
            leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(out[0].particles)]
            reference = leaves if reference is None else reference
            pairs = zip(leaves, reference, strict=True)
            same = all(np.array_equal(a, b, equal_nan=True) for a, b in pairs)
            print(f"{member:9s} {name:26s} {seconds:7.1f}s {runs[0]:6.2f}s {runs[1]:6.2f}s  "
                  f"{'yes' if same else 'no'}")  # fmt: skip


def main() -> None:
    jax.config.update("jax_enable_compilation_cache", False)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"jax {jax.__version__}; persistent cache off")  # fmt: skip
    step_variants(build_breakdown())


if __name__ == "__main__":
    main()
