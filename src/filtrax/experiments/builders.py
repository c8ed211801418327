"""The registries that turn config sections into library objects, one per family.

Each registry maps the name a config uses (``sampler.name``, ``guidance.name``,
``filter.tempering``, ``filter.weights``, ``filter.method``) to a builder; the config's
allowed values are the registry's names (:mod:`filtrax.experiments.config`), so a new part
is one registration here. Builders read their section's fields and return plain library
objects, which can also be built by hand.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from ..diffusion.noise_levels import karras_noise_levels
from ..diffusion.samplers import (
    AbstractSampler,
    AdamsBashforthSampler,
    DDIMSampler,
    DPMSolverPlusPlus2SSampler,
    EulerSampler,
    HeunSampler,
)
from ..filters.enkf import EnsembleKalmanFilter
from ..filters.hybrid import (
    KalmanRemainder,
    PredictiveKalmanUpdate,
    UnabsorbedKalmanRemainder,
)
from ..filters.inflation import AbstractInflation, FixedInflation, InnovationInflation
from ..filters.letkf import LocalEnsembleTransformKalmanFilter
from ..filters.likelihood_split import FullLikelihoodMove
from ..filters.localisation import BlockLocalisation
from ..filters.particle import AuxiliaryParticleFilter, BootstrapParticleFilter, FreeEnsemble
from ..filters.proposals import EmulatorProposal
from ..filters.rejuvenation import (
    ComposedRejuvenation,
    KernelRejuvenation,
    NoRejuvenation,
    TransformRejuvenation,
)
from ..filters.tempering import AbstractTempering, ESSBandTempering, FixedTempering
from ..filters.weights import (
    AbstractPredictiveWeight,
    DiracPredictiveWeight,
    MomentMatchedPredictiveWeight,
)
from ..guidance.guided import AbstractGuidance, DPSGuidance, MMPSGuidance, SDAGuidance
from ..registry import Registry

if TYPE_CHECKING:  # the config's choices are this module's registries: no runtime import
    from ..emulators._base import AbstractEmulator
    from ..filters.covariance_localisation import GaspariCohnLocalisation
    from ..parallel import AbstractParticleMap
    from .config import ExperimentConfig
from ..resampling import RESAMPLERS

#: ``sampler.name`` -> ``builder(sampler_section, noise_levels)``.
SAMPLERS: Registry = Registry("sampler.name")
#: ``guidance.name`` -> ``builder(guidance_section)``.
GUIDANCE: Registry = Registry("guidance.name")
#: ``filter.tempering`` -> ``builder(filter_section)``.
TEMPERING: Registry = Registry("filter.tempering")
#: ``filter.weights`` -> ``builder(filter_section)``.
WEIGHTS: Registry = Registry("filter.weights")
#: ``filter.method`` -> ``builder(parts: FilterParts)``.
FILTERS: Registry = Registry("filter.method")
#: ``filter.rejuvenation`` -> ``builder(filter_section)``.
REJUVENATION: Registry = Registry("filter.rejuvenation")
#: ``filter.hybrid`` -> ``builder(parts: FilterParts)``.
HYBRIDS: Registry = Registry("filter.hybrid")
#: ``filter.resampling``: the schemes of :mod:`filtrax.resampling`.
RESAMPLING_NAMES = tuple(RESAMPLERS)


SAMPLERS.register(
    "dpmpp2s",
    lambda s, levels: DPMSolverPlusPlus2SSampler(
        levels, churn=s.churn, churn_noise_scale=s.churn_noise
    ),
)
SAMPLERS.register("heun", lambda s, levels: HeunSampler(levels))
SAMPLERS.register("euler", lambda s, levels: EulerSampler(levels))
SAMPLERS.register("ddim", lambda s, levels: DDIMSampler(levels, s.eta))
SAMPLERS.register(
    "adams_bashforth",
    lambda s, levels: AdamsBashforthSampler(levels, s.order, s.corrections, s.langevin_step),
)

GUIDANCE.register("mmps", lambda g: MMPSGuidance(g.iterations, g.solver))
GUIDANCE.register("dps", lambda g: DPSGuidance(g.scale))
GUIDANCE.register("sda", lambda g: SDAGuidance(g.gamma))

TEMPERING.register("ess_band", lambda f: ESSBandTempering(*f.ess_band))
TEMPERING.register("fixed", lambda f: FixedTempering(f.alpha))

WEIGHTS.register("dirac", lambda f: DiracPredictiveWeight(f.weight_sigma_max, f.noise_draws))
WEIGHTS.register(
    "moment_matched", lambda f: MomentMatchedPredictiveWeight(f.weight_sigma_max, f.cg_iterations)
)

REJUVENATION.register("none", lambda f: NoRejuvenation())
REJUVENATION.register("kernel", lambda f: KernelRejuvenation(f.rejuvenation_bandwidth))
REJUVENATION.register("transform", lambda f: TransformRejuvenation(f.rejuvenation_regularisation))
REJUVENATION.register(
    "transform+kernel",
    lambda f: ComposedRejuvenation(
        (
            TransformRejuvenation(f.rejuvenation_regularisation),
            KernelRejuvenation(f.rejuvenation_bandwidth),
        )
    ),
)


HYBRIDS.register("none", lambda p: FullLikelihoodMove())
HYBRIDS.register("letkf", lambda p: KalmanRemainder(p.covariance_localisation))
HYBRIDS.register("predictive", lambda p: PredictiveKalmanUpdate(p.covariance_localisation))
HYBRIDS.register(
    "predictive_unabsorbed",
    lambda p: PredictiveKalmanUpdate(p.covariance_localisation, scale_by_unabsorbed=True),
)
HYBRIDS.register("unabsorbed", lambda p: UnabsorbedKalmanRemainder(p.covariance_localisation))


def sampler_from_section(section) -> AbstractSampler:
    """The ``[sampler]`` section's sampler on its Karras noise levels."""
    levels = karras_noise_levels(section.sigma_max, section.sigma_min, section.rho, section.levels)
    return SAMPLERS[section.name](section, levels)


