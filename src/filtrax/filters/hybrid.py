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

References:
    Frei & Künsch (2013), "Bridging the ensemble Kalman and particle filters", Biometrika
    100, 781–800.
    Chustagulprom, Reich & Reinhardt (2016), "A hybrid ensemble transform particle filter
    for nonlinear and spatially extended dynamical systems", SIAM/ASA J. Uncertainty
    Quantification 4, 592–608.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .covariance_localisation import GaspariCohnLocalisation
from .letkf import local_analysis
from .likelihood_split import AbstractLikelihoodSplit

#: The smallest α the move is guided with (R/α stays finite; the ESS band's own floor).
SMALLEST_GUIDING_ALPHA = 1e-12


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

    def guiding_observation(self, observation, alpha):
        variance = observation.noise_variance
        floor = jnp.asarray(SMALLEST_GUIDING_ALPHA, variance.dtype)
        tempered = variance / jnp.maximum(jnp.asarray(alpha, variance.dtype), floor)
        return eqx.tree_at(lambda o: o.noise_variance, observation, tempered)

    def complete(self, emulator, parents, children, y, observation, alpha):
        def update(moved):
            frames = jax.vmap(emulator.current_frame)(moved)
            analysis = local_analysis(
                frames, y, observation, self.localisation, likelihood_power=1.0 - alpha
            )
            return jax.vmap(emulator.advance)(parents, analysis)

        # α = 1: the selection and the move used the whole likelihood (the FA-APF itself).
        return jax.lax.cond(alpha < 1.0, update, lambda moved: moved, children)
