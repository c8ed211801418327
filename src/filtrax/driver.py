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

import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree

from ._typing import Key
from .filters.particle import AbstractFilter, CycleDiagnostics, FilterState, num_particles_of
from .observations.model import ObservationModel


class SaveAt(eqx.Module):
    """What :func:`assimilate` keeps of every cycle, besides its diagnostics (as diffrax's
    ``SaveAt`` says what ``diffeqsolve`` keeps).

    Attributes:
        moments: the ensemble mean and spread of the current frames.
        ensemble: the whole analysis ensemble (memory ``K·N·frame``).
    """

    moments: bool = eqx.field(static=True, default=True)
    ensemble: bool = eqx.field(static=True, default=True)


#: The default: diagnostics, moments and the ensemble of every cycle.
SAVE_EVERYTHING = SaveAt()


class AssimilationResult(eqx.Module):
    """The output of :func:`assimilate`, or of one chunk of its cycles.

    Attributes:
        final_state: the filter state after the last cycle (resume from it).
        diagnostics: :class:`CycleDiagnostics` with a leading cycle axis.
        analysis: the analysis ensemble's current frames per cycle,
            ``(cycle, particle, *frame)``, or ``None`` when not saved.
        analysis_mean: the ensemble mean frame per cycle, ``(cycle, *frame)``, or ``None``.
        analysis_spread: ``sqrt`` of the unbiased ensemble variance per cycle, or ``None``.
        first_cycle: the index of the first cycle held here.
        seconds: wall-clock seconds of computing these cycles (the first chunk's include
            compilation).
    """

    final_state: FilterState
    diagnostics: CycleDiagnostics
    analysis: Float[Array, "cycle particle *frame"] | None
    analysis_mean: Float[Array, " cycle *frame"] | None
    analysis_spread: Float[Array, " cycle *frame"] | None
    first_cycle: int = eqx.field(static=True, default=0)
    seconds: float = eqx.field(static=True, default=0.0)


def _validate(
    filter: AbstractFilter,
    particles: PyTree,
    observations: Array | np.ndarray,
    observation_model: ObservationModel,
    key: Key,
) -> None:
    if not isinstance(filter, AbstractFilter):
        raise ValueError(f"filter must be an AbstractFilter, got {type(filter).__name__}")
    if not isinstance(observation_model, ObservationModel):
        raise ValueError(
            f"observation_model must be an ObservationModel, got {type(observation_model).__name__}"
        )
    n = num_particles_of(particles)
    if not (isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)) and not (
        isinstance(key, jax.Array) and key.dtype == jnp.uint32 and key.shape == (2,)
    ):
        raise ValueError(
            f"key must be a JAX random key such as jax.random.key(0), got {type(key).__name__} "
            f"{key!r}"
        )
    if n < 2:
        raise ValueError(
            f"initial_particles has {n} particle(s) along its leading axis; a particle filter "
            f"needs at least 2 (the leading axis of every leaf is the particle)"
        )
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
        expected = f"(cycle, {observation_model.num_observations})"
        raise ValueError(f"observations must have shape {expected}, got {obs.shape}")
    # A cycle without observations (an all-NaN row) is a forecast step (see the filters).
    observation_model.check_observations(obs, name="observations", require_observed=False)
    leaves = jax.tree_util.tree_leaves(particles)
    if len(leaves) == 1 and tuple(leaves[0].shape) == observation_model.state_shape:
        raise ValueError(
            f"initial_particles has shape {tuple(leaves[0].shape)}, the shape of one state: "
            f"it lacks the leading particle axis; pass shape (N, "
            f"{', '.join(map(str, observation_model.state_shape))}), e.g. jnp.stack of N states"
        )
    frame = filter.emulator.current_frame(jax.tree_util.tree_map(lambda x: x[0], particles))
    if tuple(frame.shape) != observation_model.state_shape:
        shapes = [tuple(leaf.shape) for leaf in jax.tree_util.tree_leaves(particles)]
        raise ValueError(
            f"initial_particles (leaf shapes {', '.join(map(str, shapes))}; the leading axis is "
            f"the particle) gives the emulator's frame shape {tuple(frame.shape)}, but the "
            f"observation operator expects state_shape {observation_model.state_shape}"
        )


@eqx.filter_jit
def _run(filter, state, observations, observation_model, key, save: SaveAt):
    def cycle(state, inputs):
        k, y = inputs
        state, diagnostics = filter.step(state, y, observation_model, jax.random.fold_in(key, k))
        frames = jax.vmap(filter.emulator.current_frame)(state.particles)
        mean = spread = None
        if save.moments:
            mean = jnp.mean(frames, axis=0)
            spread = jnp.sqrt(jnp.var(frames, axis=0, ddof=1)) if frames.shape[0] > 1 else 0 * mean
        return state, (diagnostics, mean, spread, frames if save.ensemble else None)

    cycles = state.cycle + jnp.arange(observations.shape[0], dtype=state.cycle.dtype)
    return jax.lax.scan(cycle, state, (cycles, observations))


