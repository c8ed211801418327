r"""Where a cycle's time goes: emulator, guidance, weights and the filter's own work.

Inside one compiled cycle the phases cannot be timed separately, so each is compiled and
timed on its own on the same particles, observation and key:

* **emulator**: the unguided proposal of every particle (the free forecast);
* **guidance**: the guided proposal minus the unguided one (MMPS/DPS/SDA work);
* **weights**: the predictive weights :math:`\log p(y\mid s_i)` of every particle;
* **filter**: the whole cycle minus the phases above (tempering, resampling, gathers,
  EnKF algebra, bookkeeping). Separately compiled phases can sum to more than the fused
  cycle, so this difference is clipped at 0 and only resolves large costs; hence also
* **selection**: tempering, resampling and the ancestor gather of a particle filter, timed
  directly on their own.

All phases of a filter run at fixed cost per cycle (fixed solver iterations, a fixed
bisection count), so one profile stands for every cycle. Each time is the median of
``repeats`` calls after a compiling call.
"""

from __future__ import annotations

import functools
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .filters.particle import (
    WEIGHT_STREAM,
    AbstractFilter,
    ParticleFilter,
    _propagate,
    _select,
    particle_keys,
)
from .filters.proposals import EmulatorProposal

PHASES = ("emulator", "guidance", "weights", "filter", "selection", "cycle")


def _median_seconds(fn, *args, repeats: int, budget: float | None = None) -> float:
    """Median of up to ``repeats`` timed calls after a compiling call; with ``budget`` it
    stops early once the timed calls have taken that many seconds (at least one call)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - tic)
        if budget is not None and sum(times) >= budget:
            break
    return float(np.median(times))


def phase_seconds(
    filter_: AbstractFilter,
    state,
    y,
    observation_model,
    key,
    *,
    repeats: int = 3,
    budget: float | None = None,
) -> dict[str, float]:
    """Seconds per phase (see the module docstring) of one cycle of ``filter_``.

    Each phase is the median of up to ``repeats`` calls; with ``budget`` (seconds) a phase
    stops repeating once its timed calls have taken that long, so that profiling a run
    whose cycles take seconds does not cost several extra cycles per phase.
    """
    n = state.log_weights.shape[0]
    keys = particle_keys(key, n)
    timed = functools.partial(_median_seconds, repeats=repeats, budget=budget)
    proposal = getattr(filter_, "proposal", None)
    out: dict[str, float] = dict.fromkeys(PHASES, 0.0)

    @eqx.filter_jit
    def cycle(f, s, y, k):
        return f.step(s, y, observation_model, k)

    out["cycle"] = timed(cycle, filter_, state, y, key)
    if not isinstance(proposal, EmulatorProposal):
        out["filter"] = out["cycle"]
        return out
    unguided = proposal.unguided()

    @eqx.filter_jit
    def propagate(p, particles, y, keys):
        return _propagate(p, keys, particles, y, observation_model, filter_.particle_map)

    out["emulator"] = timed(propagate, unguided, state.particles, y, keys)
    spent = out["emulator"]
    if proposal.is_guided:
        guided = timed(propagate, proposal, state.particles, y, keys)
        out["guidance"] = max(guided - out["emulator"], 0.0)
        spent = guided
    particle_filter = isinstance(filter_, ParticleFilter)
    if particle_filter and filter_.potential.acts_before_move:
        emulator = filter_.emulator

        @eqx.filter_jit
        def weights(w, particles, y, keys):
            def one(k, s):
                k = jax.random.fold_in(k, WEIGHT_STREAM)
                return w.log_likelihood(s, y, observation_model, emulator, key=k)

            return filter_.particle_map(one, keys, particles)

        out["weights"] = timed(weights, filter_.potential, state.particles, y, keys)
        spent += out["weights"]
    if particle_filter:
        out["selection"] = _selection_seconds(filter_, state, y, observation_model, key, timed)
    out["filter"] = max(out["cycle"] - spent, 0.0)
    return out


def _selection_seconds(filter_: ParticleFilter, state, y, observation_model, key, timed) -> float:
    """Seconds of the particle filter's selection, on made-up log-likelihoods or predictions."""
    n = state.log_weights.shape[0]
    if filter_.selects_from_predictions:
        # Block-local selection and inflation work on predicted observations: time that path
        # (inflation, per-observation terms, per-block α and resampling, the stitch).

        @eqx.filter_jit
        def local_selection(f, predictions, log_weights, particles, y, key):
            keys = particle_keys(key, predictions.shape[0])
            return f.select_from_predictions(
                particles, predictions, log_weights, y, observation_model, key, keys=keys
            )[0]

        dtype = state.log_weights.dtype
        observed = jnp.where(jnp.isfinite(y), y, 0.0).astype(dtype)
        offsets = jnp.linspace(0.0, 3.0, n, dtype=dtype)[:, None]
        return timed(
            local_selection,
            filter_,
            observed[None, :] + offsets,
            state.log_weights,
            state.particles,
            y,
            key,
        )
    else:

        @eqx.filter_jit
        def selection(f, log_likelihoods, log_weights, particles, key):
            ancestors, *_ = _select(log_likelihoods, log_weights, f.tempering, f.resampling, key)
            return jax.tree_util.tree_map(lambda leaf: leaf[ancestors], particles)

        log_likelihoods = -jnp.linspace(0.0, 50.0, n, dtype=state.log_weights.dtype)
        return timed(
            selection,
            filter_,
            log_likelihoods,
            state.log_weights,
            state.particles,
            key,
        )
