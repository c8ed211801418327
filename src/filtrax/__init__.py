"""filtrax: training-free data assimilation with diffusion-model emulators, in JAX.

The fully adapted auxiliary particle filter of Savary, Rozet & Louppe (2025): each
particle moves by the optimal proposal, sampled by reverse diffusion with an MMPS
posterior score, and is selected by approximate predictive weights with an ESS-targeted
tempering exponent.
"""

from .diffusion.denoisers import AbstractDenoiser as AbstractDenoiser
from .diffusion.denoisers import EDMPreconditionedDenoiser as EDMPreconditionedDenoiser
from .diffusion.denoisers import GaussianDenoiser as GaussianDenoiser
from .diffusion.noise_levels import karras_noise_levels as karras_noise_levels
from .diffusion.parameterisations import AbstractInterpolant as AbstractInterpolant
from .diffusion.parameterisations import AbstractVPSchedule as AbstractVPSchedule
from .diffusion.parameterisations import CosineVPSchedule as CosineVPSchedule
from .diffusion.parameterisations import CustomInterpolant as CustomInterpolant
from .diffusion.parameterisations import DiscreteVPSchedule as DiscreteVPSchedule
from .diffusion.parameterisations import FlowMatchingDenoiser as FlowMatchingDenoiser
from .diffusion.parameterisations import LinearBetaVPSchedule as LinearBetaVPSchedule
from .diffusion.parameterisations import RectifiedFlowInterpolant as RectifiedFlowInterpolant
from .diffusion.parameterisations import VEDenoiser as VEDenoiser
from .diffusion.parameterisations import VPDenoiser as VPDenoiser
from .diffusion.samplers import AbstractSampler as AbstractSampler
from .diffusion.samplers import AdamsBashforthSampler as AdamsBashforthSampler
from .diffusion.samplers import DDIMSampler as DDIMSampler
from .diffusion.samplers import DPMSolverPlusPlus2SSampler as DPMSolverPlusPlus2SSampler
from .diffusion.samplers import EulerSampler as EulerSampler
from .diffusion.samplers import HeunSampler as HeunSampler
from .driver import AssimilationResult as AssimilationResult
from .driver import SaveAt as SaveAt
from .driver import assimilate as assimilate
from .dynamics.linear_gaussian import LinearGaussianEmulator as LinearGaussianEmulator
from .dynamics.linear_gaussian import LinearGaussianModel as LinearGaussianModel
from .dynamics.linear_gaussian import random_linear_gaussian_model as random_linear_gaussian_model
from .dynamics.lorenz96 import TwoScaleLorenz96 as TwoScaleLorenz96
from .emulators._base import AbstractEmulator as AbstractEmulator
from .emulators._base import AbstractTwoFrameEmulator as AbstractTwoFrameEmulator
from .emulators.lorenz96 import Lorenz96Emulator as Lorenz96Emulator
from .filters.covariance_localisation import (
    GaspariCohnLocalisation as GaspariCohnLocalisation,
)
from .filters.enkf import EnsembleKalmanFilter as EnsembleKalmanFilter
from .filters.hybrid import KalmanRemainder as KalmanRemainder
from .filters.hybrid import PredictiveKalmanUpdate as PredictiveKalmanUpdate
from .filters.hybrid import UnabsorbedKalmanRemainder as UnabsorbedKalmanRemainder
from .filters.hybrid import move_gain as move_gain
from .filters.inflation import AbstractInflation as AbstractInflation
from .filters.inflation import FixedInflation as FixedInflation
from .filters.inflation import InnovationInflation as InnovationInflation
from .filters.letkf import (
    LocalEnsembleTransformKalmanFilter as LocalEnsembleTransformKalmanFilter,
)
from .filters.likelihood_split import AbstractLikelihoodSplit as AbstractLikelihoodSplit
from .filters.likelihood_split import FullLikelihoodMove as FullLikelihoodMove
from .filters.localisation import BlockLocalisation as BlockLocalisation
from .filters.particle import AbstractFilter as AbstractFilter
from .filters.particle import AbstractPotential as AbstractPotential
from .filters.particle import AuxiliaryParticleFilter as AuxiliaryParticleFilter
from .filters.particle import BootstrapParticleFilter as BootstrapParticleFilter
from .filters.particle import CycleDiagnostics as CycleDiagnostics
from .filters.particle import FilterState as FilterState
from .filters.particle import FreeEnsemble as FreeEnsemble
from .filters.particle import ObservationLikelihood as ObservationLikelihood
from .filters.particle import ParticleFilter as ParticleFilter
from .filters.particle import PredictivePotential as PredictivePotential
from .filters.proposals import EmulatorProposal as EmulatorProposal
from .filters.rejuvenation import AbstractRejuvenation as AbstractRejuvenation
from .filters.rejuvenation import ComposedRejuvenation as ComposedRejuvenation
from .filters.rejuvenation import KernelRejuvenation as KernelRejuvenation
from .filters.rejuvenation import NoRejuvenation as NoRejuvenation
from .filters.rejuvenation import TransformRejuvenation as TransformRejuvenation
from .filters.tempering import AbstractTempering as AbstractTempering
from .filters.tempering import ESSBandTempering as ESSBandTempering
from .filters.tempering import FixedTempering as FixedTempering
from .filters.weights import AbstractPredictiveWeight as AbstractPredictiveWeight
from .filters.weights import DiracPredictiveWeight as DiracPredictiveWeight
from .filters.weights import MomentMatchedPredictiveWeight as MomentMatchedPredictiveWeight
from .guidance.guided import AbstractGuidance as AbstractGuidance
from .guidance.guided import DPSGuidance as DPSGuidance
from .guidance.guided import GuidedDenoiser as GuidedDenoiser
from .guidance.guided import MMPSGuidance as MMPSGuidance
from .guidance.guided import SDAGuidance as SDAGuidance
from .observations.model import ObservationModel as ObservationModel
from .observations.operators import AbstractObservationOperator as AbstractObservationOperator
from .observations.operators import BlockMean as BlockMean
from .observations.operators import LinearObservation as LinearObservation
from .observations.operators import NonlinearObservation as NonlinearObservation
from .observations.operators import PointSelection as PointSelection
from .resampling import effective_sample_size as effective_sample_size
from .resampling import get_resampler as get_resampler
from .resampling import multinomial as multinomial
from .resampling import residual as residual
from .resampling import stratified as stratified
from .resampling import systematic as systematic

__version__ = "0.1.0"
