r"""The ensemble Kalman particle filter: the particle filter for part of the likelihood, the
LETKF for the rest.

Frei & Künsch (2013) split the likelihood :math:`\ell = \ell^{\gamma}\,\ell^{1-\gamma}` and
assimilate one factor with an ensemble Kalman filter, the other with a particle filter;
γ = 1 is the EnKF and γ = 0 the particle filter. Chustagulprom, Reich & Reinhardt (2016) do
the same with the ensemble transform particle filter and the LETKF, localised. Here the
particle filter's share is the one its tempering already chooses: the FA-APF selects with
:math:`p(y^{k+1}\mid s^k)^\alpha`, α keeping the effective sample size in its band. Then

1. the guided move conditions on the same tempered likelihood, :math:`N(y; h(x), R/\alpha)`:
   selection and move are together the FA-APF for the observation error :math:`R/\alpha`;
2. the LETKF (:func:`~filtrax.filters.letkf.local_analysis`) assimilates the remaining
   factor, :math:`N(y; h(x), R/(1-\alpha))`, with the moved particles as its forecast.

Since :math:`N(y; h, R/\alpha)\,N(y; h, R/(1-\alpha)) \propto N(y; h, R)`, the two steps
together assimilate :math:`y` once. For a linear-Gaussian model each step is exact as
:math:`N \to \infty`, so the filter stays exact at every α (tested against the Kalman filter).
Where the weights are informative enough (α = 1) it *is* the FA-APF; where the particle filter
would collapse (α ≪ 1), the Kalman update, which never resamples, does most of the work,
with the flow-dependent covariance of the particles.

Where the move can carry the likelihood (the paper's Held–Suarez setting), guiding it with
only R/α throws that away. :class:`PredictiveKalmanUpdate` and
:class:`UnabsorbedKalmanRemainder` keep the paper's move, guided by the whole likelihood, and
measure how much of the innovation it absorbed (:func:`move_gain`); the Kalman update after
it assimilates what the move could not.

References:
    Frei & Künsch (2013), "Bridging the ensemble Kalman and particle filters", Biometrika
    100, 781–800.
    Chustagulprom, Reich & Reinhardt (2016), "A hybrid ensemble transform particle filter
    for nonlinear and spatially extended dynamical systems", SIAM/ASA J. Uncertainty
    Quantification 4, 592–608.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._typing import Observation, Scalar
from ..observations.model import ObservationModel, observation_mask
from .covariance_localisation import GaspariCohnLocalisation
from .letkf import local_analysis
from .likelihood_split import AbstractLikelihoodSplit

#: The smallest α the move is guided with (R/α stays finite; the ESS band's own floor).
SMALLEST_GUIDING_ALPHA = 1e-12
#: The largest absorbed share :func:`move_gain` reports (R/(1 - g) stays finite).
LARGEST_MOVE_GAIN = 0.999


class KalmanRemainder(AbstractLikelihoodSplit):
    """The move guided by :math:`R/\\alpha`, then the LETKF with :math:`R/(1-\\alpha)`.

    Attributes:
        localisation: Gaspari–Cohn R-localisation of the Kalman update, or ``None`` for the
            global ETKF.
    """

    localisation: GaspariCohnLocalisation | None = None

    @property
    def is_identity(self) -> bool:
        return False

    def guiding_observation(self, observation_model, alpha):
        variance = observation_model.noise_variance
        floor = jnp.asarray(SMALLEST_GUIDING_ALPHA, variance.dtype)
        tempered = variance / jnp.maximum(jnp.asarray(alpha, variance.dtype), floor)
        return eqx.tree_at(lambda o: o.noise_variance, observation_model, tempered)

    def complete(self, emulator, parents, children, y, observation_model, alpha, predicted=None):
        def update(moved):
            frames = jax.vmap(emulator.current_frame)(moved)
            analysis = local_analysis(
                frames, y, observation_model, self.localisation, likelihood_power=1.0 - alpha
            )
            return jax.vmap(emulator.advance)(parents, analysis)

        # α = 1: the selection and the move used the whole likelihood (the FA-APF itself).
        completed = jax.lax.cond(alpha < 1.0, update, lambda moved: moved, children)
        return completed, jnp.nan  # without predictions the move's gain is not measured


def move_gain(
    predicted: Float[Array, "particle obs"], moved: Float[Array, "particle obs"],
    y: Observation, observation_model: ObservationModel,
) -> Scalar:  # fmt: skip
    r"""The share :math:`g` of the innovation the guided move absorbed.

    The pooled regression, over particles and observed entries, of the move's shift on the
    innovation, both in units of the observation error :math:`\sigma_j`:

    .. math::
        g = \frac{\sum_{ij} (h_j(x_i') - \hat y_{ij})(y_j - \hat y_{ij}) / r_j}
                 {\sum_{ij} (y_j - \hat y_{ij})^2 / r_j},

    :math:`\hat y_i` the parent's predicted observations (before the move) and
    :math:`x_i'` the moved particle. For the exact optimal proposal of a linear-Gaussian
    transition with noise :math:`Q`, the shift's mean is :math:`HQH^\top(HQH^\top +
    R)^{-1}(y - \hat y_i)`: with one observation :math:`g = q/(q + r)`, and
    :math:`R/(1 - g) = HQH^\top + R` is the predictive weight's own variance. A move that
    cannot reach the observations (a near-deterministic transition) gives :math:`g \approx
    0`; clipped to [0, 1).
    """
    mask = observation_mask(y)[None, :]
    std = jnp.sqrt(observation_model.noise_variance.astype(predicted.dtype))[None, :]
    innovation = jnp.where(mask, (y[None, :] - predicted) / std, 0.0)
    shift = jnp.where(mask, (moved - predicted) / std, 0.0)
    tiny = jnp.finfo(predicted.dtype).tiny
    gain = jnp.sum(shift * innovation) / jnp.maximum(jnp.sum(innovation**2), tiny)
    return jnp.clip(gain, 0.0, LARGEST_MOVE_GAIN)


class AbstractKalmanAfterFullMove(AbstractLikelihoodSplit):
    r"""The paper's move, guided by the whole likelihood, then a Kalman update of the share
    :meth:`share` of what neither the selection nor the move took (:func:`move_gain`).

    Subclasses give the share and the analysis; the share 0 (α = 1: the selection took the
    whole weight) skips the update, so the filter is then the FA-APF bit for bit.
    """

    localisation: eqx.AbstractVar[GaspariCohnLocalisation | None]

    @property
    def is_identity(self) -> bool:
        return False

    @property
    def needs_predictions(self) -> bool:
        return True

    def guiding_observation(self, observation_model, alpha):
        return observation_model

    @abc.abstractmethod
    def share(self, alpha: Scalar, gain: Scalar) -> Scalar:
        """The likelihood power γ the Kalman update assimilates."""

    @abc.abstractmethod
    def analysis(
        self, frames: Array, y: Observation, observation_model: ObservationModel, share: Scalar,
        gain: Scalar, predicted: Array,
    ) -> Array:  # fmt: skip
        """The analysis of the moved ``frames`` (particles first)."""

    def complete(self, emulator, parents, children, y, observation_model, alpha, predicted=None):
        if predicted is None:
            raise ValueError(f"{type(self).__name__} needs the weights' predicted observations")
        frames = jax.vmap(emulator.current_frame)(children)
        gain = move_gain(
            predicted, jax.vmap(observation_model.predict)(frames), y, observation_model
        )
        share = self.share(alpha, gain)

        def update(frames):
            analysis = self.analysis(frames, y, observation_model, share, gain, predicted)
            return jax.vmap(emulator.advance)(parents, analysis)

        return jax.lax.cond(share > 0.0, update, lambda f: children, frames), gain


class PredictiveKalmanUpdate(AbstractKalmanAfterFullMove):
    r"""The move guided by the whole likelihood, then the predictive weights' remaining
    share assimilated by an ensemble Kalman transform instead of by resampling.

    The FA-APF's weight is Gaussian, :math:`p(y\mid s_i) \approx N(y; \hat y_i, S)`, with
    :math:`S = R/(1 - g)` (:func:`move_gain`). The selection takes :math:`\alpha` of it by
    resampling. The rest is the LETKF's analysis (:func:`~filtrax.filters.letkf.local_analysis`)
    of the ensemble :math:`\hat y_i` against :math:`y` with error :math:`S/\gamma`, whose
    transforms are applied to the moved frames: the moved particles are regressed on the
    parents' predictions, never resampled.

    * ``scale_by_unabsorbed = False``: :math:`\gamma = 1 - \alpha`. For a linear-Gaussian
      model with the exact move this is the Kalman filter as :math:`N \to \infty` (tested):
      the law of total variance splits the forecast covariance into the transition's
      :math:`Q`, which the move assimilates, and the spread of the parents' predictions, which
      the transform does. Exact at α = 0 only: the selection's Dirac weight uses :math:`R`,
      not :math:`S`.
    * ``scale_by_unabsorbed = True``: :math:`\gamma = (1 - \alpha)(1 - g)`, the share of
      the innovation neither the selection nor the move took. Not exact (measured on the
      oracle), but it leaves a move that absorbs nearly everything (g near 1, as on
      Held–Suarez) to itself, where the ensemble's own cross-covariances, from a few members,
      mislead.

    Attributes:
        localisation: Gaspari–Cohn R-localisation of the transform, or ``None`` (global).
        scale_by_unabsorbed: whether the share is scaled by :math:`1 - g`.
    """

    localisation: GaspariCohnLocalisation | None = None
    scale_by_unabsorbed: bool = eqx.field(static=True, default=False)

    def share(self, alpha, gain):
        return (1.0 - alpha) * (1.0 - gain) if self.scale_by_unabsorbed else 1.0 - alpha

    def analysis(self, frames, y, observation_model, share, gain, predicted):
        variance = observation_model.noise_variance / (1.0 - gain).astype(frames.dtype)
        predictive = eqx.tree_at(lambda o: o.noise_variance, observation_model, variance)
        return local_analysis(
            frames, y, predictive, self.localisation, likelihood_power=share, predicted=predicted
        )


class UnabsorbedKalmanRemainder(AbstractKalmanAfterFullMove):
    r"""The move guided by the whole likelihood, then the LETKF of the moved particles with
    the share :math:`\gamma = (1 - \alpha)(1 - g)` of the likelihood neither the selection
    nor the move took (:func:`move_gain`): error :math:`R/\gamma`.

    Where the move absorbs nothing (g ≈ 0) and the selection is flat (α = 0) it is the LETKF
    with the moved particles as forecast; where it absorbs nearly everything, the Kalman
    update is weak. Not exact on the linear-Gaussian oracle (measured): the moved particles'
    covariance already holds the move's analysis.

    Attributes:
        localisation: Gaspari–Cohn R-localisation, or ``None`` for the global ETKF.
    """

    localisation: GaspariCohnLocalisation | None = None

    def share(self, alpha, gain):
        return (1.0 - alpha) * (1.0 - gain)

    def analysis(self, frames, y, observation_model, share, gain, predicted):
        return local_analysis(
            frames, y, observation_model, self.localisation, likelihood_power=share
        )
