r"""Particle filters on one cycle interface: FA-APF, bootstrap PF and the free ensemble.

Every filter is an ``eqx.Module`` with ``step(state, y, observation, key)``; the cycle loop
lives once, in :func:`filtrax.assimilate`. Weights are kept as logs throughout.

**Keys.** The key of cycle ``k`` is ``fold_in(root, k)`` and the key of particle ``i`` in
that cycle is ``fold_in(fold_in(root, k), i)``; particle ``i`` then derives its weight
noise (stream 0) and proposal noise (stream 1) from it. Member ``i``'s randomness therefore
does not depend on the number of particles. Resampling uses the cycle key folded with
:data:`RESAMPLING_STREAM`, an index no particle reaches.

**FA-APF** (Pitt & Shephard 1999; Savary, Rozet & Louppe 2025). With the optimal
proposal, the incremental weight :math:`p(y^{k+1}\mid s^k)` does not depend on the new
sample, so ancestors are selected *before* propagation and the children are equally
weighted:

1. :math:`\ell_i \approx \log p(y^{k+1}\mid s^k_i)` (Dirac or moment-matched, see
   :mod:`.weights`);
2. α from the tempering strategy; :math:`\log w_i = \log w^k_i + \alpha\ell_i`;
3. ancestors :math:`a_i` by resampling :math:`w`;
4. :math:`x^{k+1}_i \sim q(\cdot\mid s^k_{a_i}, y^{k+1})` by guided reverse diffusion.

**Bootstrap PF** (Gordon, Salmond & Smith 1993): propagate with the unguided emulator,
weight by :math:`p(y\mid x^{k+1})` (optionally tempered), resample.

**Block-local selection and inflation** (both optional, off by default): with a
:class:`~.localisation.BlockLocalisation` the FA-APF and the bootstrap PF weigh, temper and
resample per block of sites and stitch each particle from its blocks' ancestors; with an
:mod:`.inflation` strategy they widen the weighted ensemble (and its predicted observations)
about its mean first. Both work on per-observation log-likelihoods of the predictions.

The log-evidence increment is :math:`\log\sum_i w^k_i\,\hat p_i` with the *untempered*
:math:`\hat p_i` (:math:`\exp\ell_i`); it is unbiased for the bootstrap PF and for the
FA-APF with exact predictive weights.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PyTree

from .. import streams
from .._typing import Ancestors, Key, LogWeights, Observation, ParticleKeys, Scalar
from ..emulators._base import AbstractEmulator
from ..observations.model import ObservationModel
from ..parallel import AbstractParticleMap, VectorisedParticles
from ..resampling import (
    RESAMPLERS,
    Resampler,
    as_resampler,
    effective_sample_size,
    normalize_log_weights,
    systematic,
)
from .inflation import AbstractInflation, FixedInflation, inflate
from .likelihood_split import AbstractLikelihoodSplit, FullLikelihoodMove
from .localisation import BlockLocalisation
from .proposals import EmulatorProposal
from .rejuvenation import AbstractRejuvenation, NoRejuvenation
from .tempering import AbstractTempering, ESSBandTempering, FixedTempering
from .weights import AbstractPredictiveWeight, DiracPredictiveWeight

RESAMPLING_STREAM = streams.RESAMPLING
WEIGHT_STREAM = streams.WEIGHT
PROPOSAL_STREAM = streams.PROPOSAL


class FilterState(eqx.Module):
    """The filter's state between cycles.

    Attributes:
        particles: the particle states, with a leading particle axis.
        log_weights: normalised log-weights, shape ``(N,)``.
        cycle: the index of the next cycle.
    """

    particles: PyTree
    log_weights: LogWeights
    cycle: Int[Array, ""]


class CycleDiagnostics(eqx.Module):
    """What each cycle records (stacked over cycles by the driver).

    Attributes:
        ess: effective sample size of the selection weights, before resampling.
        alpha: the tempering exponent used (0 for the free ensemble).
        log_evidence_increment: ``log p̂(y^{k+1} | y^{1:k})`` (NaN where not estimated).
        forward_calls, backward_calls: denoiser evaluations and VJPs in this cycle.
        num_nonfinite: particles whose log-likelihood or new state was not finite.
        inflation: the multiplicative inflation λ applied in this cycle (1 when none).
        move_gain: the share ``g`` of the innovation the guided move absorbed
            (:func:`filtrax.filters.hybrid.move_gain`), where a Kalman update after the
            move measured it; NaN elsewhere.
    """

    ess: Scalar
    alpha: Scalar
    log_evidence_increment: Scalar
    forward_calls: Int[Array, ""]
    backward_calls: Int[Array, ""]
    num_nonfinite: Int[Array, ""]
    inflation: Scalar
    move_gain: Scalar


def particle_keys(cycle_key: Key, num_particles: int) -> ParticleKeys:
    """``fold_in(cycle_key, i)`` for ``i = 0..N-1``."""
    return jax.vmap(lambda i: jax.random.fold_in(cycle_key, i))(jnp.arange(num_particles))


def num_particles_of(particles: PyTree) -> int:
    leaves = jax.tree_util.tree_leaves(particles)
    if not leaves:
        raise ValueError("particles is an empty pytree")
    return int(leaves[0].shape[0])


def _nonfinite_particles(particles: PyTree) -> Bool[Array, " particle"]:
    flags = [
        ~jnp.all(jnp.isfinite(leaf.reshape(leaf.shape[0], -1)), axis=1)
        for leaf in jax.tree_util.tree_leaves(particles)
    ]
    return jnp.any(jnp.stack(flags), axis=0)


def _sanitize(log_likelihoods: Float[Array, " particle *block"]) -> tuple[Array, Array]:
    """NaN log-likelihoods become −inf (zero weight); returns them and the NaN flags."""
    bad = jnp.isnan(log_likelihoods)
    return jnp.where(bad, -jnp.inf, log_likelihoods), bad


def _temper(log_likelihoods: Array, alpha: Scalar) -> Array:
    # α = 0 must give exactly uniform weights, even for −inf log-likelihoods (0·∞ is NaN).
    return jnp.where(alpha > 0, alpha * log_likelihoods, 0.0)


def _propagate(
    proposal: EmulatorProposal,
    keys,
    particles,
    y,
    observation_model,
    particle_map: AbstractParticleMap,
):
    """Move every particle with its own key (stream :data:`PROPOSAL_STREAM`)."""

    def one(k, s):
        return proposal(s, y, observation_model, key=jax.random.fold_in(k, PROPOSAL_STREAM))

    return particle_map.constrain(particle_map(one, keys, particles))


def _select(
    log_likelihoods: Array,
    log_weights: LogWeights,
    tempering: AbstractTempering,
    resample: Resampler,
    key: Key,
    *,
    uniform_selection: Array | bool = False,
) -> tuple[Ancestors, Scalar, Scalar, Scalar, LogWeights]:
    """Temper, weight and resample; returns ``(ancestors, α, ESS before resampling,
    log-evidence, selection log-weights)``.

    ``uniform_selection`` forces α = 0 (every particle kept once by systematic resampling).
    """
    n = log_likelihoods.shape[0]
    previous = normalize_log_weights(log_weights)
    alpha = tempering.exponent(log_likelihoods, previous)
    alpha = jnp.where(uniform_selection, jnp.zeros_like(alpha), alpha)
    selection = previous + _temper(log_likelihoods, alpha)
    ess = effective_sample_size(selection)
    evidence = jax.scipy.special.logsumexp(previous + log_likelihoods)
    ancestors = resample(jax.random.fold_in(key, RESAMPLING_STREAM), selection, n)
    return ancestors, alpha, ess, evidence, selection


def _select_blocks(
    terms: Float[Array, "particle obs"],
    log_weights: LogWeights,
    localisation: BlockLocalisation,
    observation_model: ObservationModel,
    frame_template: Array,
    tempering: AbstractTempering,
    resample: Resampler,
    key: Key,
    *,
    uniform_selection: Array | bool = False,
) -> tuple[Array, Scalar, Scalar, Scalar, Array, np.ndarray]:
    """:func:`_select` per block of sites (:mod:`.localisation`).

    Block ``b`` resamples with the key ``fold_in(fold_in(key, RESAMPLING_STREAM), b)``.
    Returns ``(ancestors (B, N), mean α, mean ESS, log-evidence, NaN flags, site blocks)``;
    the log-evidence is the global one, from the summed log-likelihoods.
    """
    site_blocks, num_blocks = localisation.site_blocks(frame_template.shape)
    observation_blocks = localisation.observation_blocks(observation_model, frame_template)
    block_ll = localisation.block_log_likelihoods(terms, observation_blocks, num_blocks)
    block_ll, bad = _sanitize(block_ll)
    block_keys = particle_keys(jax.random.fold_in(key, RESAMPLING_STREAM), num_blocks)

    def one_block(ll, block_key):
        return _select(
            ll, log_weights, tempering, resample, block_key, uniform_selection=uniform_selection
        )

    ancestors, alpha, ess, _, _ = jax.vmap(one_block, in_axes=(1, 0))(block_ll, block_keys)
    previous = normalize_log_weights(log_weights)
    evidence = jax.scipy.special.logsumexp(previous + jnp.sum(block_ll, axis=1))
    return ancestors, jnp.mean(alpha), jnp.mean(ess), evidence, jnp.any(bad, axis=1), site_blocks


class AbstractFilter(eqx.Module):
    """One assimilation cycle as a pure function of explicit state and key.

    Attributes:
        particle_map: how per-particle work is laid out (keyword-only): vectorised on one
            device (default), in batches of ``batch_size``, or sharded over a device mesh
            (:mod:`filtrax.parallel`). α and the ancestors do not depend on it; the
            analysis is bit-identical across device counts at a fixed batch size, and
            agrees to float32 round-off across batch sizes.
    """

    particle_map: AbstractParticleMap = eqx.field(default=VectorisedParticles(), kw_only=True)

    @property
    @abc.abstractmethod
    def emulator(self) -> AbstractEmulator:
        """The emulator whose frames the filter tracks."""

    @abc.abstractmethod
    def call_counts(self, num_particles: int, num_observations: int) -> tuple[int, int]:
        """Denoiser ``(forward evaluations, VJPs)`` per cycle."""

    def init(self, particles: PyTree) -> FilterState:
        """Equally weighted particles at cycle 0."""
        n = num_particles_of(particles)
        dtype = jax.tree_util.tree_leaves(particles)[0].dtype
        return FilterState(particles, uniform_log_weights(n, dtype), jnp.zeros((), jnp.int32))

    @abc.abstractmethod
    def step(
        self, state: FilterState, y: Observation, observation_model: ObservationModel, key: Key
    ) -> tuple[FilterState, CycleDiagnostics]:
        """Assimilate ``y`` (the observation at the end of this cycle; all NaN: none)."""

    def _diagnostics(
        self, ess, alpha, evidence, num_nonfinite, num_particles, num_obs,
        inflation: float | Array = 1.0, move_gain: float | Array = jnp.nan,
    ):  # fmt: skip
        return _cycle_diagnostics(
            self.call_counts(num_particles, num_obs), ess, alpha, evidence, num_nonfinite,
            inflation, move_gain,
        )  # fmt: skip


def uniform_log_weights(n: int, dtype) -> LogWeights:
    """Equal normalised log-weights ``-log N`` of ``n`` particles."""
    return jnp.full((n,), -jnp.log(jnp.asarray(n, dtype)), dtype)


def _unweighted_diagnostics(
    counts, particles, dtype, inflation: float | Array = 1.0
) -> CycleDiagnostics:
    """A cycle without weights: ESS = N, α = 0, no evidence estimate."""
    n = num_particles_of(particles)
    return _cycle_diagnostics(
        counts, jnp.asarray(n, dtype), jnp.zeros((), dtype), jnp.asarray(jnp.nan, dtype),
        jnp.sum(_nonfinite_particles(particles)), inflation,
    )  # fmt: skip


def _cycle_diagnostics(
    counts, ess, alpha, evidence, num_nonfinite,
    inflation: float | Array = 1.0, move_gain: float | Array = jnp.nan,
):  # fmt: skip
    forward, backward = counts
    dtype = jnp.asarray(ess).dtype
    return CycleDiagnostics(
        ess=jnp.asarray(ess, dtype),
        alpha=jnp.asarray(alpha, dtype),
        log_evidence_increment=jnp.asarray(evidence, dtype),
        forward_calls=jnp.asarray(forward, jnp.int32),
        backward_calls=jnp.asarray(backward, jnp.int32),
        num_nonfinite=jnp.asarray(num_nonfinite, jnp.int32),
        inflation=jnp.asarray(inflation, dtype),
        move_gain=jnp.asarray(move_gain, dtype),
    )


def forecast_step(
    proposal: EmulatorProposal,
    particle_map: AbstractParticleMap,
    state: FilterState,
    y: Observation,
    observation_model: ObservationModel,
    key: Key,
) -> tuple[FilterState, CycleDiagnostics]:
    """A cycle with no assimilation: every member moves by the emulator's own transition.

    The weights are kept, α = 0, ESS = N, and no evidence is estimated. This is the free
    ensemble's step, and every filter's step on a cycle without observations.
    """
    proposal = proposal.unguided()
    n = num_particles_of(state.particles)
    keys = particle_keys(key, n)
    children = _propagate(proposal, keys, state.particles, y, observation_model, particle_map)
    forward, backward = proposal.call_counts()
    diagnostics = _unweighted_diagnostics(
        (n * forward, n * backward), children, state.log_weights.dtype
    )
    return FilterState(children, state.log_weights, state.cycle + 1), diagnostics


class AbstractPotential(eqx.Module):
    r"""How a particle filter weighs its particles against :math:`y^{k+1}`: the potential
    :math:`\log G_k` of the Feynman–Kac model (Chopin & Papaspiliopoulos 2020, ch. 5).

    A potential acts *before* the move (on :math:`s^k`, the fully adapted filter: the
    incremental weight :math:`p(y^{k+1}\mid s^k)` does not depend on the new sample, so
    selection precedes propagation) or *after* it (on :math:`x^{k+1}`, the bootstrap
    filter's :math:`p(y^{k+1}\mid x^{k+1})`).
    """

    @property
    @abc.abstractmethod
    def acts_before_move(self) -> bool:
        """Whether the potential weighs the particles at ``k`` (before propagation)."""

    @property
    @abc.abstractmethod
    def splits_per_observation(self) -> bool:
        """Whether ``log G`` is a sum over observations of ``log N(y_j; ŷ_j, R_jj)`` with
        predicted observations ``ŷ`` (what block-local selection and inflation need)."""

    @abc.abstractmethod
    def call_counts(self, num_observations: int) -> tuple[int, int]:
        """Denoiser ``(forward evaluations, VJPs)`` per particle."""

    @abc.abstractmethod
    def log_likelihood(
        self, particle: PyTree, y: Observation, observation_model: ObservationModel,
        emulator: AbstractEmulator, *, key: Key,
    ) -> Scalar:  # fmt: skip
        """``log G`` of one particle."""

    def predicted_observations(
        self, particle: PyTree, observation_model: ObservationModel, emulator: AbstractEmulator,
        *, key: Key,
    ) -> Array:  # fmt: skip
        """``ŷ`` of one particle, when :attr:`splits_per_observation`."""
        raise NotImplementedError(f"{type(self).__name__} does not split per observation")


class PredictivePotential(AbstractPotential):
    r"""The FA-APF's :math:`\log\hat p(y^{k+1}\mid s^k)` from a predictive-weight
    approximation (:mod:`.weights`), on the particles before the move.

    Attributes:
        weight: Dirac (the paper) or moment-matched (tuning-free) predictive weights.
    """

    weight: AbstractPredictiveWeight

    @property
    def acts_before_move(self) -> bool:
        return True

    @property
    def splits_per_observation(self) -> bool:
        return self.weight.splits_per_observation

    def call_counts(self, num_observations):
        return self.weight.call_counts(num_observations)

    def log_likelihood(self, particle, y, observation_model, emulator, *, key):
        return self.weight.log_likelihood(particle, y, observation_model, emulator, key=key)

    def predicted_observations(self, particle, observation_model, emulator, *, key):
        return observation_model.predict(self.weight.predicted_frame(particle, emulator, key=key))


class ObservationLikelihood(AbstractPotential):
    r"""The exact :math:`\log p(y^{k+1}\mid x^{k+1})` of the moved particles (bootstrap PF)."""

    @property
    def acts_before_move(self) -> bool:
        return False

    @property
    def splits_per_observation(self) -> bool:
        return True

    def call_counts(self, num_observations):
        return 0, 0

    def log_likelihood(self, particle, y, observation_model, emulator, *, key):
        return observation_model.log_likelihood(y, emulator.current_frame(particle))

    def predicted_observations(self, particle, observation_model, emulator, *, key):
        return observation_model.predict(emulator.current_frame(particle))


class ParticleFilter(AbstractFilter):
    r"""The particle filter of a Feynman–Kac model: a proposal, a potential, a selection.

    One cycle (the potential acting before the move, the FA-APF; after it, the bootstrap
    PF, which then weighs the moved particles and selects among them):

    1. :math:`\ell_i = \log G(\cdot_i)` from :attr:`potential` (its key: stream
       :data:`WEIGHT_STREAM` of the particle's key);
    2. α from :attr:`tempering`; :math:`\log w_i = \log w^k_i + \alpha\ell_i`;
    3. ancestors by :attr:`resampling`, globally or per block of sites
       (:attr:`localisation`), after :attr:`inflation` of the particles and of their
       predicted observations about their means;
    4. every particle moves by :attr:`proposal` (stream :data:`PROPOSAL_STREAM`), guided by
       the observation model :attr:`likelihood_split` gives it;
    5. :attr:`likelihood_split` completes the moved particles (the paper's FA-APF: nothing
       to do; the ensemble Kalman particle filter: the LETKF with the likelihood that α
       left out, :mod:`.hybrid`).

    A cycle without observations (all NaN) moves the particles by the emulator's own
    transition and keeps them all (:func:`forecast_step`) when the proposal is guided,
    since guidance needs an observation; an unguided filter weighs them uniformly.

    :func:`AuxiliaryParticleFilter` and :func:`BootstrapParticleFilter` build the two
    configurations, with their checks.

    Attributes:
        proposal: the move (guided: the optimal proposal's approximation; unguided: the
            emulator's transition).
        potential: :class:`PredictivePotential` or :class:`ObservationLikelihood`.
        tempering: α strategy.
        resampling: a resampling scheme of :mod:`filtrax.resampling` (a name is looked up).
        skip_first_selection: α = 0 in cycle 0 (particles that start as copies of one
            state differ in weight only by noise).
        localisation: ``None`` (global selection) or a block localisation.
        inflation: λ ≥ 1 about the mean before the weights (:mod:`.inflation`).
        rejuvenation: what moves the selected particles before the proposal
            (:mod:`.rejuvenation`; :class:`NoRejuvenation`: none).
        likelihood_split: what the move and the step after it do with the likelihood
            that tempering left out of the selection (:mod:`.likelihood_split`;
            :class:`FullLikelihoodMove`, the paper's: the move is guided by all of it).
    """

    proposal: EmulatorProposal
    potential: AbstractPotential
    tempering: AbstractTempering
    resampling: Resampler = eqx.field(static=True, default=systematic, converter=as_resampler)
    skip_first_selection: bool = eqx.field(static=True, default=False)
    localisation: BlockLocalisation | None = None
    inflation: AbstractInflation = FixedInflation()
    rejuvenation: AbstractRejuvenation = NoRejuvenation()
    likelihood_split: AbstractLikelihoodSplit = FullLikelihoodMove()

    def __check_init__(self) -> None:
        if self.likelihood_split.is_identity:
            return
        split = type(self.likelihood_split).__name__
        if not (self.potential.acts_before_move and self.proposal.is_guided):
            raise ValueError(
                f"ParticleFilter.likelihood_split = {split} needs a guided move after the "
                f"selection (the FA-APF): it guides the move with the tempered likelihood"
            )
        if self.localisation is not None:
            raise ValueError(
                f"ParticleFilter.likelihood_split = {split} needs global selection, not a "
                f"block localisation: the tempering exponent must be one number per cycle"
            )
        if self.likelihood_split.needs_predictions and not self.potential.splits_per_observation:
            weight = getattr(self.potential, "weight", self.potential)
            raise ValueError(
                f"ParticleFilter.likelihood_split = {split} needs the weights' predicted "
                f"observations, which {type(weight).__name__} does not give; "
                f"use DiracPredictiveWeight"
            )

    @property
    def emulator(self) -> AbstractEmulator:
        return self.proposal.emulator

    @property
    def selects_from_predictions(self) -> bool:
        """Whether selection works on per-observation predictions (block-local selection
        or inflation) rather than on one log-likelihood per particle."""
        return self.localisation is not None or not self.inflation.is_identity

    def call_counts(self, num_particles, num_observations):
        wf, wb = self.potential.call_counts(num_observations)
        pf, pb = self.proposal.call_counts()
        # A split that needs the parents' predictions calls the weights' prediction again.
        again = 1 if self.likelihood_split.needs_predictions else 0
        return num_particles * ((1 + again) * wf + pf), num_particles * ((1 + again) * wb + pb)

    def step(self, state, y, observation_model, key):
        if not self.proposal.is_guided:
            return self._assimilate(state, y, observation_model, key)
        observed = jnp.any(jnp.isfinite(y))
        return jax.lax.cond(
            observed,
            lambda s: self._assimilate(s, y, observation_model, key),
            lambda s: forecast_step(self.proposal, self.particle_map, s, y, observation_model, key),
            state,
        )

    def _assimilate(self, state, y, observation_model, key):
        n = num_particles_of(state.particles)
        keys = particle_keys(key, n)
        first = self.skip_first_selection & (state.cycle == 0)
        if self.potential.acts_before_move:
            parents, alpha, ess, evidence, bad, factor = self.select(
                state.particles, state.log_weights, y, observation_model, keys, key,
                uniform_selection=first,
            )  # fmt: skip
            children, gain = self._move_and_complete(
                keys, parents, y, observation_model, alpha, first
            )
            selected = children
        else:
            gain = jnp.nan
            children = self._move(keys, state.particles, y, observation_model)
            selected, alpha, ess, evidence, bad, factor = self.select(
                children,
                state.log_weights,
                y,
                observation_model,
                keys,
                key,
                uniform_selection=first,
            )
        nonfinite = jnp.sum(bad | _nonfinite_particles(children))
        uniform = uniform_log_weights(n, state.log_weights.dtype)
        diagnostics = self._diagnostics(
            ess, alpha, evidence, nonfinite, n, observation_model.num_observations, factor, gain
        )
        return FilterState(selected, uniform, state.cycle + 1), diagnostics

    def _move(self, keys, particles, y, observation_model):
        return _propagate(self.proposal, keys, particles, y, observation_model, self.particle_map)

    def _move_and_complete(self, keys, parents, y, observation_model, alpha, first):
        """The guided move of the selected ``parents``, then :attr:`likelihood_split`'s step;
        returns the particles and the move gain the split measured (NaN where none)."""
        split = self.likelihood_split
        if split.is_identity:
            return self._move(keys, parents, y, observation_model), jnp.nan
        # A skipped first selection (α forced to 0) leaves the whole likelihood to the move,
        # as the paper's filter does.
        alpha = jnp.where(first, jnp.ones_like(alpha), alpha)
        children = self._move(keys, parents, y, split.guiding_observation(observation_model, alpha))
        needs = split.needs_predictions
        predicted = self._predictions(keys, parents, observation_model) if needs else None
        completed, gain = split.complete(
            self.emulator, parents, children, y, observation_model, alpha, predicted
        )
        return self.particle_map.constrain(completed), gain

    def _predictions(self, keys, particles, observation_model):
        """Every particle's predicted observations ``ŷ_i`` (its potential's, on the weights'
        key stream): one more predictive-mean call per particle, where the selection's own
        were made before resampling."""

        def predict(s, k):
            return self.potential.predicted_observations(s, observation_model, self.emulator, key=k)

        return self._per_particle(predict, keys, particles)

    def _per_particle(self, fn, keys, particles):
        """``fn(particle, key)`` for every particle, the key on stream :data:`WEIGHT_STREAM`,
        gathered on every device (selection needs all of them)."""

        def one(k, s):
            return fn(s, jax.random.fold_in(k, WEIGHT_STREAM))

        return self.particle_map.replicate(self.particle_map(one, keys, particles))

    def select(
        self, particles, log_weights, y, observation_model, keys, key, *, uniform_selection=False
    ):
        """Weigh ``particles`` and select among them: the selected particles (equally
        weighted), α, the ESS before resampling, the log-evidence increment, NaN flags and
        the inflation λ."""
        emulator = self.emulator
        if self.selects_from_predictions:
            predictions = self._predictions(keys, particles, observation_model)
            return self.select_from_predictions(
                particles, predictions, log_weights, y, observation_model, key,
                uniform_selection=uniform_selection, keys=keys,
            )  # fmt: skip

        def weigh(s, k):
            return self.potential.log_likelihood(s, y, observation_model, emulator, key=k)

        log_likelihoods, bad = _sanitize(self._per_particle(weigh, keys, particles))
        ancestors, alpha, ess, evidence, selection = _select(
            log_likelihoods, log_weights, self.tempering, self.resampling, key,
            uniform_selection=uniform_selection,
        )  # fmt: skip
        selected = jax.tree_util.tree_map(lambda leaf: leaf[ancestors], particles)
        selected = self.rejuvenation(selected, particles, selection, keys=keys)
        return (
            self.particle_map.constrain(selected), alpha, ess, evidence, bad,
            jnp.ones((), log_weights.dtype),
        )  # fmt: skip

    def select_from_predictions(
        self, particles, predictions, log_weights, y, observation_model, key, *,
        keys: ParticleKeys, uniform_selection=False,
    ):  # fmt: skip
        """Inflate, weight by ``log N(y; ŷ_i, R)`` per observation, select globally or per
        block; returns what :meth:`select` does."""
        dtype = predictions.dtype
        n = log_weights.shape[0]
        if self.inflation.is_identity:
            factor = jnp.ones((), dtype)
        else:
            factor = self.inflation.factor(predictions, y, observation_model)
            particles = self.particle_map.constrain(inflate(particles, factor))
            predictions = inflate(predictions, factor)
        terms = jax.vmap(lambda p: observation_model.log_likelihood_terms(y, p))(predictions)
        if self.localisation is None:
            log_likelihoods, bad = _sanitize(jnp.sum(terms, axis=1))
            ancestors, alpha, ess, evidence, selection = _select(
                log_likelihoods, log_weights, self.tempering, self.resampling, key,
                uniform_selection=uniform_selection,
            )  # fmt: skip
            selected = jax.tree_util.tree_map(lambda leaf: leaf[ancestors], particles)
            selected = self.rejuvenation(selected, particles, selection, keys=keys)
        else:
            template = self.emulator.current_frame(
                jax.tree_util.tree_map(lambda x: x[0], particles)
            )
            ancestors, alpha, ess, evidence, bad, site_blocks = _select_blocks(
                terms, log_weights, self.localisation, observation_model, template, self.tempering,
                self.resampling, key, uniform_selection=uniform_selection,
            )  # fmt: skip
            selected = self.localisation.stitch(particles, ancestors, site_blocks)
            if not self.rejuvenation.is_identity:
                # Every block selected with weights of its own: the kernel takes its moments
                # from the stitched, equally weighted ensemble.
                uniform = uniform_log_weights(n, log_weights.dtype)
                selected = self.rejuvenation(selected, selected, uniform, keys=keys)
        return self.particle_map.constrain(selected), alpha, ess, evidence, bad, factor


def _check_resampling(name, owner: str) -> None:
    if isinstance(name, str) and name not in RESAMPLERS:
        raise ValueError(f"{owner}.resampling is {name!r}; expected one of {sorted(RESAMPLERS)}")


def AuxiliaryParticleFilter(
    proposal: EmulatorProposal,
    predictive_weight: AbstractPredictiveWeight | None = None,
    tempering: AbstractTempering | None = None,
    resampling: str | Resampler = "systematic",
    skip_first_selection: bool = False,
    localisation: BlockLocalisation | None = None,
    inflation: AbstractInflation | None = None,
    *,
    rejuvenation: AbstractRejuvenation | None = None,
    likelihood_split: AbstractLikelihoodSplit | None = None,
    particle_map: AbstractParticleMap | None = None,
) -> ParticleFilter:
    r"""The fully adapted auxiliary particle filter (FA-APF; Pitt & Shephard 1999; Savary,
    Rozet & Louppe 2025): a :class:`ParticleFilter` whose potential is the predictive
    weight :math:`p(y^{k+1}\mid s^k)`, acting before a guided move.

    Args:
        proposal: a guided :class:`EmulatorProposal` (MMPS for the method).
        predictive_weight: Dirac (paper; default) or moment-matched (tuning-free) weights.
        tempering: α strategy (default :class:`ESSBandTempering`, the paper's); moment-matched
            weights use ``FixedTempering(1.0)``.
        resampling: ``"systematic"`` (default), ``"stratified"``, ``"residual"`` or
            ``"multinomial"``, or the scheme itself.
        skip_first_selection: α = 0 in cycle 0, as the authors do when all particles start
            as copies of one state.
        localisation: ``None`` (the paper's global selection) or a
            :class:`~filtrax.filters.localisation.BlockLocalisation`; needs weights that
            split per observation (Dirac). α and ESS are then means over blocks.
        inflation: λ ≥ 1 on the particles at ``k`` and on their predicted observations
            (:mod:`.inflation`); anything but ``FixedInflation(1)`` needs Dirac weights.
        rejuvenation: moves the selected parents before the guided move
            (:mod:`.rejuvenation`; default none).
        likelihood_split: what is done with the likelihood the tempering leaves out
            (:mod:`.likelihood_split`): :class:`FullLikelihoodMove` (default, the paper's)
            or :class:`~filtrax.filters.hybrid.KalmanRemainder` (the ensemble Kalman
            particle filter); the latter needs global selection.
        particle_map: the particles' layout (:mod:`filtrax.parallel`).
    """
    predictive_weight = DiracPredictiveWeight() if predictive_weight is None else predictive_weight
    tempering = ESSBandTempering() if tempering is None else tempering
    inflation = FixedInflation() if inflation is None else inflation
    _check_resampling(resampling, "AuxiliaryParticleFilter")
    name = type(predictive_weight).__name__
    if localisation is not None and not predictive_weight.splits_per_observation:
        raise ValueError(
            f"AuxiliaryParticleFilter.localisation needs DiracPredictiveWeight, got {name}: "
            "the moment-matched log-likelihood couples observations and does not split into "
            "blocks"
        )
    if not inflation.is_identity and not predictive_weight.splits_per_observation:
        raise ValueError(
            f"AuxiliaryParticleFilter.inflation needs DiracPredictiveWeight, got {name}: it "
            "widens the predicted observations"
        )
    if not proposal.is_guided:
        raise ValueError(
            "AuxiliaryParticleFilter.proposal must be guided (the FA-APF samples the "
            "optimal proposal); use BootstrapParticleFilter for an unguided proposal"
        )
    particle_map = VectorisedParticles() if particle_map is None else particle_map
    return ParticleFilter(
        proposal, PredictivePotential(predictive_weight), tempering, resampling,
        skip_first_selection, localisation, inflation, rejuvenation or NoRejuvenation(),
        likelihood_split or FullLikelihoodMove(), particle_map=particle_map,
    )  # fmt: skip


def BootstrapParticleFilter(
    proposal: EmulatorProposal,
    tempering: AbstractTempering | None = None,
    resampling: str | Resampler = "systematic",
    localisation: BlockLocalisation | None = None,
    inflation: AbstractInflation | None = None,
    *,
    rejuvenation: AbstractRejuvenation | None = None,
    particle_map: AbstractParticleMap | None = None,
) -> ParticleFilter:
    r"""The bootstrap particle filter (Gordon, Salmond & Smith 1993): a
    :class:`ParticleFilter` that moves with the emulator's own transition, then weighs by
    :math:`p(y\mid x^{k+1})` and resamples.

    Args:
        proposal: an unguided :class:`EmulatorProposal`.
        tempering: α on ``log p(y | x)``; ``FixedTempering(1.0)`` (default) is the textbook
            filter.
        resampling: the resampling scheme (or its name).
        localisation: ``None`` (global selection) or a block localisation (the block
            particle filter of Rebeschini & van Handel 2015).
        inflation: λ ≥ 1 on the moved particles about their mean, before the weights.
        rejuvenation: moves the selected particles (:mod:`.rejuvenation`; default none).
        particle_map: the particles' layout (:mod:`filtrax.parallel`).
    """
    tempering = FixedTempering(1.0) if tempering is None else tempering
    inflation = FixedInflation() if inflation is None else inflation
    _check_resampling(resampling, "BootstrapParticleFilter")
    if proposal.is_guided:
        raise ValueError(
            "BootstrapParticleFilter.proposal must be unguided: its weight p(y|x) is only "
            "correct for the emulator's own transition"
        )
    particle_map = VectorisedParticles() if particle_map is None else particle_map
    return ParticleFilter(
        proposal, ObservationLikelihood(), tempering, resampling, False, localisation,
        inflation, rejuvenation or NoRejuvenation(), particle_map=particle_map,
    )  # fmt: skip


class UnguidedEnsembleFilter(AbstractFilter):
    """A filter whose members move by the emulator's own transition (no guidance).

    Attributes:
        proposal: an unguided :class:`EmulatorProposal`.
    """

    proposal: EmulatorProposal

    def __check_init__(self) -> None:
        if self.proposal.is_guided:
            raise ValueError(f"{type(self).__name__}.proposal must be unguided")

    @property
    def emulator(self) -> AbstractEmulator:
        return self.proposal.emulator

    def call_counts(self, num_particles, num_observations):
        pf, pb = self.proposal.call_counts()
        return num_particles * pf, num_particles * pb

    def _unweighted_diagnostics(
        self, particles, dtype, num_observations, inflation: float | Array = 1.0
    ):
        """No weights: ESS = N, α = 0, no evidence estimate."""
        counts = self.call_counts(num_particles_of(particles), num_observations)
        return _unweighted_diagnostics(counts, particles, dtype, inflation)


class FreeEnsemble(UnguidedEnsembleFilter):
    """No assimilation: every member follows the emulator (the reference forecast)."""

    def step(self, state, y, observation_model, key):
        return forecast_step(self.proposal, self.particle_map, state, y, observation_model, key)
