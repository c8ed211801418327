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
from jaxtyping import Array, Float, Int, PyTree

from .._typing import Key, LogWeights, Observation, Scalar
from ..emulators._base import AbstractEmulator
from ..observations.model import ObservationModel
from ..parallel import AbstractParticleMap, VectorisedParticles
from ..resampling import RESAMPLERS, effective_sample_size, get_resampler, normalize_log_weights
from .inflation import AbstractInflation, FixedInflation, inflate
from .localisation import BlockLocalisation
from .proposals import EmulatorProposal
from .tempering import AbstractTempering, ESSBandTempering, FixedTempering
from .weights import AbstractPredictiveWeight, DiracPredictiveWeight

RESAMPLING_STREAM = 2**32 - 1
WEIGHT_STREAM = 0
PROPOSAL_STREAM = 1


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
    """

    ess: Scalar
    alpha: Scalar
    log_evidence_increment: Scalar
    forward_calls: Int[Array, ""]
    backward_calls: Int[Array, ""]
    num_nonfinite: Int[Array, ""]
    inflation: Scalar


def particle_keys(cycle_key: Key, num_particles: int) -> Key:
    """``fold_in(cycle_key, i)`` for ``i = 0..N-1``."""
    return jax.vmap(lambda i: jax.random.fold_in(cycle_key, i))(jnp.arange(num_particles))


def num_particles_of(particles: PyTree) -> int:
    leaves = jax.tree_util.tree_leaves(particles)
    if not leaves:
        raise ValueError("particles is an empty pytree")
    return int(leaves[0].shape[0])


def _nonfinite_particles(particles: PyTree) -> Int[Array, " particle"]:
    flags = [
        ~jnp.all(jnp.isfinite(leaf.reshape(leaf.shape[0], -1)), axis=1)
        for leaf in jax.tree_util.tree_leaves(particles)
    ]
    return jnp.any(jnp.stack(flags), axis=0)


def _sanitize(log_likelihoods: Float[Array, " particle"]) -> tuple[Array, Array]:
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
    observation,
    particle_map: AbstractParticleMap,
):
    """Move every particle with its own key (stream :data:`PROPOSAL_STREAM`)."""

    def one(k, s):
        return proposal(jax.random.fold_in(k, PROPOSAL_STREAM), s, y, observation)

    return particle_map.constrain(particle_map(one, keys, particles))


def _select(
    log_likelihoods: Array,
    log_weights: LogWeights,
    tempering: AbstractTempering,
    resampling: str,
    key: Key,
    *,
    uniform_selection: Array | bool = False,
) -> tuple[Array, Scalar, Scalar, Scalar]:
    """Temper, weight and resample; returns ``(ancestors, α, ESS before resampling, log-evidence)``.

    ``uniform_selection`` forces α = 0 (every particle kept once by systematic resampling).
    """
    n = log_likelihoods.shape[0]
    previous = normalize_log_weights(log_weights)
    alpha = tempering.exponent(log_likelihoods, previous)
    alpha = jnp.where(uniform_selection, jnp.zeros_like(alpha), alpha)
    selection = previous + _temper(log_likelihoods, alpha)
    ess = effective_sample_size(selection)
    evidence = jax.scipy.special.logsumexp(previous + log_likelihoods)
    resample = get_resampler(resampling)
    ancestors = resample(jax.random.fold_in(key, RESAMPLING_STREAM), selection, n)
    return ancestors, alpha, ess, evidence


def _select_blocks(
    terms: Float[Array, "particle obs"],
    log_weights: LogWeights,
    localisation: BlockLocalisation,
    observation: ObservationModel,
    frame_template: Array,
    tempering: AbstractTempering,
    resampling: str,
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
    observation_blocks = localisation.observation_blocks(observation, frame_template)
    block_ll = localisation.block_log_likelihoods(terms, observation_blocks, num_blocks)
    block_ll, bad = _sanitize(block_ll)
    block_keys = particle_keys(jax.random.fold_in(key, RESAMPLING_STREAM), num_blocks)

    def one_block(ll, block_key):
        return _select(
            ll, log_weights, tempering, resampling, block_key, uniform_selection=uniform_selection
        )

    ancestors, alpha, ess, _ = jax.vmap(one_block, in_axes=(1, 0))(block_ll, block_keys)
    previous = normalize_log_weights(log_weights)
    evidence = jax.scipy.special.logsumexp(previous + jnp.sum(block_ll, axis=1))
    return ancestors, jnp.mean(alpha), jnp.mean(ess), evidence, jnp.any(bad, axis=1), site_blocks


def selects_from_predictions(filter_) -> bool:
    """Whether a particle filter selects from per-observation predictions (block-local
    selection or inflation) rather than from one log-likelihood per particle."""
    return filter_.localisation is not None or not filter_.inflation.is_identity


def _select_from_predictions(
    filter_,
    particles: PyTree,
    predictions: Float[Array, "particle obs"],
    log_weights: LogWeights,
    y: Observation,
    observation: ObservationModel,
    key: Key,
    *,
    uniform_selection: Array | bool = False,
):
    """Inflate, weight by ``log N(y; ŷ_i, R)`` per observation, select globally or per block.

    Returns ``(selected particles, α, ESS, log-evidence, NaN flags, λ)``.
    """
    dtype = predictions.dtype
    if filter_.inflation.is_identity:
        factor = jnp.ones((), dtype)
    else:
        factor = filter_.inflation.factor(predictions, y, observation)
        particles = filter_.particle_map.constrain(inflate(particles, factor))
        predictions = inflate(predictions, factor)
    terms = jax.vmap(lambda p: observation.log_likelihood_terms(y, p))(predictions)
    if filter_.localisation is None:
        log_likelihoods, bad = _sanitize(jnp.sum(terms, axis=1))
        ancestors, alpha, ess, evidence = _select(
            log_likelihoods,
            log_weights,
            filter_.tempering,
            filter_.resampling,
            key,
            uniform_selection=uniform_selection,
        )
        selected = jax.tree_util.tree_map(lambda leaf: leaf[ancestors], particles)
    else:
        template = filter_.emulator.current_frame(jax.tree_util.tree_map(lambda x: x[0], particles))
        ancestors, alpha, ess, evidence, bad, site_blocks = _select_blocks(
            terms,
            log_weights,
            filter_.localisation,
            observation,
            template,
            filter_.tempering,
            filter_.resampling,
            key,
            uniform_selection=uniform_selection,
        )
        selected = filter_.localisation.stitch(particles, ancestors, site_blocks)
    return filter_.particle_map.constrain(selected), alpha, ess, evidence, bad, factor


def _uniform_log_weights(n: int, dtype: jnp.dtype) -> LogWeights:
    return jnp.full((n,), -jnp.log(jnp.asarray(n, dtype)), dtype)


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

    @property
    @abc.abstractmethod
    def requires_observations(self) -> bool:
        """Whether every cycle needs at least one observed value."""

    @abc.abstractmethod
    def call_counts(self, num_particles: int, num_observations: int) -> tuple[int, int]:
        """Denoiser ``(forward evaluations, VJPs)`` per cycle."""

    def init(self, particles: PyTree) -> FilterState:
        """Equally weighted particles at cycle 0."""
        n = num_particles_of(particles)
        dtype = jax.tree_util.tree_leaves(particles)[0].dtype
        log_weights = jnp.full((n,), -jnp.log(jnp.asarray(n, dtype)), dtype)
        return FilterState(particles, log_weights, jnp.zeros((), jnp.int32))

    @abc.abstractmethod
    def step(
        self, state: FilterState, y: Observation, observation: ObservationModel, key: Key
    ) -> tuple[FilterState, CycleDiagnostics]:
        """Assimilate ``y`` (the observation at the end of this cycle)."""

    def _diagnostics(
        self, ess, alpha, evidence, num_nonfinite, num_particles, num_obs, inflation=1.0
    ):
        forward, backward = self.call_counts(num_particles, num_obs)
        dtype = jnp.asarray(ess).dtype
        return CycleDiagnostics(
            ess=jnp.asarray(ess, dtype),
            alpha=jnp.asarray(alpha, dtype),
            log_evidence_increment=jnp.asarray(evidence, dtype),
            forward_calls=jnp.asarray(forward, jnp.int32),
            backward_calls=jnp.asarray(backward, jnp.int32),
            num_nonfinite=jnp.asarray(num_nonfinite, jnp.int32),
            inflation=jnp.asarray(inflation, dtype),
        )


def _check_resampling(name: str, owner: str) -> None:
    if name not in RESAMPLERS:
        raise ValueError(f"{owner}.resampling is {name!r}; expected one of {sorted(RESAMPLERS)}")


class AuxiliaryParticleFilter(AbstractFilter):
    r"""The fully adapted auxiliary particle filter (FA-APF) with a guided-diffusion proposal.

    Attributes:
        proposal: an :class:`EmulatorProposal` with guidance (MMPS for the method).
        predictive_weight: Dirac (paper) or moment-matched (tuning-free) weights.
        tempering: α strategy; the paper uses :class:`ESSBandTempering`, moment-matched
            weights use ``FixedTempering(1.0)``.
        resampling: ``"systematic"`` (default), ``"stratified"``, ``"residual"`` or
            ``"multinomial"``.
        skip_first_selection: use α = 0 in cycle 0, as the authors do when all particles
            start as copies of one state (their weights differ only by noise).
        localisation: ``None`` (the paper's global selection) or a
            :class:`~filtrax.filters.localisation.BlockLocalisation`: weights, α and
            ancestors per block of sites, parents stitched from the blocks' ancestors. It
            needs Dirac weights (their log-likelihood is a sum over observations). The
            diagnostics' α and ESS are then means over blocks.
        inflation: λ ≥ 1 on the particles at ``k`` about their mean, and on their predicted
            observations, before the weights (:mod:`.inflation`; fixed or re-chosen every
            cycle from the innovation). It compensates an emulator whose spread
            under-represents its error. Anything but ``FixedInflation(1)`` needs Dirac
            weights.
    """

    proposal: EmulatorProposal
    predictive_weight: AbstractPredictiveWeight = DiracPredictiveWeight()
    tempering: AbstractTempering = ESSBandTempering()
    resampling: str = eqx.field(static=True, default="systematic")
    skip_first_selection: bool = eqx.field(static=True, default=False)
    localisation: BlockLocalisation | None = None
    inflation: AbstractInflation = FixedInflation()

    def __check_init__(self) -> None:
        _check_resampling(self.resampling, "AuxiliaryParticleFilter")
        dirac = isinstance(self.predictive_weight, DiracPredictiveWeight)
        if self.localisation is not None and not dirac:
            raise ValueError(
                "AuxiliaryParticleFilter.localisation needs DiracPredictiveWeight, got "
                f"{type(self.predictive_weight).__name__}: the moment-matched log-likelihood "
                "couples observations and does not split into blocks"
            )
        if not self.inflation.is_identity and not dirac:
            raise ValueError(
                "AuxiliaryParticleFilter.inflation needs DiracPredictiveWeight, got "
                f"{type(self.predictive_weight).__name__}: it widens the predicted observations"
            )
        if not self.proposal.is_guided:
            raise ValueError(
                "AuxiliaryParticleFilter.proposal must be guided (the FA-APF samples the "
                "optimal proposal); use BootstrapParticleFilter for an unguided proposal"
            )

    @property
    def emulator(self) -> AbstractEmulator:
        return self.proposal.emulator

    @property
    def requires_observations(self) -> bool:
        return True

    def call_counts(self, num_particles, num_observations):
        wf, wb = self.predictive_weight.call_counts(num_observations)
        pf, pb = self.proposal.call_counts()
        return num_particles * (wf + pf), num_particles * (wb + pb)

    def step(self, state, y, observation, key):
        particles = state.particles
        n = num_particles_of(particles)
        keys = particle_keys(key, n)
        emulator = self.emulator
        first = self.skip_first_selection & (state.cycle == 0)

        if not selects_from_predictions(self):

            def weight(k, s):
                k = jax.random.fold_in(k, WEIGHT_STREAM)
                return self.predictive_weight.log_likelihood(k, emulator, observation, s, y)

            log_likelihoods = self.particle_map.replicate(
                self.particle_map(weight, keys, particles)
            )
            log_likelihoods, bad = _sanitize(log_likelihoods)
            ancestors, alpha, ess, evidence = _select(
                log_likelihoods,
                state.log_weights,
                self.tempering,
                self.resampling,
                key,
                uniform_selection=first,
            )
            parents = self.particle_map.constrain(
                jax.tree_util.tree_map(lambda leaf: leaf[ancestors], particles)
            )
            factor = 1.0
        else:

            def predict(k, s):
                k = jax.random.fold_in(k, WEIGHT_STREAM)
                frame = self.predictive_weight.predicted_frame(k, emulator, s)
                return observation.predict(frame)

            predictions = self.particle_map.replicate(self.particle_map(predict, keys, particles))
            parents, alpha, ess, evidence, bad, factor = _select_from_predictions(
                self,
                particles,
                predictions,
                state.log_weights,
                y,
                observation,
                key,
                uniform_selection=first,
            )
        children = _propagate(self.proposal, keys, parents, y, observation, self.particle_map)
        nonfinite = jnp.sum(bad | _nonfinite_particles(children))
        uniform = _uniform_log_weights(n, state.log_weights.dtype)
        new_state = FilterState(children, uniform, state.cycle + 1)
        diagnostics = self._diagnostics(
            ess, alpha, evidence, nonfinite, n, observation.num_observations, factor
        )
        return new_state, diagnostics


class BootstrapParticleFilter(AbstractFilter):
    r"""Propagate with the unguided emulator, weight by ``p(y | x)``, resample.

    Attributes:
        proposal: an unguided :class:`EmulatorProposal`.
        tempering: α on ``log p(y | x)``; ``FixedTempering(1.0)`` (default) is the textbook
            filter.
        resampling: the resampling scheme's name.
        localisation: ``None`` (global selection) or a
            :class:`~filtrax.filters.localisation.BlockLocalisation` (the block particle
            filter of Rebeschini & van Handel 2015).
        inflation: λ ≥ 1 on the propagated particles about their mean, before the
            weights (:mod:`.inflation`; ``FixedInflation(1)``: none).
    """

    proposal: EmulatorProposal
    # A factory, not an instance: FixedTempering holds a JAX array, and creating one at import
    # would start the XLA backend before jax.distributed.initialize() can run.
    tempering: AbstractTempering = eqx.field(default_factory=lambda: FixedTempering(1.0))
    resampling: str = eqx.field(static=True, default="systematic")
    localisation: BlockLocalisation | None = None
    inflation: AbstractInflation = FixedInflation()

    def __check_init__(self) -> None:
        _check_resampling(self.resampling, "BootstrapParticleFilter")
        if self.proposal.is_guided:
            raise ValueError(
                "BootstrapParticleFilter.proposal must be unguided: its weight p(y|x) is only "
                "correct for the emulator's own transition"
            )

    @property
    def emulator(self) -> AbstractEmulator:
        return self.proposal.emulator

    @property
    def requires_observations(self) -> bool:
        return False

    def call_counts(self, num_particles, num_observations):
        pf, pb = self.proposal.call_counts()
        return num_particles * pf, num_particles * pb

    def step(self, state, y, observation, key):
        particles = state.particles
        n = num_particles_of(particles)
        keys = particle_keys(key, n)
        emulator = self.emulator

        children = _propagate(self.proposal, keys, particles, y, observation, self.particle_map)

        if not selects_from_predictions(self):

            def likelihood(s):
                return observation.log_likelihood(y, emulator.current_frame(s))

            log_likelihoods = self.particle_map.replicate(self.particle_map(likelihood, children))
            log_likelihoods, bad = _sanitize(log_likelihoods)
            ancestors, alpha, ess, evidence = _select(
                log_likelihoods, state.log_weights, self.tempering, self.resampling, key
            )
            selected = self.particle_map.constrain(
                jax.tree_util.tree_map(lambda leaf: leaf[ancestors], children)
            )
            factor = 1.0
        else:

            def predict(s):
                return observation.predict(emulator.current_frame(s))

            predictions = self.particle_map.replicate(self.particle_map(predict, children))
            selected, alpha, ess, evidence, bad, factor = _select_from_predictions(
                self, children, predictions, state.log_weights, y, observation, key
            )
        nonfinite = jnp.sum(bad | _nonfinite_particles(children))
        uniform = _uniform_log_weights(n, state.log_weights.dtype)
        new_state = FilterState(selected, uniform, state.cycle + 1)
        diagnostics = self._diagnostics(
            ess, alpha, evidence, nonfinite, n, observation.num_observations, factor
        )
        return new_state, diagnostics


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

    @property
    def requires_observations(self) -> bool:
        return False

    def call_counts(self, num_particles, num_observations):
        pf, pb = self.proposal.call_counts()
        return num_particles * pf, num_particles * pb

    def _unweighted_diagnostics(self, particles, dtype, num_observations, inflation=1.0):
        """No weights: ESS = N, α = 0, no evidence estimate."""
        n = num_particles_of(particles)
        return self._diagnostics(
            jnp.asarray(n, dtype),
            jnp.zeros((), dtype),
            jnp.asarray(jnp.nan, dtype),
            jnp.sum(_nonfinite_particles(particles)),
            n,
            num_observations,
            inflation,
        )


class FreeEnsemble(UnguidedEnsembleFilter):
    """No assimilation: every member follows the emulator (the reference forecast)."""

    def step(self, state, y, observation, key):
        particles = state.particles
        n = num_particles_of(particles)
        keys = particle_keys(key, n)

        children = _propagate(self.proposal, keys, particles, y, observation, self.particle_map)
        new_state = FilterState(children, state.log_weights, state.cycle + 1)
        diagnostics = self._unweighted_diagnostics(
            children, state.log_weights.dtype, observation.num_observations
        )
        return new_state, diagnostics