def _check_finite(diagnostics: CycleDiagnostics, first_cycle: int) -> None:
    bad = np.flatnonzero(np.asarray(diagnostics.num_nonfinite) > 0)
    if bad.size:
        k = int(bad[0])
        raise FloatingPointError(
            f"cycle {first_cycle + k}: {int(diagnostics.num_nonfinite[k])} particles had "
            f"a non-finite log-likelihood or state (pass allow_nonfinite=True to inspect)"
        )


def _concatenate(chunks: list[AssimilationResult]) -> AssimilationResult:
    def stacked(field: str) -> Any:  # a tree of arrays, or None where nothing was kept
        parts = [getattr(c, field) for c in chunks]
        if parts[0] is None:
            return None
        return jax.tree_util.tree_map(lambda *leaves: jnp.concatenate(leaves), *parts)

    return AssimilationResult(
        chunks[-1].final_state,
        stacked("diagnostics"),
        stacked("analysis"),
        stacked("analysis_mean"),
        stacked("analysis_spread"),
        chunks[0].first_cycle,
        sum(c.seconds for c in chunks),
    )


def assimilate(
    filter: AbstractFilter,
    initial_particles: PyTree,
    observations: Float[Array | np.ndarray, "cycle obs"],
    observation_model: ObservationModel,
    *,
    key: Key,
    initial_state: FilterState | None = None,
    save: SaveAt = SAVE_EVERYTHING,
    chunk_cycles: int | None = None,
    callback: Callable[[AssimilationResult], None] | None = None,
    allow_nonfinite: bool = False,
) -> AssimilationResult:
    """Run ``filter`` over ``observations[k]``, ``k = 0..K-1``: the library's one cycle loop.

    The cycles run as a ``lax.scan`` inside one compiled program, ``chunk_cycles`` at a
    time (all at once by default); every chunk has the same length but perhaps the last,
    so the program compiles once (twice with a shorter last chunk). A row of ``observations``
    that is all NaN is a cycle without observations: the filter moves its members by the
    emulator and keeps them all.

    Args:
        filter: any :class:`~filtrax.filters.particle.AbstractFilter`.
        initial_particles: particle states with a leading particle axis.
        observations: one observation vector per cycle, NaN where not observed.
        observation_model: the observation model ``h`` + noise (acts on the emulator's frame).
        key: the root key; cycle ``k`` uses ``fold_in(key, k)``.
        initial_state: resume from a saved :class:`FilterState` (its ``cycle`` continues the
            key sequence) instead of starting from ``initial_particles``.
        save: what to keep of each cycle (:class:`SaveAt`).
        chunk_cycles: cycles per compiled call (``None``: all).
        callback: called on the host with each chunk's :class:`AssimilationResult` (its
            ``first_cycle``, state after the chunk and saved cycles), e.g. to write and
            checkpoint. With a callback the chunks are its to keep: the result holds the
            final state and the diagnostics only.
        allow_nonfinite: return instead of raising when a cycle produced non-finite values.

    Returns:
        An :class:`AssimilationResult`.
    """
    _validate(filter, initial_particles, observations, observation_model, key)
    state = filter.init(initial_particles) if initial_state is None else initial_state
    # Sharded layouts: put the particles on their devices before the first cycle.
    state = eqx.tree_at(lambda s: s.particles, state, filter.particle_map.place(state.particles))
    observations = jnp.asarray(observations)
    total = observations.shape[0]
    if chunk_cycles is not None and not (isinstance(chunk_cycles, int) and chunk_cycles >= 1):
        raise ValueError(f"chunk_cycles = {chunk_cycles!r}; expected None or an integer >= 1")
    # No cycle at all is one empty chunk: the result has a leading axis of length 0.
    size = max(total, 1) if chunk_cycles is None else chunk_cycles
    chunks = []
    for start in range(0, max(total, 1), size):
        first_cycle = int(state.cycle)
        tic = time.perf_counter()
        state, (diagnostics, mean, spread, ensemble) = jax.block_until_ready(
            _run(filter, state, observations[start : start + size], observation_model, key, save)
        )
        chunk = AssimilationResult(
            state, diagnostics, ensemble, mean, spread, first_cycle, time.perf_counter() - tic
        )
        if not allow_nonfinite:
            _check_finite(diagnostics, first_cycle)
        if callback is not None:
            callback(chunk)
            chunk = AssimilationResult(
                state, diagnostics, None, None, None, first_cycle, chunk.seconds
            )
        chunks.append(chunk)
    return _concatenate(chunks)
