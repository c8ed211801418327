r"""How a fully adapted particle filter shares the likelihood between its move and after it.

The FA-APF's tempering (:mod:`.tempering`) weighs the particles with
:math:`p(y^{k+1}\mid s^k)^\alpha`, α chosen every cycle to keep the effective sample size
in a band. Where α < 1, the part :math:`p(y\mid x)^{1-\alpha}` of the likelihood is not in
the selection. A likelihood split says what happens to it:

* :class:`FullLikelihoodMove` (the paper's filter; Savary, Rozet & Louppe 2025): the guided
  move still conditions on the whole likelihood, and nothing follows it;
* the ensemble Kalman particle filter (:class:`~filtrax.filters.hybrid.KalmanRemainder`):
  the move conditions on the same tempered likelihood as the selection, and an ensemble
  Kalman analysis of the moved particles assimilates the rest;
* a Kalman update of the predictive weights' remaining share
  (:class:`~filtrax.filters.hybrid.PredictiveKalmanUpdate`), or of the share of the
  innovation the guided move did not absorb
  (:class:`~filtrax.filters.hybrid.UnabsorbedKalmanRemainder`): the move conditions on the
  whole likelihood, as in the paper's filter.

A split is a strategy of :class:`~filtrax.filters.particle.ParticleFilter` on the same
interface as its tempering, inflation and rejuvenation.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, PyTree

from .._typing import Observation, Scalar
from ..emulators._base import AbstractEmulator
from ..observations.model import ObservationModel


class AbstractLikelihoodSplit(eqx.Module):
    """What the move and the step after it do with the likelihood the selection tempered."""

    @property
    @abc.abstractmethod
    def is_identity(self) -> bool:
        """Whether it is the paper's filter (the move guided by the full likelihood)."""

    @property
    def needs_predictions(self) -> bool:
        """Whether :meth:`complete` needs the parents' predicted observations ``ŷ``."""
        return False

    @abc.abstractmethod
    def guiding_observation(
        self, observation_model: ObservationModel, alpha: Scalar
    ) -> ObservationModel:
        """The observation model the guided move conditions on, given the selection's α."""

    @abc.abstractmethod
    def complete(
        self, emulator: AbstractEmulator, parents: PyTree, children: PyTree, y: Observation,
        observation_model: ObservationModel, alpha: Scalar, predicted: Array | None = None,
    ) -> tuple[PyTree, Scalar | float]:  # fmt: skip
        """The moved ``children`` (particle ``i`` moved from ``parents[i]``) once the part of
        the likelihood neither the selection nor the move used is assimilated, and the share
        ``g`` of the innovation the move absorbed (:func:`filtrax.filters.hybrid.move_gain`;
        NaN where it is not measured). ``predicted`` holds the parents' predicted
        observations ``ŷ_i`` (particles first) where :attr:`needs_predictions`, else
        ``None``."""


class FullLikelihoodMove(AbstractLikelihoodSplit):
    """The paper's FA-APF: the move is guided by the full likelihood, and nothing follows."""

    @property
    def is_identity(self) -> bool:
        return True

    def guiding_observation(self, observation_model, alpha):
        return observation_model

    def complete(self, emulator, parents, children, y, observation_model, alpha, predicted=None):
        return children, jnp.nan  # nothing measures the move's gain here
