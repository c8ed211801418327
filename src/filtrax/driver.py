r"""The one cycle loop: :func:`assimilate` runs any filter over a sequence of observations.

The loop is a ``jax.lax.scan`` over cycles inside one ``jit``; the filter supplies the
pure ``step``. The cycle key is ``fold_in(root, k)`` for cycle ``k`` (see
:mod:`filtrax.filters.particle`). Inputs are validated eagerly, before anything is traced,
so that a shape mismatch or an empty observation set is a ``ValueError`` naming the
argument; a non-finite particle or log-likelihood met during the run is reported per cycle
in :class:`~filtrax.filters.particle.CycleDiagnostics` and raised as
``FloatingPointError`` (naming the first bad cycle) unless ``allow_nonfinite``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree

from ._typing import Key
from .filters.particle import AbstractFilter, CycleDiagnostics, FilterState, num_particles_of
from .observations.model import ObservationModel


class AssimilationResult(eqx.Module):
    """The output of :func:`assimilate`.

    Attributes:
        final_state: the filter state after the last cycle (resume from it).
        diagnostics: :class:`CycleDiagnostics` with a leading cycle axis.
        analysis: the analysis ensemble's current frames per cycle,
            ``(cycle, particle, *frame)``, or ``None`` when not recorded.
        analysis_mean: the ensemble mean frame per cycle, ``(cycle, *frame)``.
        analysis_spread: ``sqrt`` of the unbiased ensemble variance per cycle, ``(cycle, *frame)``.
    """

    final_state: FilterState
    diagnostics: CycleDiagnostics
    analysis: Float[Array, "cycle particle *frame"] | None
    analysis_mean: Float[Array, " cycle *frame"]
    analysis_spread: Float[Array, " cycle *frame"]


def _validate(
    filter: AbstractFilter,
    particles: PyTree,
    observations: Array,
    observation: ObservationModel,
) -> None:
    if not isinstance(filter, AbstractFilter):
        raise ValueError(f"filter must be an AbstractFilter, got {type(filter).__name__}")
    if not isinstance(observation, ObservationModel):
        raise ValueError(
            f"observation must be an ObservationModel, got {type(observation).__name__}"
        )
    n = num_particles_of(particles)
    if n < 1:
        raise ValueError("initial_particles has no particle (leading axis of size 0)")
    filter.particle_map.check(n)
    for leaf in jax.tree_util.tree_leaves(particles):
        if leaf.shape[0] != n:
            raise ValueError(
                f"initial_particles leaves disagree on the particle count: {leaf.shape[0]} vs {n}"
            )
        if not bool(jnp.all(jnp.isfinite(leaf))):
            raise ValueError("initial_particles contains NaN or infinite values")
    obs = np.asarray(observations)
    if obs.ndim != 2:
        raise ValueError(
            f"observations must have shape (cycle, {observation.num_observations}), got {obs.shape}"
        )
    observation.check_observations(
        obs, name="observations", require_observed=filter.requires_observations
    )
    frame = filter.emulator.current_frame(jax.tree_util.tree_map(lambda x: x[0], particles))
    if tuple(frame.shape) != observation.state_shape:
        raise ValueError(
            f"the emulator's frame has shape {tuple(frame.shape)} but the observation operator "
            f"expects state_shape {observation.state_shape}"
        )


@eqx.filter_jit
def _run(filter, state, observations, observation, key, record_ensemble):
    def cycle(state, inputs):
        k, y = inputs
        state, diagnostics = filter.step(state, y, observation, jax.random.fold_in(key, k))
        frames = jax.vmap(filter.emulator.current_frame)(state.particles)
        mean = jnp.mean(frames, axis=0)
        spread = jnp.sqrt(jnp.var(frames, axis=0, ddof=1)) if frames.shape[0] > 1 else 0 * mean
        out = (diagnostics, mean, spread, frames if record_ensemble else None)
        return state, out

    cycles = state.cycle + jnp.arange(observations.shape[0], dtype=state.cycle.dtype)
    return jax.lax.scan(cycle, state, (cycles, observations))


def assimilate(
    filter: AbstractFilter,
    initial_particles: PyTree,
    observations: Float[Array, "cycle obs"],
    observation: ObservationModel,
    *,
    key: Key,
    initial_state: FilterState | None = None,
    record_ensemble: bool = True,
    allow_nonfinite: bool = False,
) -> AssimilationResult:
    """Run ``filter`` over ``observations[k]``, ``k = 0..K-1``.

    Args:
        filter: any :class:`~filtrax.filters.particle.AbstractFilter`.
        initial_particles: particle states with a leading particle axis.
        observations: one observation vector per cycle, NaN where not observed.
        observation: the observation model ``h`` + noise (acts on the emulator's frame).
        key: the root key; cycle ``k`` uses ``fold_in(key, k)``.
        initial_state: resume from a saved :class:`FilterState` (its ``cycle`` continues the
            key sequence) instead of starting from ``initial_particles``.
        record_ensemble: keep every cycle's analysis ensemble (memory ``K·N·frame``).
        allow_nonfinite: return instead of raising when a cycle produced non-finite values.

    Returns:
        An :class:`AssimilationResult`.
    """
    _validate(filter, initial_particles, observations, observation)
    state = filter.init(initial_particles) if initial_state is None else initial_state
    # Sharded layouts: put the particles on their devices before the first cycle.
    state = eqx.tree_at(lambda s: s.particles, state, filter.particle_map.place(state.particles))
    final, (diagnostics, mean, spread, ensemble) = _run(
        filter, state, jnp.asarray(observations), observation, key, record_ensemble
    )
    result = AssimilationResult(final, diagnostics, ensemble, mean, spread)
    if not allow_nonfinite:
        bad = np.flatnonzero(np.asarray(diagnostics.num_nonfinite) > 0)
        if bad.size:
            k = int(bad[0])
            raise FloatingPointError(
                f"cycle {int(state.cycle) + k}: {int(diagnostics.num_nonfinite[k])} particles had "
                f"a non-finite log-likelihood or state (pass allow_nonfinite=True to inspect)"
            )
    return result