def guidance_from_section(section) -> AbstractGuidance:
    return GUIDANCE[section.name](section)


def tempering_from_section(section) -> AbstractTempering:
    return TEMPERING[section.tempering](section)


def weight_from_section(section) -> AbstractPredictiveWeight:
    return WEIGHTS[section.weights](section)


def inflation_from_section(section, *, covariance: bool = False) -> AbstractInflation:
    r"""``filter.inflation`` fixed, or re-chosen every cycle with it as the floor.

    With ``covariance`` (the LETKF) ``filter.inflation`` and ``inflation_max`` are covariance
    factors ρ, as in Hunt et al. (2007) and in every LETKF run written before the LETKF took
    an :class:`AbstractInflation`: the strategy's anomaly factor is :math:`\lambda = \sqrt\rho`.
    """
    factor = math.sqrt if covariance else float
    if section.adaptive_inflation:
        return InnovationInflation(factor(section.inflation), factor(section.inflation_max))
    return FixedInflation(factor(section.inflation))


@dataclasses.dataclass(frozen=True)
class FilterParts:
    """What every filter builder may use: the config, the emulator, the sampler, the
    particles' layout and the covariance localisation (``None``: global)."""

    config: ExperimentConfig
    emulator: AbstractEmulator
    sampler: AbstractSampler
    layout: AbstractParticleMap
    covariance_localisation: GaspariCohnLocalisation | None

    @property
    def section(self):
        """The ``[filter]`` section."""
        return self.config.filter

    def unguided(self) -> EmulatorProposal:
        return EmulatorProposal(self.emulator, self.sampler)

    def block_localisation(self) -> BlockLocalisation | None:
        block = self.section.localisation_block
        return BlockLocalisation(block) if block else None


#: The ``[filter]`` keys every method reads.
COMMON_FILTER_KEYS = ("method", "particles")
_INFLATION = ("inflation", "adaptive_inflation", "inflation_max")
_SELECTION = ("tempering", "alpha", "ess_band", "resampling", "localisation_block", *_INFLATION)
_REJUVENATION = ("rejuvenation", "rejuvenation_bandwidth", "rejuvenation_regularisation")
#: ``filter.method`` -> the ``[filter]`` keys its builder below reads besides
#: :data:`COMMON_FILTER_KEYS` (the others are not in effect, and the resolved config drops them).
FILTER_KEYS: dict[str, tuple[str, ...]] = {
    "free": (),
    "enkf": (*_INFLATION, "localisation_half_width", "observation_error_inflation"),
    "letkf": (*_INFLATION, "relaxation", "localisation_half_width", "observation_error_inflation"),
    "bootstrap": (*_SELECTION, *_REJUVENATION, "observation_error_inflation"),
    "fa_apf": (
        "weights",
        "weight_sigma_max",
        "noise_draws",
        "cg_iterations",
        "skip_first_selection",
        *_SELECTION,
        *_REJUVENATION,
        "hybrid",
        "localisation_half_width",
        "observation_error_inflation",
    ),
}


@FILTERS.register("free")
def _free(p: FilterParts):
    return FreeEnsemble(p.unguided(), particle_map=p.layout)


@FILTERS.register("enkf")
def _enkf(p: FilterParts):
    return EnsembleKalmanFilter(
        p.unguided(),
        inflation_from_section(p.section),
        p.covariance_localisation,
        particle_map=p.layout,
    )


@FILTERS.register("letkf")
def _letkf(p: FilterParts):
    f = p.section
    return LocalEnsembleTransformKalmanFilter(
        p.unguided(),
        inflation_from_section(f, covariance=True),
        f.relaxation,
        p.covariance_localisation,
        particle_map=p.layout,
    )


@FILTERS.register("bootstrap")
def _bootstrap(p: FilterParts):
    f = p.section
    return BootstrapParticleFilter(
        p.unguided(),
        tempering_from_section(f),
        f.resampling,
        p.block_localisation(),
        inflation_from_section(f),
        rejuvenation=REJUVENATION[f.rejuvenation](f),
        particle_map=p.layout,
    )


@FILTERS.register("fa_apf")
def _fa_apf(p: FilterParts):
    f = p.section
    proposal = EmulatorProposal(p.emulator, p.sampler, guidance_from_section(p.config.guidance))
    return AuxiliaryParticleFilter(
        proposal,
        weight_from_section(f),
        tempering_from_section(f),
        f.resampling,
        f.skip_first_selection,
        p.block_localisation(),
        inflation_from_section(f),
        rejuvenation=REJUVENATION[f.rejuvenation](f),
        likelihood_split=HYBRIDS[f.hybrid](p),
        particle_map=p.layout,
    )
